"""One run over several processes (jax.distributed), tested on one machine:
local processes on the loopback address, a free port picked here, every wait
bounded, and every process this test started killed (by its pid) when it fails.

2 processes × 1 CPU device train the same nets as 1 process × 2 devices; a
checkpoint of a 2-process run resumes in 1 process; a missing peer, a busy
coordinator port and a peer killed mid-run end every process with a message
in a bounded time, never a hang or a bare abort."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import store
from nndl_jax import distributed

REPO = Path(__file__).resolve().parents[1]

# argv: num_processes, process_id, port, devices per process, out prefix, kind ("fc" or "conv"),
#       timeout, [ "stop" (interrupt after epoch 0) | "slow" (sleep 1 s an epoch) ]
WORKER = textwrap.dedent("""
    import json, sys, time
    from nndl_jax import devices, distributed
    n, i, port, ndev, out, kind, timeout = sys.argv[1:8]
    mode = sys.argv[8] if len(sys.argv) > 8 else ""
    devices.use_cpu_devices(int(ndev))
    try:
        distributed.initialize(f"127.0.0.1:{port}" if int(n) > 1 else None, int(n), int(i), timeout=int(timeout))
    except distributed.DistributedError as e:
        print(f"refused: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    import jax, numpy as np
    from nndl_jax import costs, layers, network3, train
    from nndl_jax.activations import sigmoid
    from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer, ReLU
    rng = np.random.default_rng(0)
    def on_epoch(e, record):
        print(f"epoch {e}", flush=True)
        if mode == "stop" and e == 0:
            raise SystemExit(3)
        if mode == "slow":
            time.sleep(1)
    if kind == "fc":
        x = rng.random((100, 20), dtype=np.float32)
        y = rng.integers(0, 10, 100).astype(np.int32)
        net = layers.mlp_net([20, 8, 10], sigmoid)
        params, keys = train.from_seeds(net.init, (20,), [1, 2, 3])
        fitted = train.fit(train.trainer_for(net, costs.cross_entropy, 10, penalty="l2"), params, (x, y),
                           30 if mode == "slow" else 3, key=keys, eta=[0.5, 1.0, 3.0], lmbda=0.1,
                           evaluation={"evaluation": (x[:30], y[:30])}, rules=[train.plateau_schedule(1)],
                           checkpoint=train.Checkpoint(out + ".ckpt.npz", {"test": "distributed"}),
                           on_epoch=on_epoch)
        params, accuracy = fitted.params, fitted.history["evaluation_accuracy"]
    else:
        x = rng.random((60, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60).astype(np.int32)
        net_layers = [ConvPoolLayer((2, 1, 5, 5), (10, 1, 28, 28), (2, 2), ReLU),
                      FullyConnectedLayer(288, 10, ReLU, p_dropout=0.5), SoftmaxLayer(10, 10)]
        out_many = network3.train_many(net_layers, 10, (x, y), 2, 0.05, (x[:20], y[:20]), (x[:20], y[:20]),
                                       seeds=[0, 1, 2], on_epoch=on_epoch)
        params, accuracy = out_many["params"], out_many["validation_accuracy"]
    if distributed.is_main():
        np.savez(out + ".npz", *[np.asarray(a) for a in jax.tree_util.tree_leaves(params)],
                 accuracy=np.asarray(accuracy))
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": len(jax.devices())}), flush=True)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(n, i, port, ndev, out, kind, timeout=20, mode=""):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", NNDL_JAX_COMPILATION_CACHE="0",
               PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-c", WORKER, str(n), str(i), str(port), str(ndev), str(out), kind, str(timeout)]
    return subprocess.Popen(argv + ([mode] if mode else []), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs, limit=300):
    """Wait for every process (at most ``limit`` s in all); kill them all by pid on any failure."""
    deadline = time.monotonic() + limit
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
    return outs


def run_processes(n, ndev, out, kind, mode=""):
    port = free_port()
    results = finish([start(n, i, port, ndev, out, kind, mode=mode) for i in range(n)])
    return results


def saved(prefix):
    with np.load(f"{prefix}.npz") as f:
        return [f[name] for name in f.files]


@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_two_processes_of_one_device_train_as_one_process_of_two_devices(tmp_path, kind):
    """Fully connected nets (vmapped) and conv nets (one net per device,
    shard_map): the K = 3 nets, padded to 4 over the two devices, end with the
    same params and accuracies, bit for bit: the two runs compile the same
    per-device program."""
    one = run_processes(1, 2, tmp_path / "one", kind)
    two = run_processes(2, 1, tmp_path / "two", kind)
    for rc, _, err in one + two:
        assert rc == 0, err[-3000:]
    infos = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in two]
    assert [i["process"] for i in infos] == [0, 1] and all(i["devices"] == 2 for i in infos)
    for a, b in zip(saved(tmp_path / "one"), saved(tmp_path / "two")):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_of_a_two_process_run_resumes_in_one_process(tmp_path):
    """Interrupted after epoch 1 of 3 over 2 processes, resumed in 1 process of
    1 device: the same params as an uninterrupted 1-process run, to float32
    rounding (1 device runs the nets in another program), equal accuracies."""
    stopped = run_processes(2, 1, tmp_path / "run", "fc", mode="stop")
    assert all(rc == 3 for rc, _, _ in stopped), [err[-2000:] for _, _, err in stopped]
    assert (tmp_path / "run.ckpt.npz").exists()
    resumed = run_processes(1, 1, tmp_path / "run", "fc")
    whole = run_processes(1, 1, tmp_path / "whole", "fc")
    assert resumed[0][0] == 0 and whole[0][0] == 0, resumed[0][2][-2000:] + whole[0][2][-2000:]
    assert resumed[0][1].count("epoch ") == 2   # epochs 1 and 2 ran after the resume
    for a, b in zip(saved(tmp_path / "run"), saved(tmp_path / "whole")):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_missing_peer_ends_process_0_with_a_message_within_its_timeout(tmp_path):
    port = free_port()
    t0 = time.monotonic()
    [(rc, _, err)] = finish([start(2, 0, port, 1, tmp_path / "x", "fc", timeout=3)], limit=120)
    assert rc == 2 and "process 1 of 2 did not arrive" in err and "Traceback" not in err, err[-2000:]
    assert time.monotonic() - t0 < 60   # 3 s of waiting, plus starting Python and JAX on a busy machine


def test_a_busy_coordinator_port_is_refused_at_once(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        [(rc, _, err)] = finish([start(2, 0, port, 1, tmp_path / "x", "fc", timeout=30)], limit=120)
    assert rc == 2 and "cannot listen" in err and "pick a free port" in err, err[-2000:]


def test_a_process_killed_mid_run_ends_the_other_with_a_message(tmp_path):
    port = free_port()
    procs = [start(2, i, port, 1, tmp_path / "x", "fc", mode="slow") for i in range(2)]
    try:
        seen = ""
        deadline = time.monotonic() + 240
        while "epoch 2" not in seen and time.monotonic() < deadline:   # both are training
            seen += procs[1].stdout.readline()
        assert "epoch 2" in seen
        os.kill(procs[1].pid, 9)
        killed_at = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        assert time.monotonic() - killed_at < 30
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
    assert procs[0].returncode == distributed.EXIT_PEER_ENDED, err[-2000:]
    assert "process 1 of 2 ended before the run did" in err and "--resume" in err


def test_settings_come_from_the_arguments_or_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.1.2.3:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert distributed.settings(environ=env) == ("10.1.2.3:1234", 4, 2)
    assert distributed.settings("127.0.0.1:99", 2, 1, environ=env) == ("127.0.0.1:99", 2, 1)
    assert distributed.wanted(environ=env) and not distributed.wanted(environ={})
    for bad in ({"JAX_NUM_PROCESSES": "two"}, {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
                {"JAX_COORDINATOR_ADDRESS": "no-port"}, {"JAX_NUM_PROCESSES": "0"}):
        with pytest.raises(distributed.DistributedError):
            distributed.settings(environ=bad)
    with pytest.raises(distributed.DistributedError, match="needs all three"):
        distributed.initialize("127.0.0.1:1", None, None)


def run_chapter(module, argv, n, out, ndev, timeout=600):
    """``python -m experiments.<module> ARGV`` as ``n`` processes of ``ndev`` CPU devices each."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", NNDL_JAX_COMPILATION_CACHE="0",
               XDG_CACHE_HOME=str(Path(out).parent / f"cache-{Path(out).name}"))
    env.pop("XLA_FLAGS", None)
    procs = []
    for i in range(n):
        multi = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                 "--coordinator-timeout", "30"] if n > 1 else []
        procs.append(subprocess.Popen([sys.executable, "-m", f"experiments.{module}", *argv, "--devices", str(ndev),
                                       "--out", str(out), *multi], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = finish(procs, limit=timeout)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
        assert "cannot apply" not in err   # --devices is each process's own count (the README's example)
    return results, json.loads((Path(out) / "results.json").read_text())


@pytest.mark.parametrize("module,argv", [
    ("chap1", ["--quick", "--only", "1.1", "--seeds", "8"]),                 # a chapter-1 row of K = 8 nets
    ("chap6", ["--quick", "--only", "6.2", "--seeds", "3"]),                  # a chapter-6 conv row, K = 3
])
def test_a_chapter_row_over_two_processes_equals_one_process_of_two_devices(tmp_path, module, argv, mnist_dir):
    """The experiment modules' --coordinator/--num-processes/--process-id: 2 processes x 1 device
    record the same rows (every measured value and curve, exactly) as 1 process x 2 devices; only
    process 0 prints the table and writes."""
    argv = argv + ["--data-dir", str(mnist_dir)]
    one, single = run_chapter(module, argv, 1, tmp_path / "one", 2)
    two, multi = run_chapter(module, argv, 2, tmp_path / "two", 1)
    assert "measured" in two[0][1] and two[1][1] == ""            # process 1 prints nothing
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("finished", "run", "seconds")}  # noqa: E731
                          for r in rows]
    assert strip(multi["rows"]) == strip(single["rows"])
    assert len(multi["environment"]["devices"]) == 2
    same = lambda records: {k: store.identity(r) for k, r in records.items()}  # noqa: E731 (less timings, run ids)
    assert same(multi.get("units", {})) == same(single.get("units", {}))
    for key in set(single) - {"rows", "runs", "environment", "units"}:
        if "seconds" not in key:   # wall times and per-row timings differ, of course
            assert multi[key] == single[key], key
