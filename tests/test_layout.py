"""Issue 31 item 1: a run's numbers depend on its seeds and settings only,
never on the layout. 1 CPU device, 2 devices, and a checkpoint written on 2
devices then resumed on 1 give the same nets and the same curves, bit for bit
(float32, no tolerance), in every K-axis mode: the trainer's default "vmap"
(fully connected nets), "auto" on the CPU (conv nets: one net after another
on 1 device, over both devices on 2) and the accelerator's choice forced on
the CPU (``devices.k_axis_mode(backend="gpu")``: conv nets vmapped). Then the
same for rows of chapters 1, 3 and 6 run from the command line.

Each run is a subprocess: the device count is fixed when JAX starts."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# argv: devices, "whole" | "stop" (interrupted after epoch 0) | "resume", checkpoint folder
LIBRARY = textwrap.dedent("""
    import hashlib, json, sys
    from nndl_jax import devices
    devices.use_cpu_devices(int(sys.argv[1]))
    import jax, jax.numpy as jnp, numpy as np
    from nndl_jax import costs, layers, train
    from nndl_jax.activations import relu, sigmoid
    how, folder = sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    x784 = rng.random((300, 784), dtype=np.float32)     # fully connected nets see MNIST's width
    x, y = x784[:, :64], rng.integers(0, 10, 300).astype(np.int32)
    conv = layers.serial(layers.conv_pool((3, 1, 3, 3), (5, 1, 8, 8), (2, 2), relu),
                         layers.fully_connected(12, relu), layers.softmax(10))
    fc = layers.serial(layers.fully_connected(30, sigmoid), layers.fully_connected(10, sigmoid))
    cases = {"fc-vmap-k2": (fc, costs.quadratic, None, "vmap", 2, x784),
             "conv-auto-k3": (conv, costs.log_likelihood, "l2", "auto", 3, x),
             "conv-gpu-k2": (conv, costs.log_likelihood, "l2", devices.k_axis_mode("auto", backend="gpu"), 2, x)}

    class Stop(Exception):
        pass

    def stop(e, record):
        if how == "stop":
            raise Stop

    out = {}
    for name, ((init, apply), cost, penalty, mode, k, x) in cases.items():
        params, keys = train.from_seeds(init, (x.shape[1],), range(10, 10 + k))
        trainer = train.Trainer(apply, cost, 10, penalty=penalty, over_k=mode)
        ckpt = None if how == "whole" else train.Checkpoint(f"{folder}/{name}.npz", {"case": name})
        try:
            fitted = train.fit(trainer, params, (x, y), 2, key=keys, eta=0.5, lmbda=0.1,
                               evaluation={"e": (x[:70], y[:70])}, checkpoint=ckpt, on_epoch=stop)
        except Stop:
            continue
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves((fitted.params, fitted.opt_state))]
        out[name] = {"nets": hashlib.sha1(b"".join(a.tobytes() for a in leaves)).hexdigest(),
                     "k": int(leaves[0].shape[0]), "mode": trainer.k_mode,
                     "used": len(devices.layout_for(k, mode=trainer.k_mode).devices),
                     "resumed": fitted.history.resumed_epochs,
                     "curves": {n: np.asarray(v).tolist() for n, v in fitted.history.as_arrays().items()}}
    print(json.dumps(out))
""")


def run_library(n_devices, how, folder):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", LIBRARY, str(n_devices), how, str(folder)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_mode_trains_the_same_nets_on_one_and_two_devices_and_across_a_resume(tmp_path):
    one = run_library(1, "whole", tmp_path)
    two = run_library(2, "whole", tmp_path)
    assert run_library(2, "stop", tmp_path) == {}          # every case stopped after epoch 0 ...
    resumed = run_library(1, "resume", tmp_path)            # ... and continued on one device
    assert set(one) == set(two) == set(resumed) and len(one) == 3
    for name in one:
        assert one[name]["k"] == two[name]["k"] == resumed[name]["k"], name   # no padding net kept
        assert resumed[name]["resumed"] == 1, name
        for run in (two, resumed):   # bit for bit: the nets' params and optimizer state, and every curve
            assert run[name]["nets"] == one[name]["nets"], name
            assert run[name]["curves"] == one[name]["curves"], name
    # the layouts differ where they can: conv nets spread over both devices, a K-wide vmap stays on one
    assert two["conv-auto-k3"]["mode"] == "devices" and two["conv-auto-k3"]["used"] == 2
    assert one["conv-auto-k3"]["mode"] == "map" and one["conv-auto-k3"]["used"] == 1
    assert two["conv-gpu-k2"]["mode"] == "vmap" and two["fc-vmap-k2"]["used"] == 1



@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_two_processes_of_one_device_train_the_same_nets_as_one_process_of_one_device(tmp_path, kind):
    """tests/test_distributed.py's worker (K = 3: fully connected nets vmapped, every
    process holding all three; conv nets one per device, padded to 4) in 2 processes
    against 1 process of 1 device: the same params and accuracies, bit for bit."""
    from test_distributed import run_processes, saved
    one = run_processes(1, 1, tmp_path / "one", kind)
    two = run_processes(2, 1, tmp_path / "two", kind)
    for rc, _, err in one + two:
        assert rc == 0, err[-3000:]
    assert [json.loads(out.strip().splitlines()[-1])["processes"] for _, out, _ in two] == [2, 2]
    for a, b in zip(saved(tmp_path / "one"), saved(tmp_path / "two")):
        np.testing.assert_array_equal(a, b)

# --- rows from the command line ------------------------------------------------------

# argv: module, "whole" | "stop" (Ctrl-C after the first epoch), then the chapter's arguments
CHAPTER = textwrap.dedent("""
    import importlib, sys
    from experiments import progress as printing
    module, how, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

    class Stop(KeyboardInterrupt):
        pass

    if how == "stop":
        real = printing.progress

        def progress(label, epochs, show=None, **kw):
            printer = real(label, epochs, show, **kw)

            def on_epoch(e, record):
                printer(e, record)
                raise Stop
            return on_epoch
        printing.progress = progress
    try:
        importlib.import_module("experiments." + module).main(argv)
    except Stop:
        sys.exit(3)
""")


def run_row(module, how, argv, tmp_path, expect=0):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE="0",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", CHAPTER, module, how, *argv], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc.stdout


def recorded(out):
    """The rows of ``out``/results.json less what says how they ran: times (a resumed
    row's earlier sittings too), run ids, the devices used (merge's volatile entries)."""
    rows = json.loads((Path(out) / "results.json").read_text())["rows"]
    how = {"finished", "run", "seconds", "earlier_seconds", "untimed_epochs", "devices", "trained_with"}
    return [{k: v for k, v in r.items() if k not in how} for r in rows]


@pytest.mark.parametrize("module,argv", [
    ("chap1", ["--quick", "--only", "1.1", "--seeds", "2"]),                  # K = 2 fully connected nets
    ("chap3", ["--quick", "--only", "3.4", "--seeds", "2"]),                  # cost curves: every bit shows
    ("chap6", ["--quick", "--only", "6.2", "--seeds", "2", "--epochs", "2"]),  # K = 2 conv nets
])
def test_a_row_records_the_same_on_one_device_two_devices_and_resumed_from_two_on_one(
        tmp_path, module, argv, mnist_dir):
    argv = argv + ["--data-dir", str(mnist_dir)]
    out = {name: tmp_path / name for name in ("one", "two", "two-then-one")}
    run_row(module, "whole", argv + ["--devices", "1", "--out", str(out["one"])], tmp_path)
    run_row(module, "whole", argv + ["--devices", "2", "--out", str(out["two"])], tmp_path)
    later = argv + ["--out", str(out["two-then-one"])]
    run_row(module, "stop", later + ["--devices", "2"], tmp_path, expect=3)
    assert not (out["two-then-one"] / "results.json").exists()
    said = run_row(module, "whole", later + ["--devices", "1", "--resume"], tmp_path)
    assert "resumed" in said.lower(), said
    one = recorded(out["one"])
    assert one and recorded(out["two"]) == one
    assert recorded(out["two-then-one"]) == one
