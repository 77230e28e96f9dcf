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
  another user's live writer (store) ..... test_a_results_temporary_of_another_users_live_writer_is_kept
  the owner lock taken shared ............ test_a_claimed_row_shows_its_live_owner_to_another_process
  the owner file not truncated ........... test_claiming_a_row_rewrites_its_owner_file_whole
  same-second checkpoint not stale ....... test_a_checkpoint_written_in_the_second_its_row_was_recorded_is_stale
  --only 6.8 misses 6.8a's checkpoint .... test_only_a_base_row_covers_its_variants_checkpoint
  removing 3.1 removes 3.10 .............. test_removing_a_rows_checkpoints_keeps_a_row_whose_id_extends_it
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

Private functions used: driver.claim and driver.live_owner (the owner lock:
no public command shows it without training), driver.recorded_job is not
used (run_jobs is). A duplicate process id (issue 31 item 14's last case) has
no test here: the check does not exist on this branch yet.
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

from experiments import book_replay, driver, merge, parts, store
from nndl_jax import activations, costs, files, layers, network, train

REPO = Path(__file__).resolve().parents[1]
SIZES = [4, 6, 3]


# --- a toy run of two nets --------------------------------------------------------------------

def toy_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


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


# --- checkpoint identity ------------------------------------------------------------------------

@pytest.mark.parametrize("change, setting", [
    (dict(eta=np.array([0.5, 1.0])), "eta"),
    (dict(n_penalty=7), "n_penalty"),
    (dict(orders=reversed_order), "order"),
    (dict(evaluation={"evaluation": toy_data(30, seed=2)}), "evaluation data"),
    (dict(training=other_images()), "training data"),
], ids=["eta", "n_penalty", "order", "evaluation data", "training images"])
def test_a_checkpoint_of_another_run_is_refused(toy, tmp_path, change, setting):
    """Faults: η, n_penalty, host orders vs key permutations, the evaluation
    data or the training images dropped from a checkpoint's identity (one at a
    time): a run that differs in it would resume silently."""
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
    train.fit(train.Trainer(apply, costs.cross_entropy, 8), params, (x, y), 1, key=keys, eta=0.5,
              on_epoch=lambda e, r: seen.append(len(r["params"][0]["w"].sharding.device_set)))
    put = devices.layout_for(2).put(np.zeros((2, 3), np.float32))
    print(json.dumps({"devices": len(jax.devices()), "fit": seen, "put": len(put.sharding.device_set)}))
""")


def test_two_devices_shard_the_nets_of_a_fit():
    """Fault: on 2 devices the nets not sharded at all (``devices.Layout.put``
    returning its tree as it is). A subprocess: the device count is fixed when JAX starts."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"devices": 2, "fit": [2], "put": 2}
