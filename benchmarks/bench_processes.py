"""Two processes of one CPU device against one process of two devices: what
``jax.distributed`` costs a chapter-6 row.

    python -m benchmarks.bench_processes [--epochs 3] [--train-size 2000] [--nets dbl_conv dropout]

For each net (the two-conv net of rows 6.4-6.6 and the dropout net of 6.11),
K = 2 nets (one per device) train ``--epochs`` epochs of ``--train-size``
images with network3's trainer, in a fresh process for every case, side by
side in one run of this script:

  one-process   1 process, 2 CPU devices (``--devices 2``)
  two-process   2 processes of 1 CPU device each, joined by jax.distributed
                (gloo collectives over the loopback address), each pinned to
                its own core (as each would have its host's cores to itself;
                unpinned, the two processes' thread pools contend for both
                cores: measured 0.73-0.82x)

Each process prints the wall time of every epoch; the first epoch (compiling)
is left out, and the steady-state throughput is nets trained per second over
the others. Printed: seconds per epoch for each case, the throughput ratio
two-process / one-process (target >= 0.9: the processes add start-up, not
per-step cost), and each case's start-up: from the process's start to the end
of ``distributed.initialize`` (the rendezvous and JAX's coordination service),
and to the end of the first (compiling) epoch.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, os, sys, time
    t0 = time.time()
    n, i, port, ndev, net, epochs, size = sys.argv[1:8]
    if int(n) > 1 and len(os.sched_getaffinity(0)) >= int(n):  # each process on its own core, as on its own host
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[int(i)]})
    from nndl_jax import devices, distributed
    devices.use_cpu_devices(int(ndev))
    if int(n) > 1:
        distributed.initialize(f"127.0.0.1:{port}", int(n), int(i), timeout=60)
    joined = time.time() - t0
    import jax, numpy as np
    from experiments import chap6
    from nndl_jax import network3
    rng = np.random.default_rng(0)
    x = rng.random((int(size), 784), dtype=np.float32)
    y = rng.integers(0, 10, int(size)).astype(np.int32)
    arch, n_hidden = {"dbl_conv": ("dbl_conv", 100), "dropout": ("dropout", 1000)}[net]
    net_layers = chap6.architecture(arch, "relu", n_hidden)
    ends = []
    network3.train_many(net_layers, 10, (x, y), int(epochs), 0.03, (x[:100], y[:100]), (x[:100], y[:100]), 0.1,
                        seeds=[0, 1], on_epoch=lambda e, r: ends.append(time.time() - t0))
    print(json.dumps({"joined": joined, "epoch_ends": ends, "devices": len(jax.devices())}), flush=True)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(n_processes, net, epochs, size, timeout=1800):
    """Start the case's processes together; process 0's timings."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", NNDL_JAX_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    ndev = 2 // n_processes
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n_processes), str(i), str(port), str(ndev), net,
                               str(epochs), str(size)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n_processes)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"a worker failed:\n{err[-2000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="epochs per case (the first compiles; default 3)")
    p.add_argument("--train-size", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--nets", nargs="+", default=["dbl_conv", "dropout"], choices=["dbl_conv", "dropout"])
    args = p.parse_args(argv)
    print(f"K = 2 nets, {args.train_size} images, {args.epochs} epochs (the first, compiling, not timed); "
          f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'net':<10} {'case':<12} {'s/epoch':>8} {'nets/s':>8} {'joined s':>9} {'1st epoch s':>12}")
    for net in args.nets:
        rates = {}
        for name, n in (("one-process", 1), ("two-process", 2)):
            t = run_case(n, net, args.epochs, args.train_size)
            ends = t["epoch_ends"]
            per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
            rates[name] = 2 / per_epoch
            print(f"{net:<10} {name:<12} {per_epoch:>8.2f} {rates[name]:>8.3f} {t['joined']:>9.2f} {ends[0]:>12.2f}",
                  flush=True)
        print(f"{net:<10} two-process / one-process throughput: {rates['two-process'] / rates['one-process']:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
