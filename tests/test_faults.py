"""Tests that catch hand-made faults (issue 31 item 14): each test fails with
the fault its docstring names injected alone, and passes without it.

Which test kills which fault (the fault, where it was injected, the test):

checkpoint identity (nndl_jax/train.py ``run_identity`` / ``prepare_run``'s settings, ``_fingerprint``)
  η dropped from the identity ............ test_a_checkpoint_of_another_run_is_refused[eta]
  n_penalty dropped ...................... test_a_checkpoint_of_another_run_is_refused[n_penalty]
  host orders vs key permutations dropped  test_a_checkpoint_of_another_run_is_refused[order]
  evaluation data dropped ................ test_a_checkpoint_of_another_run_is_refused[evaluation data]
  training images not fingerprinted ...... test_a_checkpoint_of_another_run_is_refused[training images]
fit (nndl_jax/train.py)
  empty training data accepted ........... test_fit_refuses_empty_training_data
  a rule changes η of stopped nets ....... test_a_rule_never_changes_the_eta_of_a_net_that_stopped
  a diverged net also gets a stopped_at .. test_a_diverged_net_is_not_also_stopped_by_a_rule
  a dict compiler_options: TypeError ..... test_a_trainer_takes_compiler_options_as_a_dict
  NaN float targets accepted ............. test_fit_refuses_float_targets_that_are_not_finite
devices (nndl_jax/devices.py)
  Layout.put returns early on 2 devices .. test_two_devices_shard_the_nets_of_a_fit
checkpoint folders and writers (nndl_jax/files.py, experiments/store.py, experiments/driver.py)
  another user's live writer (files) ..... test_a_part_file_of_another_users_live_writer_is_not_stale
  the store's temporaries, a live writer . test_a_results_temporary_of_another_users_live_writer_is_kept
  the owner lock taken shared ............ test_a_claimed_row_shows_its_live_owner_to_another_process
  the owner file not truncated ........... test_claiming_a_row_rewrites_its_owner_file_whole
  same-second checkpoint not stale ....... test_a_checkpoint_written_in_the_second_its_row_was_recorded_is_stale
  --only 6.8 misses 6.8a's checkpoint .... test_only_a_base_row_covers_its_variants_checkpoint
  removing 3.1 removes 3.10 .............. test_removing_a_rows_checkpoints_keeps_a_row_whose_id_extends_it
  removing 3.7 removes 3.7@book .......... test_removing_a_rows_checkpoints_keeps_another_jobs_folder_named_after_it
  a job's sub-runs left behind ........... test_a_finished_job_removes_its_sub_runs_not_the_book_replays_state
driver (experiments/driver.py)
  last epoch's line not printed .......... test_progress_prints_the_last_epoch_when_not_a_multiple_of_every
  --resume skips rows of other seeds ..... test_resume_reruns_a_job_recorded_with_other_seeds
  seed 2**32 - 1 refused ................. test_the_largest_seed_is_accepted_and_one_more_refused
  Ctrl-C's command keeps --restart ....... test_the_ctrl_c_resume_command_drops_restart
results store (experiments/store.py)
  a repeated row id accepted ............. test_a_results_file_with_a_repeated_row_id_is_refused
  a measured summary with runs: [] ....... test_a_measured_summary_without_runs_is_refused
  record without the folder lock ......... test_record_waits_for_the_folders_lock
  rows without a quick flag read as full . test_rows_without_their_own_quick_flag_take_the_files
merge (experiments/merge.py, experiments/parts.py)
  timings reported as conflicts .......... test_merge_accepts_a_row_whose_timings_differ
  complete when any part is .............. test_the_merged_file_is_complete_only_when_every_part_is
  part_record credits every unit to i .... test_part_record_names_the_part_of_every_unit
book replay and the book's façade
  cost divided by the measured value ..... test_a_replayed_cost_is_compared_relative_to_the_books
  replaced item outside the 32-image sample  test_device_arrays_sees_an_item_replaced_outside_its_sample

Every fault above, injected alone, fails its test; with all the faults of
an area injected at once, the covering test files (test_resume, test_core,
test_cli, test_hardening, test_report, test_book_replay, test_network,
test_devices, test_sharding, test_parts) still pass: these tests are the
ones that notice.

Twelve more faults of the same kinds, made for this file (a process's own
writes counted stale, the labels left out of the data's fingerprint, the first
progress line or Ctrl-C's --resume dropped, the owner file left behind,
part_record's rows emptied, accuracies compared with a tolerance, the merged
wall time the shortest part's, an in-place edit in device_arrays' sample
missed, a checkpoint stale when any of its rows is recorded): 10 killed (the
"Also" notes in the docstrings). Not killed: a stopped net's rule state still
updated (not visible in ``fit``'s results), and --resume ignoring the quick
flag (``store.out_problem`` keeps quick and full rows apart, so no command reaches it).

Internal functions used (no command shows what they do without training):
``checkpoints.claim`` and ``checkpoints.live_owner`` (the owner lock), ``checkpoints.checkpoint_dir``
and ``checkpoints.remove_checkpoints`` (planting and removing checkpoints). The rest
goes through public behaviour: ``train.fit``, ``driver.parse_args`` /
``run_jobs`` / ``main_entry`` / ``progress``, ``store.read_results`` / ``record`` /
``out_problem``, ``merge.main`` / ``merge.merge``, ``parts.part_record``.

A duplicate process id (the issue's last case) has no test here: the check is
not on this branch (the procs branch adds it with its own test).
"""
import datetime
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_resume import SIZES, toy_data

from experiments import book_replay, checkpoints, driver, merge, parts, progress, report, session, store
from nndl_jax import activations, costs, files, layers, network, train

REPO = Path(__file__).resolve().parents[1]


# --- a toy run of two nets (test_resume's data) ---------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    init, apply = layers.mlp(SIZES, activations.sigmoid)
    trainer = train.Trainer(apply, costs.cross_entropy, 8, penalty="l2")
    params, keys = train.from_seeds(init, (SIZES[0],), [1, 2])
    return trainer, params, keys


class Interrupted(Exception):
    pass


def stop_after_first_epoch(e, record):
    raise Interrupted


def toy_fit(toy, epochs=2, **kw):
    trainer, params, keys = toy
    args = dict(key=keys, eta=np.array([0.5, 2.0]), lmbda=0.1, training=toy_data(),
                evaluation={"evaluation": toy_data(30, seed=1)})
    args.update(kw)
    return train.fit(trainer, params, args.pop("training"), epochs, **args)


def reversed_order(e):
    return np.arange(40)[::-1].copy()


def other_images():
    x, y = toy_data()
    x = x.copy()
    x[0, 0] += 1.0   # the labels stay: only the images tell the sets apart
    return x, y


def other_labels():
    x, y = toy_data()
    return x, (y + 1) % 3   # the images stay


# --- checkpoint identity ------------------------------------------------------------------------

@pytest.mark.parametrize("change, setting", [
    (dict(eta=np.array([0.5, 1.0])), "eta"),
    (dict(n_penalty=7), "n_penalty"),
    (dict(orders=reversed_order), "order"),
    (dict(evaluation={"evaluation": toy_data(30, seed=2)}), "evaluation data"),
    (dict(training=other_images()), "training data"),
    (dict(training=other_labels()), "training data"),
], ids=["eta", "n_penalty", "order", "evaluation data", "training images", "training labels"])
def test_a_checkpoint_of_another_run_is_refused(toy, tmp_path, change, setting):
    """Faults: η, n_penalty, host orders vs key permutations, the evaluation
    data or the training images dropped from a checkpoint's identity (one at a
    time): a run that differs in it would resume silently. (Also: the training
    labels left out of the data's fingerprint.)"""
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        toy_fit(toy, checkpoint=ckpt, on_epoch=stop_after_first_epoch)
    with pytest.raises(train.CheckpointError) as refused:
        toy_fit(toy, checkpoint=ckpt, **change)
    assert any(name.split(".")[0] == setting for name, _, _ in refused.value.differences)
    assert toy_fit(toy, checkpoint=ckpt).history.resumed_epochs == 1   # the same run still resumes


# --- fit's checks -------------------------------------------------------------------------------

def test_fit_refuses_empty_training_data(toy):
    """Fault: ``fit`` with empty training data (the emptiness check removed)."""
    x, y = toy_data()
    with pytest.raises(ValueError, match="training data is empty"):
        toy_fit(toy, training=(x[:0], y[:0]))


def test_fit_refuses_float_targets_that_are_not_finite(toy):
    """Fault: NaN float targets accepted (the finiteness check of float y removed)."""
    x, y = toy_data()
    targets = np.eye(3, dtype=np.float32)[y]
    targets[5, 1] = np.nan
    with pytest.raises(ValueError, match="finite float targets"):
        toy_fit(toy, training=(x, targets), evaluation=None)


def scripted_rule(stop_net0_at_epoch0=True):
    """A rule that halves every net's η after each epoch and stops every net
    (or net 0 only) after epoch 0."""
    def update(state, record, eta):
        nets = np.arange(len(eta))
        done = (record["epoch"] == 0) & ((nets == 0) if stop_net0_at_epoch0 else np.ones(len(eta), bool))
        return state, np.asarray(eta) / 2, done
    return train.Rule(lambda k: {"seen": np.zeros(k)}, update, {"rule": "scripted", "metric": "evaluation_accuracy"})


def test_a_rule_never_changes_the_eta_of_a_net_that_stopped(toy):
    """Fault: a rule changing η of nets that already stopped (the ``active``
    mask of the rules' η dropped). Net 0 stops after epoch 0; its η is halved
    once then (it was still training) and never again."""
    out = toy_fit(toy, epochs=3, eta=np.array([1.0, 1.0]), rules=[scripted_rule()])
    eta = np.asarray(out.history.eta)
    np.testing.assert_array_equal(eta[:, 0], [1.0, 0.5, 0.5])
    np.testing.assert_array_equal(eta[:, 1], [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(out.history.stopped_at, [0, -1])


def test_a_diverged_net_is_not_also_stopped_by_a_rule(toy):
    """Fault: a diverged net also given a ``stopped_at`` (the ``~diverged`` of
    the rules' stop dropped). Net 1 starts with an infinite weight and diverges
    in epoch 0, when the rule stops every net."""
    trainer, params, keys = toy
    params = jax.tree_util.tree_map(jnp.copy, params)
    params[0]["w"] = params[0]["w"].at[1, 0, 0].set(jnp.inf)
    out = toy_fit((trainer, params, keys), epochs=2, rules=[scripted_rule(stop_net0_at_epoch0=False)])
    np.testing.assert_array_equal(out.history.diverged_at, [-1, 0])
    np.testing.assert_array_equal(out.history.stopped_at, [0, -1])


def test_a_trainer_takes_compiler_options_as_a_dict(toy):
    """Fault: a dict ``compiler_options`` raising TypeError (the options made
    hashable for the evaluation cache no longer)."""
    _, params, keys = toy
    init, apply = layers.mlp(SIZES, activations.sigmoid)
    trainer = train.Trainer(apply, costs.cross_entropy, 8, compiler_options={})
    out = toy_fit((trainer, params, keys), epochs=1)
    assert np.asarray(out.history.as_arrays()["evaluation_accuracy"]).shape == (1, 2)


# --- the K axis over two devices -----------------------------------------------------------------

TWO_DEVICES = textwrap.dedent("""
    import json
    from nndl_jax import devices
    devices.use_cpu_devices(2)
    import jax, numpy as np
    from nndl_jax import activations, costs, layers, train
    init, apply = layers.mlp([4, 6, 3], activations.sigmoid)
    params, keys = train.from_seeds(init, (4,), [1, 2])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    seen = []
    train.fit(train.Trainer(apply, costs.cross_entropy, 8, over_k="map"), params, (x, y), 1, key=keys, eta=0.5,
              on_epoch=lambda e, r: seen.append(len(r["params"][0]["w"].sharding.device_set)))
    put = devices.layout_for(2).put(np.zeros((2, 3), np.float32))
    print(json.dumps({"devices": len(jax.devices()), "fit": seen, "put": len(put.sharding.device_set)}))
""")


def test_two_devices_shard_the_nets_of_a_fit():
    """Fault: on 2 devices the nets not sharded at all (``devices.Layout.put``
    returning its tree as it is): a fit whose nets map one by one ("map", as conv
    nets do on the CPU) spreads them over the devices. A subprocess: the device
    count is fixed when JAX starts."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"devices": 2, "fit": [2], "put": 2}


# --- checkpoint folders, their owners and the temporary files of writers -------------------------

OTHER_USERS_PID, DEAD_PID = 4_000_001, 4_000_002


@pytest.fixture
def other_users_writer(monkeypatch):
    """``os.kill(pid, 0)`` as the system answers it for another user's live
    process (PermissionError) and for a process that is gone (the tests run as root,
    who may signal every process, so the answer is made here)."""
    def kill(pid, sig):
        if pid == OTHER_USERS_PID:
            raise PermissionError(1, "Operation not permitted")
        raise ProcessLookupError(3, "No such process")
    monkeypatch.setattr(os, "kill", kill)


def test_a_part_file_of_another_users_live_writer_is_not_stale(tmp_path, other_users_writer):
    """Fault: ``files._pid_alive`` counting another user's live writer as dead
    (PermissionError read as "no such process"): its half-written file would be removed under it.
    (Also: this process's own writes counted as stale.)"""
    (tmp_path / f".state.npz.{os.getpid()}.1a2b3c4d.part").write_bytes(b"being written")
    live = tmp_path / f".state.npz.{OTHER_USERS_PID}.1a2b3c4d.part"
    dead = tmp_path / f".state.npz.{DEAD_PID}.1a2b3c4d.part"
    for p in (live, dead):
        p.write_bytes(b"half")
    assert files.stale_parts(tmp_path) == [dead]
    assert files.remove_stale_parts(tmp_path) == 1 and live.exists() and not dead.exists()
    assert (tmp_path / f".state.npz.{os.getpid()}.1a2b3c4d.part").exists()


def test_a_results_temporary_of_another_users_live_writer_is_kept(tmp_path, other_users_writer):
    """Fault: the results store clearing interrupted writes with a check of its
    own that counts another user's live writer as dead (``store.record`` goes
    through ``files.remove_stale_parts``, the one home). A dead writer's
    temporary file, also in the ``.<name>.<pid>.tmp`` form earlier versions
    wrote, is removed."""
    live = tmp_path / f".results.json.{OTHER_USERS_PID}.1a2b3c4d.part"
    dead = [tmp_path / f".results.json.{DEAD_PID}.tmp", tmp_path / f".results.json.{DEAD_PID}.1a2b3c4d.part"]
    for p in (live, *dead):
        p.write_bytes(b"half")
    store.record(record_args(tmp_path), [{"id": "a", "experiment": "a", "unit": "%", "book": None,
                                           "measured": 1.0}])
    assert live.exists() and not any(p.exists() for p in dead)
    assert [r["id"] for r in store.read_results(tmp_path)["rows"]] == ["a"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A user cache of the test's own (the checkpoints live there)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def parse(chapter, out, *argv, row_ids=("5.1", "5.2"), run_session=None):
    return driver.parse_args(chapter, "", ["--out", str(out), *argv], row_ids=list(row_ids), run_session=run_session)


def plant_checkpoint(args, job_id, rows, mtime=None, group=None):
    """A saved checkpoint of ``job_id`` whose owner is gone (``group``: the job
    its owner file names; None: an owner file of before owners named it)."""
    folder = checkpoints.checkpoint_dir(args, job_id)
    folder.mkdir(parents=True)
    (folder / checkpoints.CHECKPOINT_FILE).write_bytes(b"saved state")
    (folder / checkpoints.OWNER_FILE).write_text(json.dumps({"pid": DEAD_PID, "rows": rows}
                                                            | ({"job": group} if group else {})))
    if mtime is not None:
        os.utime(folder / checkpoints.CHECKPOINT_FILE, (mtime, mtime))
    return folder


def write_results(out, rows, *, chapter="chap5", quick=False, **top):
    """A results.json as a run writes it, with ``rows`` ({id: extra keys})."""
    results = {"chapter": chapter, "quick": quick, "runs": [], **top,
               "rows": [{"id": rid, "experiment": rid, "unit": "%", "book": None, "measured": 1.0, **extra}
                        for rid, extra in rows.items()]}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / store.RESULTS).write_text(json.dumps(results))


def test_a_claimed_row_shows_its_live_owner_to_another_process(tmp_path, cache):
    """Fault: the owner lock taken shared (``LOCK_SH`` in ``checkpoints.claim``): a
    second process could take it too, so the live owner is invisible to it.
    Uses the private-ish ``checkpoints.claim`` and ``checkpoints.live_owner``."""
    args = parse("chap5", tmp_path / "out")
    folder = checkpoints.claim(args, "5.1", ["5.1"])
    try:
        probe = "import sys; from experiments import checkpoints; print(checkpoints.live_owner(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", probe, str(folder)], capture_output=True, text=True,
                              timeout=120, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == str(os.getpid())
    finally:
        checkpoints.remove_checkpoints(args, "5.1")


def test_claiming_a_row_rewrites_its_owner_file_whole(tmp_path, cache):
    """Fault: the owner file not truncated before it is rewritten: a longer
    earlier owner's tail would be left after the new JSON."""
    args = parse("chap5", tmp_path / "out")
    folder = checkpoints.checkpoint_dir(args, "5.1")
    folder.mkdir(parents=True)
    (folder / checkpoints.OWNER_FILE).write_text(json.dumps({"pid": DEAD_PID, "rows": ["5.1"] * 50, "out": "x" * 500}))
    try:
        checkpoints.claim(args, "5.1", ["5.1"])
        owner = json.loads((folder / checkpoints.OWNER_FILE).read_text())
        assert owner == {"pid": os.getpid(), "rows": ["5.1"], "out": str(args.out), "job": "5.1"}
    finally:
        checkpoints.remove_checkpoints(args, "5.1")


def test_a_checkpoint_written_in_the_second_its_row_was_recorded_is_stale(tmp_path, cache, capsys):
    """Fault: a checkpoint from the same second as its row not stale (``>``
    for ``>=``): a run that recorded its row and was stopped before removing
    the checkpoint would block the next command."""
    out = tmp_path / "out"
    second = int(time.time()) - 100
    finished = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).isoformat(timespec="seconds")
    write_results(out, {"5.1": {"finished": finished}})
    folder = plant_checkpoint(parse("chap5", out), "5.1", ["5.1"], mtime=second + 0.6)
    parse("chap5", out)   # no --resume, no --restart: refused unless the checkpoint is stale
    assert not folder.exists()
    assert "removed the checkpoint of 5.1, whose rows were recorded since" in capsys.readouterr().out


def test_only_a_base_row_covers_its_variants_checkpoint(tmp_path, cache):
    """Fault: ``--only 6.8`` not covering 6.8a's checkpoint: the unfinished
    6.8a would be neither continued nor named."""
    ids = ("6.8", "6.8a", "6.8b")
    args = parse("chap6", tmp_path / "out", row_ids=ids)
    plant_checkpoint(args, "6.8a", ["6.8a"])
    with pytest.raises(session.Refusal, match="rows 6.8a of an interrupted run"):
        parse("chap6", tmp_path / "out", "--only", "6.8", row_ids=ids)


def test_removing_a_rows_checkpoints_keeps_a_row_whose_id_extends_it(tmp_path, cache):
    """Fault: removing 3.1's checkpoints removing 3.10's (a glob on the id's prefix)."""
    args = parse("chap3", tmp_path / "out", row_ids=("3.1", "3.10"))
    mine, sub = plant_checkpoint(args, "3.1", ["3.1"]), plant_checkpoint(args, "3.1@abc", ["3.1"])
    other = plant_checkpoint(args, "3.10", ["3.10"])
    checkpoints.remove_checkpoints(args, "3.1")
    assert not mine.exists() and not sub.exists()
    assert (other / checkpoints.CHECKPOINT_FILE).read_bytes() == b"saved state"


@pytest.mark.parametrize("named", [True, False], ids=["owner-names-its-job", "owner-of-before"])
def test_removing_a_rows_checkpoints_keeps_another_jobs_folder_named_after_it(tmp_path, cache, named):
    """Fault: a plain ``--only 3.7 --resume``, once 3.7 is recorded, removing the
    saved state of an interrupted book replay of 3.7 (``3.7@book``, another
    job, not a sub-run of 3.7); 3.18's removal keeping the replay's nets
    (``3.18@book@0.025``) too, and the replay's own removal taking them."""
    args = parse("chap3", tmp_path / "out", row_ids=("3.7", "3.18"))
    def plant(job_id, rows, group):
        return plant_checkpoint(args, job_id, rows, group=group if named else None)
    mine, sub = plant("3.7", ["3.7"], "3.7"), plant("3.7@0.25", ["3.7"], "3.7")
    replay = plant("3.7@book", ["3.7@book"], "3.7@book")
    replay_net = plant("3.18@book@0.025", ["3.18a@book", "3.18b@book", "3.18c@book"], "3.18@book")
    checkpoints.remove_checkpoints(args, "3.7")
    checkpoints.remove_checkpoints(args, "3.18")
    assert not mine.exists() and not sub.exists()
    for kept in (replay, replay_net):
        assert (kept / checkpoints.CHECKPOINT_FILE).read_bytes() == b"saved state"
    checkpoints.remove_checkpoints(args, "3.18@book")
    assert not replay_net.exists() and replay.exists()


def test_a_finished_job_removes_its_sub_runs_not_the_book_replays_state(tmp_path, cache):
    """Through the row driver: job 3.7 saves a sub-run (``3.7@large``, its owner
    naming job 3.7) and, once recorded, removes it, leaving ``3.7@book``."""
    args = parse("chap3", tmp_path / "out", row_ids=("3.7",))
    replay = plant_checkpoint(args, "3.7@book", ["3.7@book"], group="3.7@book")
    seen = []

    def run(a):
        ckpt = checkpoints.row_checkpoint(a, "3.7@large", {"net": "large"})
        seen.append(json.loads((ckpt.path.parent / checkpoints.OWNER_FILE).read_text())["job"])
        ckpt.path.write_bytes(b"state")
        return [report.row("3.7", "a row", None, 1.0)]
    driver.run_jobs(args, [driver.Job("3.7", ["3.7"], run)])
    assert seen == ["3.7"] and not checkpoints.checkpoint_dir(args, "3.7@large").exists()
    assert (replay / checkpoints.CHECKPOINT_FILE).read_bytes() == b"saved state"
    assert [r["id"] for r in store.read_results(tmp_path / "out")["rows"]] == ["3.7"]


# --- the row driver: progress, --resume, seeds, Ctrl-C ------------------------------------------

def test_progress_prints_the_last_epoch_when_not_a_multiple_of_every(capsys):
    """Fault: the last epoch's progress line not printed when its number is not
    a multiple of ``every``."""
    on_epoch = progress.progress("r", 5, lambda record: "shown", every=2)
    for e in range(5):
        on_epoch(e, {"events": []})
    lines = [line for line in capsys.readouterr().out.splitlines() if "] Epoch " in line]
    printed = [line.split("] Epoch ")[1].split(":")[0] for line in lines]
    assert printed == ["0 (1 of 5)", "1 (2 of 5)", "3 (4 of 5)", "4 (5 of 5)"]


def test_resume_reruns_a_job_recorded_with_other_seeds(tmp_path, cache):
    """Fault: ``--resume`` skipping rows recorded with other seeds (the seeds
    left out of the recorded-row match)."""
    out = tmp_path / "out"
    write_results(out, {"5.1": {"seeds": [12345678], "x64": False, "quick": False}})
    ran = []
    job = driver.Job("5.1", ["5.1"], lambda a: ran.append(a.seeds) or
                     [{"id": "5.1", "experiment": "5.1", "unit": "%", "book": None, "measured": 2.0}])
    driver.run_jobs(parse("chap5", out, "--resume", "--seeds", "1"), [job])
    assert ran == []                          # recorded with these seeds: skipped
    driver.run_jobs(parse("chap5", out, "--resume", "--seeds", "2"), [job])
    assert ran == [2]                         # recorded with other seeds: run again
    assert store.read_results(out)["rows"][0]["seeds"] == [12345678, 12345679]


def test_the_largest_seed_is_accepted_and_one_more_refused(capsys):
    """Fault: seed 2**32 - 1 refused (an off-by-one in the command line's seed check)."""
    assert driver.chapter_args("chap1", ["--seed", str(2 ** 32 - 1), "--seeds", "1"]).seed == 2 ** 32 - 1
    with pytest.raises(SystemExit):
        driver.chapter_args("chap1", ["--seed", str(2 ** 32 - 1), "--seeds", "2"])
    assert "2**32 - 1" in capsys.readouterr().err


def test_the_ctrl_c_resume_command_drops_restart(tmp_path, cache, capsys):
    """Fault: the command Ctrl-C's note offers keeping ``--restart`` (which
    would discard what the interrupted run saved)."""
    def main(argv, run_session=None):
        parse("chap5", tmp_path / "out", *argv, run_session=run_session)
        raise KeyboardInterrupt
    assert session.main_entry(main, ["--restart", "--seeds", "2"]) == 130
    command = [line for line in capsys.readouterr().err.splitlines() if line.startswith("resume with: ")]
    assert len(command) == 1 and command[0].endswith("--resume") and "--seeds 2" in command[0]
    assert "--restart" not in command[0]


# --- the results store --------------------------------------------------------------------------

def test_a_results_file_with_a_repeated_row_id_is_refused(tmp_path):
    """Fault: the results store accepting a repeated row id."""
    (tmp_path / store.RESULTS).write_text(json.dumps({"rows": [
        {"id": "a", "experiment": "a", "unit": "%", "measured": 1.0},
        {"id": "a", "experiment": "a", "unit": "%", "measured": 2.0}]}))
    with pytest.raises(store.ResultsError, match="repeats an id"):
        store.read_results(tmp_path)


def test_a_measured_summary_without_runs_is_refused(tmp_path):
    """Fault: the results store accepting a measured summary with ``runs: []``."""
    write_results(tmp_path, {"a": {"measured": {"mean": 1.0, "std": 0.0, "runs": []}}})
    with pytest.raises(store.ResultsError, match="without a list of numbers in 'runs'"):
        store.read_results(tmp_path)


def record_args(out):
    return type("Args", (), dict(out=out, quick=False, x64=False, run_id="run 1", chapter="chapX", argv=[],
                                 seed=1, seeds=1, started=time.time()))()


def test_record_waits_for_the_folders_lock(tmp_path):
    """Fault: ``store.record`` without the folder lock (two runs into one folder
    could each drop the other's rows). While the test holds the lock, record
    writes nothing; once it is released, the row is recorded."""
    import fcntl
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = []
    row = {"id": "a", "experiment": "a", "unit": "%", "book": None, "measured": 1.0}
    writer = threading.Thread(target=lambda: done.append(store.record(record_args(out), [row])), daemon=True)
    try:
        writer.start()
        deadline = time.time() + 2.0
        while time.time() < deadline and not (out / store.RESULTS).exists():
            time.sleep(0.05)
        assert not (out / store.RESULTS).exists() and not done
    finally:
        os.close(fd)   # releases the lock
    writer.join(timeout=120)
    assert done and [r["id"] for r in store.read_results(out)["rows"]] == ["a"]


def test_rows_without_their_own_quick_flag_take_the_files(tmp_path):
    """Fault: rows without their own quick flag read as full (the file's
    ``quick`` not used for them): a --quick run into a --quick folder refused."""
    write_results(tmp_path, {"a": {}}, chapter="chapX", quick=True)
    assert store.out_problem(tmp_path, True, "chapX") is None
    assert "holds --quick results" in store.out_problem(tmp_path, False, "chapX")


# --- merge and the parts' records -----------------------------------------------------------------

def write_part(folder, rows, *, complete=True, wall=1.0):
    """A part's results: ``rows`` {id: extra keys}, made by one run of the same settings as every part."""
    run = {"id": f"run {folder.name}", "chapter": "chapX", "argv": ["--quick", "--out", str(folder)],
           "quick": True, "x64": False, "seeds": [1], "wall_seconds": wall, "complete": complete,
           "environment": {}, "code": {"version": "0.1.0", "commit": "abc"}}
    results = {"chapter": "chapX", "quick": True, "x64": False, "seeds": [1], "wall_seconds": wall,
               "complete": complete, "environment": {}, "runs": [run],
               "rows": [{"id": rid, "experiment": rid, "unit": "%", "book": None, "measured": 1.0, "quick": True,
                         "run": run["id"], **extra} for rid, extra in rows.items()]}
    store.write_json(folder / store.RESULTS, results)
    return folder


def timings(k):
    return {"seconds": 10.0 * k, "earlier_seconds": 3.0 * k, "untimed_epochs": k,
            "finished": f"2026-12-0{k}T00:00:00+00:00"}


def test_merge_accepts_a_row_whose_timings_differ(tmp_path):
    """Fault: rows whose timings differ (seconds, earlier_seconds,
    untimed_epochs, finished) reported as conflicts by ``nndl-jax merge``.
    (Also: the merged wall time not the longest part's.)"""
    p1 = write_part(tmp_path / "p1", {"a": timings(1)}, wall=5.0)
    p2 = write_part(tmp_path / "p2", {"a": timings(2), "b": {}}, wall=3.0)
    assert merge.main([str(p1), str(p2), "--out", str(tmp_path / "out")]) == 0
    merged = store.read_results(tmp_path / "out" / "chapX")
    assert [r["id"] for r in merged["rows"]] == ["a", "b"] and merged["wall_seconds"] == 5.0


@pytest.mark.parametrize("second_complete", [False, True])
def test_the_merged_file_is_complete_only_when_every_part_is(tmp_path, second_complete):
    """Fault: the merged file marked complete when any part is (``any`` for ``all``)."""
    p1 = write_part(tmp_path / "p1", {"a": {}})
    p2 = write_part(tmp_path / "p2", {"b": {}}, complete=second_complete)
    merge.merge([p1, p2], tmp_path / "out")
    assert store.read_results(tmp_path / "out" / "chapX")["complete"] is second_complete


def test_part_record_names_the_part_of_every_unit():
    """Fault: ``parts.part_record`` crediting every unit to this part (so
    ``merge`` could not say which part lacks a row)."""
    units = [parts.Unit("chapX", f"j{i}", (f"r{i}",), float(s), True, i) for i, s in enumerate([5, 4, 3, 2, 1])]
    plan = parts.plan(units, 2)
    assert all(plan)
    for i in (1, 2):
        planned = parts.part_record(plan, i, "chapX")["planned"]
        assert {job: p["part"] for job, p in planned.items()} == {u.job: k for k, p in enumerate(plan, 1)
                                                                  for u in p}
        assert {job: p["rows"] for job, p in planned.items()} == {u.job: list(u.rows) for u in units}


# --- the book replay and the book's façade --------------------------------------------------------

def test_a_replayed_cost_is_compared_relative_to_the_books():
    """Fault: the book-replay cost comparison divided by the measured value instead of the book's."""
    match = book_replay.curve_match([2.0, 1.0], [1.0, 4.0], "cost")
    assert match["largest_difference"] == 1.0       # |2 - 1| / 1 and |1 - 4| / 4
    assert match["first_difference"] == 1 and match["equal"] == 0
    near = book_replay.curve_match([1.0], [1.0 + book_replay.COST_RTOL * 0.9], "cost")
    assert near["equal"] == 1
    counts = book_replay.curve_match([9000, 9001], [9000, 9002], "accuracy")   # counts: equal means equal
    assert (counts["equal"], counts["first_difference"], counts["largest_difference"]) == (1, 2, 1.0)


def test_device_arrays_sees_an_item_replaced_outside_its_sample():
    """Fault: ``network.device_arrays`` missing a replaced item outside its
    32-image sample (the item-by-item identity check dropped): the old arrays reused.
    (Also: an image edited in place inside the sample not noticed.)"""
    rng = np.random.default_rng(0)
    pairs = [(rng.random((4, 1)).astype(np.float32), int(rng.integers(3))) for _ in range(100)]
    first = network.device_arrays(pairs, n_inputs=4, n_classes=3)
    sampled = set(np.linspace(0, 99, 32).astype(int).tolist())
    i = min(set(range(100)) - sampled)
    pairs[i] = (pairs[i][0] + 1.0, pairs[i][1])
    again = network.device_arrays(pairs, n_inputs=4, n_classes=3)
    np.testing.assert_array_equal(np.asarray(again.x[i]), pairs[i][0].ravel())
    np.testing.assert_array_equal(np.asarray(first.x[i]) + 1.0, np.asarray(again.x[i]))
    pairs[0][0][0, 0] += 1.0   # edited in place, in the sample (image 0 always is): seen too
    edited = network.device_arrays(pairs, n_inputs=4, n_classes=3)
    assert float(edited.x[0, 0]) == float(pairs[0][0][0, 0])


def test_a_checkpoint_with_a_row_not_recorded_since_is_kept(tmp_path, cache):
    """Not a listed fault, the other side of the same-second test: a checkpoint
    of two rows of which only one was recorded since is not stale (``any`` for ``all``)."""
    out = tmp_path / "out"
    second = int(time.time()) - 100
    finished = datetime.datetime.fromtimestamp(second, datetime.timezone.utc).isoformat(timespec="seconds")
    write_results(out, {"5.1": {"finished": finished}})
    folder = plant_checkpoint(parse("chap5", out), "5.1+5.2", ["5.1", "5.2"], mtime=second)
    with pytest.raises(session.Refusal, match=r"rows 5\.1\+5\.2 of an interrupted run"):
        parse("chap5", out)
    assert (folder / checkpoints.CHECKPOINT_FILE).exists()
