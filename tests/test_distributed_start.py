"""The start and the stop of a run over several processes, tested with local
processes on the loopback address (a free port picked here, every wait
bounded, every process this test started killed by its pid when it fails).

Processes given other arguments, the same --process-id or another
--num-processes are refused in every process before anything trains; a bad
--coordinator is one message; SIGTERM stops every process as Ctrl-C does; a
process that reaches the first collective operation long after the others
is waited for (gloo alone allows 30 s); an error that ends a process is one
paragraph, its traceback in a log file; the compilation cache's warning
names its folder."""
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_distributed import REPO, finish, free_port

from experiments import chap1, checkpoints, driver, session
from nndl_jax import distributed


def environment(tmp_path, **extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", NNDL_JAX_COMPILATION_CACHE="0",
               PYTHONUNBUFFERED="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    return {**env, **extra}


def start_chap1(tmp_path, argv, n, i, port, env=None):
    """``python -m experiments.chap1 ARGV`` as process ``i`` of ``n`` at ``port``."""
    multi = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
             "--coordinator-timeout", "60"]
    return subprocess.Popen([sys.executable, "-m", "experiments.chap1", *multi, *argv], cwd=REPO,
                            env=env or environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def one_paragraph(err):
    return "Traceback" not in err and len(err.strip().splitlines()) <= 3


# --- the processes agree, or say why not -------------------------------------------------------

@pytest.mark.parametrize("argvs,message", [
    ((["--epochs", "2"], ["--epochs", "3"]), "process 1's arguments differ from process 0's: --epochs 3 vs 2"),
    ((["--only", "1.1"], ["--only", "1.2"]), "process 1's arguments differ from process 0's: --only 1.2 vs 1.1"),
    ((["--process-id", "0"], ["--process-id", "0"]), "process id 0 is taken"),
    ((["--num-processes", "2"], ["--num-processes", "3"]),
     "process 1 was started with --num-processes 3, process 0 with 2"),
])
def test_processes_that_disagree_are_refused_in_every_process_before_anything_trains(tmp_path, argvs, message):
    """Today these abort in gloo's C++ after loading MNIST ("collective
    mismatch"), or say "pick a free port" for a second process 0. The options
    given here come last, so they win over start_chap1's (argparse keeps the
    last). MNIST is missing: a process that got past the start would say so."""
    port = free_port()
    common = ["--quick", "--devices", "1", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no-mnist")]
    results = finish([start_chap1(tmp_path, [*common, *own], 2, i, port) for i, own in enumerate(argvs)], limit=240)
    for rc, _, err in results:
        assert rc == 1 and message in err and one_paragraph(err), err[-3000:]
        assert "MNIST" not in err and not (tmp_path / "out" / "results.json").exists()


def test_a_process_id_given_twice_among_three_is_refused_in_every_process(tmp_path):
    """Whichever process 1 arrives second is refused, and so are the others."""
    port = free_port()
    argv = ["--quick", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "no-mnist")]
    results = finish([start_chap1(tmp_path, [*argv, "--process-id", str(i)], 3, 0, port) for i in (0, 1, 1)],
                     limit=240)
    for rc, _, err in results:
        assert rc == 1 and "process id 1 is taken" in err and one_paragraph(err), err[-3000:]


def test_a_process_that_reaches_a_port_where_no_run_starts_says_so(tmp_path):
    """A second process 1 that arrives once the run has started finds JAX's
    coordinator at the port, which accepts and closes: not "no coordinator"."""
    import socket
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        stop = threading.Event()

        def accept_and_close():
            while not stop.is_set():
                try:
                    server.accept()[0].close()
                except OSError:
                    pass
        thread = threading.Thread(target=accept_and_close, daemon=True)
        thread.start()
        try:
            with pytest.raises(distributed.DistributedError, match="given twice"):
                distributed._join("127.0.0.1", server.getsockname()[1], {"id": 1, "n": 2, "agree": {}},
                                  time.monotonic() + 2, 2)
        finally:
            stop.set()
            thread.join(timeout=5)


AGREE = textwrap.dedent("""
    import sys
    from nndl_jax import devices, distributed
    i, port = int(sys.argv[1]), sys.argv[2]
    devices.use_cpu_devices(1)
    distributed.initialize(f"127.0.0.1:{port}", 2, i, timeout=60)
    try:
        distributed.agree_through_jax({"--epochs": 2 + i, "--quick": True}, 60)
    except distributed.DistributedError as e:
        print(f"refused: {e}", flush=True)
        sys.exit(1)
    print("agreed", flush=True)
""")


def test_processes_found_by_jax_are_compared_through_its_key_value_store(tmp_path):
    """--cluster has no rendezvous of ours: the same check goes through JAX's store."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", AGREE, str(i), str(port)], cwd=REPO, env=environment(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for rc, out, err in finish(procs, limit=240):
        assert rc == 1 and "refused: process 1's arguments differ from process 0's: --epochs 3 vs 2" in out, err


def test_the_settings_compared_leave_out_each_process_s_own_place():
    args = driver.argparse.Namespace(process_id=1, coordinator="h:1", coordinator_timeout=5, data_dir=Path("/d"),
                                     devices=2, cluster=False, debug=False, share=None, part_record=None,
                                     epochs=3, only=["1.1"], out=Path("r"), quick=True, chapter="chap1", code="x")
    assert session.agreed_settings(args) == {"--epochs": 3, "--only": ["1.1"], "--out": "r", "--quick": True,
                                            "the command": "chap1", "the code version": "x"}


# --- --coordinator -------------------------------------------------------------------------------

@pytest.mark.parametrize("coordinator,why", [("127.0.0.1:abc", "is not a number"), ("127.0.0.1:", "port is empty"),
                                             ("127.0.0.1:70000", "not one of 1..65535"), (":6543", "host is empty"),
                                             ("127.0.0.1:0", "not one of 1..65535")])
def test_a_bad_coordinator_is_one_message(coordinator, why, capsys):
    """Today a ValueError traceback, or a wait for the whole timeout."""
    argv = ["--quick", "--coordinator", coordinator, "--num-processes", "2", "--process-id", "0"]
    assert session.main_entry(chap1.main, argv) == 2
    err = capsys.readouterr().err
    assert "--coordinator" in err and why in err and "Traceback" not in err, err
    with pytest.raises(distributed.DistributedError, match=why):
        distributed.settings(environ={"JAX_COORDINATOR_ADDRESS": coordinator})


# --- SIGTERM -------------------------------------------------------------------------------------

@pytest.mark.parametrize("signalled", [(0, 1), (1,)])
def test_sigterm_stops_every_process_with_the_note_and_keeps_the_checkpoint(tmp_path, mnist_dir, signalled):
    """Slurm sends SIGTERM to every process of a job; a process alone may get
    it too. Today JAX's preemption notifier takes it and the run trains on."""
    port = free_port()
    argv = ["--only", "1.1", "--epochs", "30", "--seeds", "2", "--devices", "1", "--out", str(tmp_path / "out"),
            "--data-dir", str(mnist_dir)]
    procs = [start_chap1(tmp_path, argv, 2, i, port) for i in range(2)]
    try:
        seen = wait_for_line(procs[0], "Epoch 0 (1 of 30)", limit=400)
        assert "Epoch 0 (1 of 30)" in seen, seen[-2000:]
        for i in signalled:
            os.kill(procs[i].pid, signal.SIGTERM)
        results = finish(procs, limit=120)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, 9)
                p.wait()
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc0 == 143 and rc1 == 143, err0[-2000:] + err1[-2000:]
    assert "stopped (SIGTERM" in err0 and "stopped (SIGTERM" in err1 and "Traceback" not in err0 + err1
    saved = next(line for line in err0.splitlines() if "last finished epoch is saved in" in line).split(" in ")[-1]
    assert (Path(saved) / checkpoints.CHECKPOINT_FILE).exists()
    resume = [line for line in err0.splitlines() if line.startswith("resume with:")]
    assert resume and "--process-id 0" in resume[0] and resume[0].count("--resume") == 1
    assert saved not in err1 and "process 0 records the finished rows" in err1 and "--process-id 1" in err1
    assert "cannot apply" not in err0 + err1   # the README's --devices 1: no false warning


def wait_for_line(proc, text, limit):
    """What ``proc`` printed until a line holding ``text`` (or its end, or ``limit`` s),
    read by a helper thread so that a silent process cannot block the test."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put("")], daemon=True).start()
    seen, deadline = "", time.monotonic() + limit
    while text not in seen and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen += line
    return seen


def test_a_ctrl_c_note_in_process_1_points_at_process_0_not_at_its_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / checkpoints.CHECKPOINT_FILE).write_bytes(b"")
    command = session.Session()
    command.note_checkpoint(folder / checkpoints.CHECKPOINT_FILE)
    monkeypatch.setattr(distributed, "_STARTED", [(1, 2)])
    note = command.interrupted_note()
    assert str(folder) not in note and "process 1 of 2: process 0" in note
    monkeypatch.setattr(distributed, "_STARTED", [(0, 2)])
    assert str(folder) in command.interrupted_note()


# --- the first collective, and errors ------------------------------------------------------------

WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from experiments import driver, session

    def main(argv, run_session=None):
        driver.parse_args("chap1", "the start of a run over several processes", argv, row_ids=["1.1"],
                          run_session=run_session)
        import jax
        if jax.process_index() == 1:
            time.sleep(float(os.environ["SLEEP_IN_PROCESS_1"]))
        from nndl_jax import costs, layers, train
        from nndl_jax.activations import sigmoid
        rng = np.random.default_rng(0)
        x, y = rng.random((40, 20), dtype=np.float32), rng.integers(0, 10, 40).astype(np.int32)
        net = layers.mlp_net([20, 8, 10], sigmoid)
        params, keys = train.from_seeds(net.init, (20,), [1, 2])
        fitted = train.fit(train.trainer_for(net, costs.cross_entropy, 10), params, (x, y), 1, key=keys,
                           eta=[1.0, 1.0], evaluation={"evaluation": (x, y)})
        print("trained", fitted.history["evaluation_accuracy"], flush=True)
        return 0

    raise SystemExit(session.main_entry(main, sys.argv[1:]))
""")


def start_worker(tmp_path, i, port, env, extra=()):
    argv = ["--devices", "1", "--out", str(tmp_path / "out"), "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", str(i), *extra]
    return subprocess.Popen([sys.executable, "-c", WORKER, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_process_that_reaches_the_first_collective_40_s_late_is_waited_for(tmp_path):
    """gloo allows 30 s to connect, at the first collective operation; today a
    process that loads or compiles 30 s longer than another kills the run
    there. The processes now connect while side by side, at the start-up."""
    port = free_port()
    env = environment(tmp_path, SLEEP_IN_PROCESS_1="40")
    results = finish([start_worker(tmp_path, i, port, env) for i in range(2)], limit=400)
    for rc, _, err in results:
        assert rc == 0 and "cannot apply" not in err, err[-3000:]
    assert "trained" in results[0][1]


@pytest.mark.parametrize("debug", [False, True])
def test_an_error_that_ends_a_process_is_one_paragraph_and_a_log(tmp_path, debug):
    """A collective that times out (XLA's limit made 2 s here, process 1 late):
    process 0 says so in one paragraph naming the log file, which holds the
    traceback (--debug: the traceback on stderr, no log); process 1 stops
    because process 0 ended."""
    port = free_port()
    env = environment(tmp_path, SLEEP_IN_PROCESS_1="120", XLA_FLAGS="--xla_cpu_collective_timeout_seconds=2")
    extra = ["--debug"] if debug else []
    (rc0, _, err0), (rc1, _, err1) = finish([start_worker(tmp_path, i, port, env, extra) for i in range(2)],
                                            limit=300)
    assert rc0 == 1 and "process 0 of 2 stopped on an error" in err0 and "Gloo" in err0, err0[-3000:]
    assert rc1 == distributed.EXIT_PEER_ENDED and "process 0 of 2 ended" in err1, err1[-3000:]
    if debug:
        assert "Traceback" in err0 and "account of it is in" not in err0
        return
    assert "Traceback" not in err0 and one_paragraph(err0), err0[-3000:]
    log = Path(err0.split("account of it is in ")[1].split(" (--debug")[0])
    assert log.is_relative_to(tmp_path / "cache") and "Traceback" in log.read_text()


# --- the compilation cache ---------------------------------------------------------------------

FIT = textwrap.dedent("""
    import numpy as np
    from nndl_jax import costs, layers, train
    from nndl_jax.activations import sigmoid
    x = np.random.default_rng(0).random((50, 20), dtype=np.float32)
    net = layers.mlp_net([20, 8, 10], sigmoid)
    params, keys = train.from_seeds(net.init, (20,), [1])
    fitted = train.fit(train.trainer_for(net, costs.cross_entropy, 10), params, (x, np.arange(50) % 10), 1,
                       key=keys, eta=[1.0])
    import jax
    print(json.dumps([float(np.asarray(a).sum()) for a in jax.tree_util.tree_leaves(fitted.params)]))
""")


def test_a_damaged_compilation_cache_entry_is_one_line_naming_the_folder(tmp_path):
    """Today JAX warns twice per damaged entry, naming neither the folder nor what to do."""
    env = environment(tmp_path, NNDL_JAX_COMPILATION_CACHE=str(tmp_path / "xla"))
    run = [sys.executable, "-c", "import json\n" + FIT]
    first = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    entries = [p for p in (tmp_path / "xla").iterdir() if p.is_file()]
    assert first.returncode == 0 and entries, first.stderr[-2000:]
    for p in entries:
        p.write_bytes(b"damaged")
    second = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and json.loads(second.stdout) == json.loads(first.stdout)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path / "xla") in lines[0] and "Deleting the folder" in lines[0], lines
