"""train.fit's checkpoints: an interrupted run resumed from its checkpoint ends
bit-identical to an uninterrupted one; a checkpoint of another run, or an
unreadable one, is refused; a diverging net is stopped and reported."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import activations, checkpoint, costs, layers, train

SIZES = [4, 6, 3]


def toy_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


class Interrupted(Exception):
    pass


def interrupt_after(epoch):
    def on_epoch(e, record):
        if e == epoch:
            raise Interrupted
    return on_epoch


@pytest.fixture(scope="module")
def toy():
    init, apply = layers.mlp(SIZES, activations.sigmoid)
    trainer = train.Trainer(apply, costs.cross_entropy, 8, penalty="l2", momentum=0.5)
    params, keys = train.from_seeds(init, (SIZES[0],), [1, 2])
    return trainer, params, keys, toy_data(), toy_data(30, seed=1)


def run(toy, checkpoint=None, on_epoch=None, epochs=3, **kw):
    trainer, params, keys, training, evaluation = toy
    args = dict(key=keys, eta=jnp.array([0.5, 2.0]), lmbda=0.1,
                evaluation={"evaluation": evaluation}, rules=[train.plateau_schedule(1)])
    args.update(kw)
    return train.fit(trainer, params, training, epochs, checkpoint=checkpoint, on_epoch=on_epoch, **args)


def test_run_interrupted_after_epoch_1_of_3_and_resumed_is_bit_identical(toy, tmp_path):
    """Exact equality (tolerance 0) of params, optimizer state, history and
    schedule state; the schedule (plateau of 1 epoch) makes the η history part
    of what must survive the interruption."""
    whole = run(toy)
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(1))
    assert ckpt.epochs_done() == 2
    resumed_epochs = []
    resumed = run(toy, ckpt, on_epoch=lambda e, r: resumed_epochs.append(e))
    assert resumed_epochs == [2]                            # only the missing epoch ran
    for a, b in zip(jax.tree_util.tree_leaves((whole.params, whole.opt_state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name, values in whole.history.as_arrays().items():
        np.testing.assert_array_equal(values, resumed.history.as_arrays()[name], err_msg=name)
    np.testing.assert_array_equal(whole.history.stopped_at, resumed.history.stopped_at)
    assert whole.history.as_arrays()["evaluation_accuracy"].shape == (3, 2)
    assert np.issubdtype(resumed.history.as_arrays()["evaluation_accuracy"].dtype, np.integer)  # images correct


def saved_leaf(path, name):
    """The leaf ``name`` (its path in the TrainState, e.g. ".seconds") of a checkpoint file."""
    header, leaves = checkpoint.read_tree(path, fmt=checkpoint.CHECKPOINT_FORMAT)
    return leaves[[n for n, _, _ in header["leaves"]].index(name)]


def test_a_resumed_run_keeps_the_time_of_its_earlier_epochs(toy, tmp_path):
    """history.seconds holds every epoch's wall time, the restored epochs' too
    (from the checkpoint), and resumed_epochs says how many were restored."""
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(1))
    saved = saved_leaf(ckpt.path, ".seconds")
    assert saved.shape == (2,) and np.all(saved > 0)
    resumed = run(toy, ckpt)
    assert resumed.history.resumed_epochs == 2
    np.testing.assert_array_equal(resumed.history.seconds[:2], saved)
    assert len(resumed.history.seconds) == 3 and resumed.history.seconds[2] > 0
    assert resumed.history.earlier_seconds == float(np.sum(saved))          # History: the one home of run time
    assert resumed.history.total_seconds == float(np.sum(resumed.history.seconds))
    fresh = run(toy).history
    assert fresh.resumed_epochs == 0 and fresh.earlier_seconds == 0.0


def test_a_checkpoint_of_another_run_is_refused_one_line_per_setting_and_left_intact(toy, tmp_path):
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy", "seeds": [1, 2]})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(0))
    before = ckpt.path.read_bytes()
    for other, line, difference in [
        (dict(checkpoint=train.Checkpoint(ckpt.path, {"row": "toy", "seeds": [1, 3]})),
         "seeds: saved [1, 2], this run [1, 3]", ("seeds", [1, 2], [1, 3])),
        (dict(checkpoint=ckpt, lmbda=0.2), "lmbda: saved [0.1, 0.1], this run [0.2, 0.2]",
         ("lmbda", [0.1, 0.1], [0.2, 0.2])),
        (dict(checkpoint=ckpt, epochs=4), "epochs: saved 3, this run 4", ("epochs", 3, 4)),
    ]:
        with pytest.raises(train.CheckpointError) as refused:
            run(toy, **other)
        assert f"\n  {line}\n" in str(refused.value)
        assert difference in refused.value.differences
        assert refused.value.path == ckpt.path
    assert ckpt.path.read_bytes() == before


def _rewrite_leaf(path, index, dtype):
    """Rewrite leaf ``index`` of a tree file, header and data, as ``dtype`` (what an edit leaves)."""
    header, leaves = checkpoint.read_tree(path, fmt=checkpoint.CHECKPOINT_FORMAT)
    leaves[index] = leaves[index].astype(dtype)
    header["leaves"][index][2] = str(np.dtype(dtype))
    with open(path, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), **{f"leaf_{i}": a for i, a in enumerate(leaves)})
    return header["leaves"][index][0]


@pytest.mark.parametrize("leaf, dtype", [(0, np.float16), (-1, np.float32)], ids=["params-float16", "seconds-float32"])
def test_a_checkpoint_leaf_of_another_dtype_is_refused_naming_the_leaf_and_both_dtypes(toy, tmp_path, leaf, dtype):
    """A leaf rewritten in another dtype (header and data alike, so the file is
    consistent) would be cast silently and the resumed numbers would differ."""
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(0))
    header, leaves = checkpoint.read_tree(ckpt.path, fmt=checkpoint.CHECKPOINT_FORMAT)
    saved_dtype = leaves[leaf].dtype
    name = _rewrite_leaf(ckpt.path, leaf % len(leaves), dtype)
    before = ckpt.path.read_bytes()
    with pytest.raises(train.CheckpointError) as refused:
        run(toy, ckpt)
    message = str(refused.value)
    assert name in message and f"holds {np.dtype(dtype)} values, this run's are {saved_dtype}" in message
    assert ckpt.path.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a zip file", "truncated", "older"])
def test_an_unreadable_truncated_or_older_checkpoint_is_a_clear_error_and_is_not_overwritten(toy, tmp_path,
                                                                                            content):
    path = tmp_path / "row.npz"
    if content == "truncated":   # a real checkpoint cut short, as a full disk leaves it
        run(toy, train.Checkpoint(path, {}), epochs=1)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "older":     # the layout of the format before this one
        np.savez(path, format=np.array("nndl-jax fit checkpoint v1"), meta=np.array("{}"), epoch=np.array(0))
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(train.CheckpointError, match="unreadable checkpoint.*--restart") as refused:
        run(toy, train.Checkpoint(path, {}))
    if content == "older":
        assert "older nndl-jax" in str(refused.value)
    assert refused.value.differences == []
    assert path.read_bytes() == before


def test_checkpoint_writes_are_atomic_and_leave_no_temporary_files(toy, tmp_path):
    ckpt = train.Checkpoint(tmp_path / "sub" / "row.npz", {"row": "toy"})
    run(toy, ckpt, epochs=2)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["row.npz"]
    header, _ = checkpoint.read_tree(ckpt.path, fmt=checkpoint.CHECKPOINT_FORMAT)
    assert header["meta"]["identity"]["row"] == "toy" and header["meta"]["identity"]["epochs"] == 2
    assert ckpt.epochs_done() == 2 and int(saved_leaf(ckpt.path, ".epoch")) == 2


def test_a_checkpoint_saves_the_nets_unpadded_and_no_device_count(toy, tmp_path):
    """What a run is, not how it was laid out: K nets (never the padding to a
    multiple of the devices), and nothing in its identity names devices."""
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    run(toy, ckpt, epochs=1)
    header, leaves = checkpoint.read_tree(ckpt.path, fmt=checkpoint.CHECKPOINT_FORMAT)
    params = [leaf for (name, _, _), leaf in zip(header["leaves"], leaves) if name.startswith(".params")]
    assert params and all(p.shape[0] == 2 for p in params)
    assert "device" not in json.dumps(header["meta"]["identity"])


def test_resuming_a_run_in_which_a_net_had_already_stopped_is_bit_identical(toy, tmp_path):
    """Net 0 stops early (no improvement in 2 epochs, after epoch 3) before the
    interruption (after epoch 3); net 1 trains one more epoch; after the resume it gets no further updates and
    keeps its stopped_at, and the whole run equals the uninterrupted one."""
    trainer, params, keys, training, evaluation = toy
    kw = dict(rules=[train.early_stopping(2)], eta=jnp.array([0.2, 2.0]), epochs=8)
    net0 = []
    whole = run(toy, on_epoch=lambda e, r: net0.append(np.asarray(r["params"][0]["w"][0])), **kw)
    assert whole.history.stopped_at[0] == 3 and whole.history.stopped_at[1] == 4
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(3), **kw)
    seen = []
    resumed = run(toy, ckpt, on_epoch=lambda e, r: seen.append(np.asarray(r["params"][0]["w"][0])), **kw)
    np.testing.assert_array_equal(resumed.history.stopped_at, whole.history.stopped_at)
    for a, b in zip(jax.tree_util.tree_leaves(whole[:2]), jax.tree_util.tree_leaves(resumed[:2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name, values in whole.history.as_arrays().items():
        np.testing.assert_array_equal(values, resumed.history.as_arrays()[name], err_msg=name)
    assert [ev["event"] for ev in resumed.history.events] == ["resumed"]
    for w in net0[4:] + seen:   # the stopped net never moved after its last epoch (3), resumed or not
        np.testing.assert_array_equal(w, net0[3])
    assert seen and not np.array_equal(net0[0], net0[3])


def test_a_net_whose_params_become_infinite_is_stopped_and_reported_while_the_other_trains(toy, capsys):
    """Net 1 starts with one infinite weight: its first update turns it into NaNs.
    The core prints nothing: the divergence is an event in the record and the history."""
    trainer, params, keys, training, evaluation = toy
    params = jax.tree_util.tree_map(jnp.copy, params)
    params[0]["w"] = params[0]["w"].at[1, 0, 0].set(jnp.inf)
    events = []
    out = train.fit(trainer, params, training, 3, key=keys, eta=jnp.array([0.5, 3.0]),
                    evaluation={"evaluation": evaluation}, on_epoch=lambda e, r: events.extend(r["events"]))
    np.testing.assert_array_equal(out.history.diverged_at, [-1, 0])
    assert events == [{"event": "diverged", "net": 1, "epoch": 0, "eta": 3.0}] == out.history.events
    assert capsys.readouterr().out == ""
    assert np.all(np.isfinite(np.asarray(out.params[0]["w"][0])))
    assert not np.all(np.isfinite(np.asarray(out.params[0]["w"][1])))
    assert out.history.as_arrays()["evaluation_accuracy"].shape == (3, 2)   # net 0 kept training


# --- the experiments' row checkpoints (experiments/driver.py; issue 24 items 3–6) ----------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time as _time  # noqa: E402

from experiments import chap1, chap4, chap5, checkpoints, driver, progress, report, session  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A user cache of the test's own: nothing is left in the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _args(out, *argv, chapter="chap5"):
    module = {"chap1": chap1, "chap4": chap4, "chap5": chap5}[chapter]
    return driver.parse_args(chapter, "", ["--out", str(out), *argv],
                             row_ids=[r["id"] for r in module.ROWS])


def _plant_checkpoint(args, job_id, rows, age_seconds=0.0):
    folder = checkpoints.checkpoint_dir(args, job_id)
    folder.mkdir(parents=True)
    (folder / checkpoints.CHECKPOINT_FILE).write_bytes(b"saved state")
    (folder / checkpoints.OWNER_FILE).write_text(json.dumps({"pid": 999999999, "rows": rows}))
    then = _time.time() - age_seconds
    os.utime(folder / checkpoints.CHECKPOINT_FILE, (then, then))
    return folder


def test_removing_a_rows_checkpoints_clears_interrupted_writes_and_empty_folders(tmp_path, cache):
    args = _args(tmp_path / "out")
    folder = _plant_checkpoint(args, "5.1", ["5.1"])
    (folder / ".state.npz.999999999.tmp").write_bytes(b"half")             # interrupted writes
    (folder / ".state.npz.999999999.1a2b3c4d.part").write_bytes(b"half")
    sub = _plant_checkpoint(args, "5.1@abc", ["5.1"])
    checkpoints.remove_checkpoints(args, "5.1")
    assert not folder.exists() and not sub.exists()
    assert not (cache / "nndl-jax" / "checkpoints").exists()                # no empty folders left


def test_a_checkpoint_folder_that_cannot_be_made_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """Issue 24 item 3 (a regular file where the cache should be; read-only
    folders do not stop root, who runs the tests)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(chap4, "run", lambda args: pytest.fail("trained without a checkpoint folder"))
    status = session.main_entry(chap4.main, ["--quick", "--out", str(tmp_path / "out"), "--only", "4.3"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"the checkpoint folder {blocker / 'nndl-jax' / 'checkpoints'}" in err and "XDG_CACHE_HOME" in err
    assert not (tmp_path / "out").exists()                                  # a failed start leaves no folder


def test_a_live_run_is_named_and_never_discarded(tmp_path, cache):
    """Issue 24 item 6: the process training a row holds a lock in its checkpoint
    folder; a second command on the row is told who, even with --restart."""
    args = _args(tmp_path / "out")
    folder = _plant_checkpoint(args, "5.1", ["5.1"])
    owner = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, json, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.ftruncate(fd, 0); os.write(fd, json.dumps({'pid': os.getpid(), 'rows': ['5.1']}).encode())\n"
         "print('locked', flush=True)\ntime.sleep(120)", str(folder / checkpoints.OWNER_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        for again in ([], ["--resume"], ["--restart"]):
            with pytest.raises(session.Refusal, match=f"row 5.1 is being trained by pid {owner.pid}"):
                chap5.main(["--quick", "--out", str(tmp_path / "out"), "--only", "5.1", *again])
        assert (folder / checkpoints.CHECKPOINT_FILE).read_bytes() == b"saved state"
    finally:
        owner.kill()
        owner.wait()


def test_a_checkpoint_whose_rows_were_recorded_since_never_blocks_a_run(tmp_path, cache, capsys):
    """Issue 24 item 5: a stale checkpoint (its rows recorded after it was written) is
    removed with a note; one newer than the recorded rows is an interrupted run."""
    out = tmp_path / "out"
    chap5.main(["--quick", "--out", str(out), "--only", "5.10"])
    folder = _plant_checkpoint(_args(out, "--quick"), "5.10", ["5.10.1", "5.10.2", "5.10.3"], age_seconds=3600)
    chap5.main(["--quick", "--out", str(out), "--only", "5.10"])
    assert "removed the checkpoint of 5.10, whose rows were recorded since" in capsys.readouterr().out
    assert not folder.exists()
    _plant_checkpoint(_args(out, "--quick"), "5.10", ["5.10.1", "5.10.2", "5.10.3"], age_seconds=-3600)
    with pytest.raises(session.Refusal, match="rows 5.10 of an interrupted run .* --resume .* --restart"):
        chap5.main(["--quick", "--out", str(out), "--only", "5.10"])


class Stop(KeyboardInterrupt):
    pass


def _interrupt_after_first_epoch(monkeypatch, seen):
    real = progress.progress

    def interrupting(label, epochs, show, **kw):
        printer = real(label, epochs, show, **kw)

        def on_epoch(e, record):
            seen.append((label, e))
            printer(e, record)
            if e == 0:
                raise Stop
        return on_epoch
    monkeypatch.setattr(progress, "progress", interrupting)


def test_resume_with_another_only_grouping_continues_the_saved_group(tmp_path, cache, mnist_dir, monkeypatch):
    """Issue 24 item 5: chapter 1 trains 1.1 and 1.4 as one group ("1.1+1.4");
    cut off in its first epoch, `--only 1.1 --resume` continues that group
    (epoch 1 alone) and records both rows, leaving no checkpoint behind."""
    common = ["--quick", "--seeds", "1", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "out")]
    seen = []
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, seen)
        with pytest.raises(Stop):
            chap1.main([*common, "--only", "1.1", "1.4"])
    assert list(checkpoints.saved_checkpoints(_args(tmp_path / "out", "--resume", chapter="chap1"))) == ["1.1+1.4"]
    seen.clear()
    real = progress.progress
    monkeypatch.setattr(progress, "progress", lambda label, epochs, show, **kw: (
        lambda e, r: (seen.append(e), real(label, epochs, show, **kw)(e, r))))
    chap1.main([*common, "--only", "1.1", "--resume"])
    assert seen == [1]
    rows = {r["id"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["rows"]}
    assert rows == {"1.1", "1.4"}
    assert not (cache / "nndl-jax" / "checkpoints").exists()


def test_a_refused_checkpoint_is_shown_one_line_per_setting_without_a_traceback(capsys):
    """Issue 24 item 4: the core names each differing setting (CheckpointError.differences);
    the command line shows one line each, with the option to pass back, or --restart."""
    def refused(argv, run_session=None):
        e = train.CheckpointError("belongs to another run")
        e.path, e.differences = "/cache/5.1/state.npz", [("fit.epochs", 12, 10), ("seeds", [1, 2], [1, 3]),
                                                         ("rules", object(), "plateau")]
        raise e
    assert session.main_entry(refused, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "  fit.epochs: saved 12, this run 10 (pass --epochs 12 to continue it)" in err
    assert "  seeds: saved [1, 2], this run [1, 3]\n" in err and "--restart" in err
    assert "  rules: saved (not set), this run plateau\n" in err


def test_a_refused_checkpoint_of_a_real_row_ends_without_a_traceback(tmp_path, cache, mnist_dir, monkeypatch,
                                                                    capsys):
    common = ["--quick", "--only", "5.1", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "out")]
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, [])
        assert session.main_entry(chap5.main, [*common, "--seeds", "2"]) == 130
    assert "resume with: nndl-jax chap5" in capsys.readouterr().err   # main_entry with an argv: the nndl-jax command
    assert session.main_entry(chap5.main, [*common, "--seeds", "1", "--resume"]) == 1   # other seeds
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--restart" in err
    assert session.main_entry(chap5.main, [*common, "--seeds", "1", "--restart"]) == 0


def test_resume_says_when_a_row_is_saved_in_a_checkpoint_it_does_not_continue(tmp_path, cache, capsys):
    """Issue 24 item 5, in general: a job whose rows are also saved under another
    grouping (here "5.1+5.2" while 5.1 runs alone) says why it does not continue it."""
    args = _args(tmp_path / "out", "--resume")
    _plant_checkpoint(args, "5.1+5.2", ["5.1", "5.2"])
    job = driver.Job("5.1", ["5.1"], lambda a: [report.row("5.1", "depth", None, 1.0)])
    driver.run_jobs(args, [job])
    out = capsys.readouterr().out
    assert "5.1: note: 5.1 also saved as part of 5.1+5.2 (rows 5.1, 5.2), which this command does not continue" \
        in out
