"""Milliseconds per mini-batch step (mini-batch 10) of the book's chapter-6 nets
on the CPU, this project beside PyTorch, measured side by side in one run:

    python -m benchmarks.bench_conv [--steps 200] [--rounds 5] [--variants]

Nets (ReLU, log-likelihood cost, plain SGD):
  conv     conv 20 → conv 40 → FC 100 → softmax            (rows 6.6, 6.7)
  dropout  conv 20 → conv 40 → FC 1000 → FC 1000 → softmax, dropout p = 0.5
           on the FC and softmax inputs                    (row 6.11)

Cases, each one epoch of ``--steps`` mini-batches (compile excluded):
  jax K=1              ``train.Trainer``'s scanned epoch, one net (the default path:
                       ``layers.conv_pool`` layout "auto", i.e. on the CPU NHWC with the
                       hand-written VJPs of ``conv2d_nhwc`` and ``max_pool_first``,
                       compiled with ``devices.cpu_compiler_options()``)
  torch 2t / 1t        PyTorch, idiomatic: ``nn.Sequential`` + ``optim.SGD``, a Python
                       loop over shuffled mini-batches, 2 threads / 1 thread
                       (when ``torch`` is importable: ``pip install nndl-jax[bench]``)
  jax K=2 map          two nets in one program on one device, one after another
                       (``Trainer(over_k="map")``)
  jax K=2 devices      two nets on two CPU devices: ``Trainer(over_k="devices")``, what
                       chapter 6 runs (``devices.over_devices``: ``shard_map``, each
                       device running the one-net program)
  jax K=2 vmap         two nets vmapped on one device: what an accelerator runs
                       (``devices.k_axis_mode``), on any layout (issue 31)
  jax K=2 vmap-sharded two nets vmapped, the K axis sharded over the two devices
                       (``devices.Layout.place``; the vmapped convolution stays grouped;
                       the vmap path before issue 31, whose numbers depend on the layout)
  jax K=2 processes    two worker processes, each pinned to its own core, each
                       training one net (K=1) at the same time
  torch K=2 2t         two PyTorch nets stepped in turn in one loop, 2 threads
With ``--variants``, K=1 also with the pool's gradient by ``jax.grad``
(``select_and_scatter``: the path before ``max_pool_first``), with the
convolution's gradient by ``jax.grad`` too, with the fully connected product's
gradient by ``jax.grad`` (the path before ``dense_product``), in the book's NCHW layout, and
compiled with XLA's default options (its convolutions by YNNPACK; the trainer
passes ``devices.cpu_compiler_options()``, which leaves them to XLA's own kernels).

Times are per step of all K nets. Each case is timed once per round, the cases
interleaved, and the median over rounds is printed: on a shared machine load
comes and goes, and interleaving spreads it over all cases alike. Beside the
wall time, "cpu" is the CPU time the process (all its threads) used per step:
with both cores busy, throughput follows it more than it follows wall time.
The process asks for ``--devices`` CPU devices (default 2) before JAX starts;
K=1 runs on the first. XLA flags come from the environment.
"""
import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import costs, devices, layers, train
from nndl_jax.activations import relu

MB = 10
ETA = 0.03
NETS = ("conv", "dropout")


def jax_net(name, layout="auto"):
    """The benchmark's nets as ``(init, apply)`` pairs (network3's layers)."""
    fc, p = ((100,), 0.0) if name == "conv" else ((1000, 1000), 0.5)
    return layers.serial(
        layers.conv_pool((20, 1, 5, 5), (MB, 1, 28, 28), (2, 2), relu, layout=layout),
        layers.conv_pool((40, 20, 5, 5), (MB, 20, 12, 12), (2, 2), relu, layout=layout),
        *[layers.fully_connected(n, relu, p_dropout=p) for n in fc],
        layers.softmax(10, p_dropout=p))


def _plain_product(x, w):
    return x @ w


@contextlib.contextmanager
def gradients_by_jax_grad(pool=True, conv=False, dense=False):
    """While tracing: the plain pool / convolution / fully connected product,
    differentiated by jax.grad (the layers look them up when they are traced;
    only for comparison)."""
    saved = layers.max_pool_first, layers.conv2d_nhwc, layers.dense_product
    if pool:
        layers.max_pool_first = layers.max_pool
    if conv:
        layers.conv2d_nhwc = layers._conv_nhwc
    if dense:
        layers.dense_product = _plain_product
    try:
        yield
    finally:
        layers.max_pool_first, layers.conv2d_nhwc, layers.dense_product = saved


def data(steps, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((steps * MB, 784), dtype=np.float32),
            rng.integers(0, 10, steps * MB).astype(np.int32))


def _block(tree):
    return jax.block_until_ready(tree)


def jax_case(name, k, steps, mode="vmap", layout="auto", sharded=False, compiler_options="auto"):
    """A function running one scanned epoch of ``steps`` mini-batches for K nets
    (compiled on the first call) through ``train.Trainer(over_k=mode)``.
    ``sharded``: the K axis placed across the devices (``devices.Layout.place``,
    as ``train.fit`` does); otherwise everything sits on the first device.
    ``compiler_options``: the trainer's (None: XLA's defaults)."""
    init, apply = jax_net(name, layout)
    x, y = (jnp.asarray(a) for a in data(steps))
    trainer = train.Trainer(apply, costs.log_likelihood, MB, penalty="l2", shuffle=True, over_k=mode,
                            compiler_options=compiler_options)
    init_keys, train_keys = train.seed_keys(range(k))
    params = train.init_many(init, init_keys, (784,))
    opt_state = trainer.init_opt_state(params, ETA)
    c, active = jnp.zeros(k, jnp.float32), jnp.ones(k, bool)
    if sharded:
        params, opt_state, train_keys, c, active = devices.layout_for(k).place(
            (params, opt_state, train_keys, c, active))

    def run_epoch(p, s):
        return trainer.epoch(p, s, x, y, train_keys, c, active)
    state = [params, opt_state]

    def run():
        state[0], state[1] = _block(run_epoch(state[0], state[1]))
    return run


def torch_case(name, k, steps, threads):
    """The same nets in idiomatic PyTorch: K models, each with its own
    ``optim.SGD``, stepped in turn over shuffled mini-batches of 10."""
    import torch
    from torch import nn

    def model():
        convs = [nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
                 nn.Conv2d(20, 40, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten()]
        if name == "conv":
            return nn.Sequential(*convs, nn.Linear(640, 100), nn.ReLU(), nn.Linear(100, 10))
        return nn.Sequential(*convs, nn.Dropout(0.5), nn.Linear(640, 1000), nn.ReLU(),
                             nn.Dropout(0.5), nn.Linear(1000, 1000), nn.ReLU(),
                             nn.Dropout(0.5), nn.Linear(1000, 10))

    torch.manual_seed(0)
    x_np, y_np = data(steps)
    x = torch.from_numpy(x_np).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(y_np).long()
    nets = [model() for _ in range(k)]
    opts = [torch.optim.SGD(net.parameters(), lr=ETA) for net in nets]
    loss_fn = nn.CrossEntropyLoss()

    def run():
        torch.set_num_threads(threads)
        for net in nets:
            net.train()
        order = torch.randperm(len(y))
        for i in range(steps):
            idx = order[i * MB:(i + 1) * MB]
            xb, yb = x[idx], y[idx]
            for net, opt in zip(nets, opts):
                opt.zero_grad()
                loss_fn(net(xb), yb).backward()
                opt.step()
    return run


def time_rounds(cases, rounds, steps):
    """Median wall and process-CPU milliseconds per step of each case, the
    cases interleaved in every round (one warm-up call each first)."""
    for run in cases.values():
        run()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append((time.perf_counter() - w0) * 1e3 / steps)
            cpu[name].append((time.process_time() - c0) * 1e3 / steps)
    return ({n: float(np.median(v)) for n, v in wall.items()},
            {n: float(np.median(v)) for n, v in cpu.items()})


# --- two worker processes, one net each, one core each -----------------------

def worker(name, steps, rounds, core):
    """Child process: pin to ``core``, compile one net, say "ready", wait for
    "go" on stdin, then time ``rounds`` epochs and print them as JSON."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    devices.use_cpu_devices(1)
    run = jax_case(name, 1, steps)
    run()
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3 / steps)
    print(json.dumps(times), flush=True)


def two_processes(name, steps, rounds):
    """ms per step of both nets together (the slower worker's median per-step time:
    each worker ran ``steps`` steps over the same stretch of time), or None."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pins = cores[:2] if len(cores) >= 2 else [None, None]
    cmd = [sys.executable, "-m", "benchmarks.bench_conv", "--worker", name,
           "--steps", str(steps), "--rounds", str(rounds)]
    procs = [subprocess.Popen(cmd + ([] if c is None else ["--core", str(c)]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
             for c in pins]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                return None
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        times = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.wait(timeout=600)
    return max(float(np.median(t)) for t in times)


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="mini-batch steps per timing (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timings per case; the median is kept")
    p.add_argument("--devices", type=int, default=2, help="CPU devices for the K=2 cases (default 2)")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    p.add_argument("--variants", action="store_true",
                   help="also K=1 with jax.grad pools/convs, NCHW and XLA's default options")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch cases")
    p.add_argument("--no-processes", action="store_true", help="skip the two-worker-process case")
    p.add_argument("--worker", choices=NETS, help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.devices < 1:
        p.error("--steps, --rounds and --devices must be positive")
    if args.worker:
        return worker(args.worker, args.steps, args.rounds, args.core)
    devices.use_cpu_devices(args.devices)
    with_torch = torch_available() and not args.no_torch
    print(f"machine: {platform.processor() or platform.machine()}, cores usable {devices.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (a shared machine: compare ratios within this run); "
          f"jax {jax.__version__} {jax.default_backend()}, {len(jax.devices())} devices; "
          f"torch {__import__('torch').__version__ if with_torch else 'not run'}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{args.steps} steps of {MB} per timing, median of {args.rounds} interleaved rounds\n", flush=True)

    table = {}
    for name in args.nets:
        cases = {"jax K=1": jax_case(name, 1, args.steps)}
        if args.variants:
            with gradients_by_jax_grad(pool=True):
                cases["jax K=1, pool by jax.grad"] = jax_case(name, 1, args.steps)
                cases["jax K=1, pool by jax.grad"]()  # trace while patched
            with gradients_by_jax_grad(pool=True, conv=True):
                cases["jax K=1, pool+conv by jax.grad"] = jax_case(name, 1, args.steps)
                cases["jax K=1, pool+conv by jax.grad"]()
            with gradients_by_jax_grad(pool=False, dense=True):
                cases["jax K=1, dense by jax.grad"] = jax_case(name, 1, args.steps)
                cases["jax K=1, dense by jax.grad"]()
            cases["jax K=1, NCHW"] = jax_case(name, 1, args.steps, layout="NCHW")
            cases["jax K=1, XLA default options"] = jax_case(name, 1, args.steps, compiler_options=None)
        if with_torch:
            cases["torch K=1 2t"] = torch_case(name, 1, args.steps, 2)
            cases["torch K=1 1t"] = torch_case(name, 1, args.steps, 1)
        cases["jax K=2 map"] = jax_case(name, 2, args.steps, mode="map")
        cases["jax K=2 vmap"] = jax_case(name, 2, args.steps, mode="vmap")
        if len(jax.devices()) >= 2:
            cases["jax K=2 devices"] = jax_case(name, 2, args.steps, mode="devices", sharded=True)
            cases["jax K=2 vmap-sharded"] = jax_case(name, 2, args.steps, mode="vmap", sharded=True)
        if with_torch:
            cases["torch K=2 2t"] = torch_case(name, 2, args.steps, 2)
        print(f"[{name}] timing {len(cases)} cases ...", flush=True)
        wall, cpu = time_rounds(cases, args.rounds, args.steps)
        if not args.no_processes:
            wall["jax K=2 processes"] = two_processes(name, args.steps, args.rounds)
            cpu["jax K=2 processes"] = float("nan")  # in the workers, not this process
        table[name] = (wall, cpu)
        one = wall["jax K=1"]
        refs = [wall.get("torch K=1 2t"), wall.get("torch K=1 1t")]
        print(f"\n{name}: {'case':<32} {'ms/step':>9} {'cpu ms':>8} {'per net':>8} "
              f"{'÷ torch 2t':>11} {'÷ torch 1t':>11} {'nets/s ÷ one jax net':>21}")
        for case, t in wall.items():
            if t is None:
                print(f"  {case:<38} failed")
                continue
            k = 2 if "K=2" in case else 1
            vs_torch = " ".join(f"{t / k / ref:>11.2f}" if ref else f"{'':>11}" for ref in refs)
            print(f"  {case:<38} {t:>9.3f} {cpu[case]:>8.3f} {t / k:>8.3f} {vs_torch} "
                  f"{k * one / t:>21.2f}")
        print(flush=True)
    return table


if __name__ == "__main__":
    main()
