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
    assert run(toy).history.resumed_epochs == 0


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
