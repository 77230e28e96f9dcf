"""train.fit's checkpoints: an interrupted run resumed from its checkpoint ends
bit-identical to an uninterrupted one; a checkpoint of another run, or an
unreadable one, is refused; a diverging net is stopped and reported."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import activations, costs, layers, train

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


def test_a_resumed_run_keeps_the_time_of_its_earlier_epochs(toy, tmp_path):
    """history.seconds holds every epoch's wall time, the restored epochs' too
    (from the checkpoint), and resumed_epochs says how many were restored; a
    checkpoint written before epochs were timed restores them as NaN."""
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy"})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(1))
    saved = np.load(ckpt.path)["epoch_seconds"]
    assert saved.shape == (2,) and np.all(saved > 0)
    resumed = run(toy, ckpt)
    assert resumed.history.resumed_epochs == 2
    np.testing.assert_array_equal(resumed.history.seconds[:2], saved)
    assert len(resumed.history.seconds) == 3 and resumed.history.seconds[2] > 0
    assert run(toy).history.resumed_epochs == 0

    old = tmp_path / "old.npz"  # the same checkpoint without the epoch times, as older code wrote it
    with np.load(ckpt.path) as f:
        np.savez(old, **{name: f[name] for name in f.files if name != "epoch_seconds"})
    ckpt_old = train.Checkpoint(old, {"row": "toy"})
    restored = run(toy, ckpt_old, epochs=3)
    assert restored.history.resumed_epochs == 3 and np.all(np.isnan(restored.history.seconds))


def test_a_checkpoint_of_another_run_is_refused_and_left_intact(toy, tmp_path):
    ckpt = train.Checkpoint(tmp_path / "row.npz", {"row": "toy", "seeds": [1, 2]})
    with pytest.raises(Interrupted):
        run(toy, ckpt, on_epoch=interrupt_after(0))
    before = ckpt.path.read_bytes()
    for other, message in [
        (dict(checkpoint=train.Checkpoint(ckpt.path, {"row": "toy", "seeds": [1, 3]})), "seeds"),
        (dict(checkpoint=ckpt, lmbda=0.2), "fit"),
        (dict(checkpoint=ckpt, epochs=4), "fit"),
    ]:
        with pytest.raises(train.CheckpointError, match=f"belongs to another run.*{message}"):
            run(toy, **other)
    assert ckpt.path.read_bytes() == before


def test_an_unreadable_checkpoint_is_a_clear_error_and_is_not_overwritten(toy, tmp_path):
    path = tmp_path / "row.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(train.CheckpointError, match="unreadable checkpoint.*--restart"):
        run(toy, train.Checkpoint(path, {}))
    assert path.read_bytes() == b"not a zip file"


def test_checkpoint_writes_are_atomic_and_leave_no_temporary_files(toy, tmp_path):
    ckpt = train.Checkpoint(tmp_path / "sub" / "row.npz", {"row": "toy"})
    run(toy, ckpt, epochs=2)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["row.npz"]
    with np.load(ckpt.path) as f:
        meta, epoch = json.loads(str(f["meta"])), int(f["epoch"])
    assert meta["row"] == "toy" and meta["fit"]["epochs"] == 2 and epoch == 1


def test_a_net_whose_params_become_infinite_is_stopped_and_reported_while_the_other_trains(toy, capsys):
    """Net 1 starts with one infinite weight: its first update turns it into NaNs."""
    trainer, params, keys, training, evaluation = toy
    params = jax.tree_util.tree_map(jnp.copy, params)
    params[0]["w"] = params[0]["w"].at[1, 0, 0].set(jnp.inf)
    out = train.fit(trainer, params, training, 3, key=keys, eta=jnp.array([0.5, 3.0]),
                    evaluation={"evaluation": evaluation})
    np.testing.assert_array_equal(out.history.diverged_at, [-1, 0])
    assert "net 1 diverged in epoch 0 (eta=3)" in capsys.readouterr().out
    assert np.all(np.isfinite(np.asarray(out.params[0]["w"][0])))
    assert not np.all(np.isfinite(np.asarray(out.params[0]["w"][1])))
    assert out.history.as_arrays()["evaluation_accuracy"].shape == (3, 2)   # net 0 kept training
