"""A book-seed replay (experiments.book_replay: train.fit with the book's orders,
init and pixels, float64) computes what the book's network2 update computes,
step for step. The reference is a float64 NumPy run of the book's rule written
from the book: per-example backprop (``backprop.backprop_example``) summed over
the mini-batch in the mini-batch's order, then

    w ← (1 − ηλ/n)·w − (η/m)·Σ∇w,    b ← b − (η/m)·Σ∇b.

The two form their sums in other orders (jax.grad of the mean cost and an
optax step against the book's running sum), so they agree to rounding:
TOLERANCE, absolute, on weights and biases of order 1 after up to 200 steps
(measured: 4.4e-16 after 1 to 3 single steps, 2.8e-14 after 200 steps).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import book_replay
from nndl_jax import backprop, book_random, costs, layers, train
from nndl_jax.activations import sigmoid
from nndl_jax.data import Dataset

TOLERANCE = 1e-12
SIZES = [784, 30, 10]
ETA, LMBDA, M = 0.5, 5.0, 10


def book_rule_epochs(params, x, labels, orders, eta, lmbda, m):
    """The book's update_mini_batch in NumPy float64, epoch after epoch in
    ``orders``; the params after every epoch."""
    n = len(labels)
    targets = np.eye(10)[labels]
    after = []
    for order in orders:
        for k in range(0, n, m):
            batch = order[k:k + m]
            total = [{"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])} for p in params]
            for i in batch:  # the book's running sum, one example after another
                for t, g in zip(total, backprop.backprop_example(params, x[i], targets[i], "sigmoid",
                                                                  "cross_entropy")):
                    t["w"] = t["w"] + g["w"]
                    t["b"] = t["b"] + g["b"]
            params = [{"w": (1 - eta * (lmbda / n)) * p["w"] - (eta / len(batch)) * t["w"],
                       "b": p["b"] - (eta / len(batch)) * t["b"]} for p, t in zip(params, total)]
        after.append(params)
    return after


@pytest.mark.parametrize("n, epochs", [(10, 3), (1000, 2)])  # one step per epoch; 100 steps per epoch
def test_short_replay_equals_the_books_rule_in_numpy_step_for_step(mnist, n, epochs):
    training = Dataset(book_random.book_pixels(mnist.training.x[:n]), mnist.training.y[:n])
    params = book_random.network2_weights(book_random.BOOK_SEED, SIZES, large=True)
    orders = book_random.book_orders(book_random.BOOK_SEED, n, epochs)
    expected = book_rule_epochs(params, training.x.astype(np.float64), training.y, orders, ETA, LMBDA, M)
    seen = []
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        history, final, _ = book_replay.replay_fit(
            params, training, {"training": (training.x, training.y)}, epochs, ETA, LMBDA, orders,
            sizes=SIZES, label="test", on_epoch=lambda e, r: seen.append(jax.tree_util.tree_map(
                lambda a: np.asarray(a)[0], r["params"])))
    assert len(seen) == epochs
    for got, want in zip(seen, expected):
        for g, w in zip(got, want):
            assert g["w"].dtype == np.float64
            np.testing.assert_allclose(g["w"], w["w"], rtol=0, atol=TOLERANCE)
            np.testing.assert_allclose(g["b"], w["b"], rtol=0, atol=TOLERANCE)
    assert history["training_accuracy"].shape == (epochs,)


def test_replay_refuses_float32():
    training = Dataset(np.zeros((10, 784), np.float32), np.zeros(10, np.int32))
    params = book_random.network2_weights(0, SIZES)
    with pytest.raises(RuntimeError, match="float64"):
        book_replay.replay_fit(params, training, {}, 1, ETA, 0.0, book_random.book_orders(0, 10, 1),
                               sizes=SIZES, label="test")


def test_curve_match_counts_equal_epochs_and_the_first_difference():
    acc = book_replay.curve_match([5, 6, 8, 9], [5, 6, 7, 9], "accuracy")
    assert (acc["equal"], acc["epochs"], acc["first_difference"], acc["largest_difference"]) == (3, 4, 3, 1.0)
    cost = book_replay.curve_match([1.0, 2.0 * (1 + 1e-3)], [1.0 * (1 + 1e-6), 2.0], "cost")
    assert (cost["equal"], cost["first_difference"]) == (1, 2)
    exact = book_replay.curve_match([5, 6], [5, 6], "accuracy")
    assert book_replay.short_match([exact, exact]) == "book-exact replay: 2/2 epochs"
    assert book_replay.short_match([exact, acc], ("test accuracy", acc)) == \
        "book-seed replay: test accuracy 3/4 epochs equal"


def _toy(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def test_fit_with_orders_trains_in_the_given_order():
    """orders(e) = range(n) every epoch is the unshuffled trainer's run; a
    reversed order is another run (so the order is really used)."""
    x, y = _toy()
    init, apply = layers.mlp([6, 4, 3], sigmoid)
    params = train.stack([init(jax.random.key(1), (6,))[1]])
    kept = train.Trainer(apply, costs.cross_entropy, 5, penalty="l2", shuffle=False)
    shuffled = train.Trainer(apply, costs.cross_entropy, 5, penalty="l2")
    fit = lambda trainer, orders: train.fit(trainer, params, (x, y), 2, key=jax.random.key(2), eta=0.5,  # noqa: E731
                                            lmbda=0.1, orders=orders).params
    plain = fit(kept, None)
    in_order = fit(shuffled, lambda e: np.arange(len(y)))
    reversed_order = fit(shuffled, lambda e: np.arange(len(y))[::-1])
    same = lambda a, b: all(bool(jnp.array_equal(p, q)) for p, q in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                                      jax.tree_util.tree_leaves(b)))
    assert same(plain, in_order)
    assert not same(plain, reversed_order)


def test_report_rows_show_the_book_codes_seed_spread_and_each_replay_beside_its_row():
    from experiments import book_seeds
    chap3 = [dict(id="3.7", book=96.49, note="ours"), dict(id="3.8", book=97.92, note=""),
             dict(id="3.2", book=95.49, note="x")]
    replay = dict(id="3.7@book", beside="3.7", book_seed=12345678, test_peak=96.49, test_final=95.61,
                  replay={"evaluation_accuracy": {"equal": 29, "epochs": 30}})
    results = {"chap3": {"rows": chap3}, book_seeds.REPLAY_FOLDER: {"rows": [replay]}}
    shown = {r["id"]: r for r in book_seeds.report_rows("chap3", chap3, results)}
    assert "97.92%" in shown["3.8"]["book"] and "97.75 ± 0.07 [97.59, 97.85] over 24 seeds" in shown["3.8"]["book"]
    assert shown["3.7"]["note"].startswith("ours; book-seed replay (3.7@book, seed 12345678): test accuracy "
                                           "29/30 epochs equal")
    assert shown["3.2"] == chap3[2] and chap3[0]["note"] == "ours"      # other rows, and the inputs, unchanged
    assert book_seeds.report_rows("chap1", chap3, results) is chap3


@pytest.fixture
def x64_restored():
    """--book-seed switches JAX to float64 for the process; restore the setting."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def test_chap3_book_seed_records_a_replayed_row_in_float64(tmp_path, mnist_dir, x64_restored):
    """``--quick --book-seed S --only 3.7``: the first 3 epochs of fig/overfitting.py's
    λ = 5 run, recorded as 3.7@book with the seed and, where the book's curve is
    at hand, its test accuracy equal to the book's in all 3 epochs."""
    import json

    from experiments import chap3, report
    with jax.numpy_dtype_promotion("standard"):
        chap3.main(["--quick", "--book-seed", str(book_random.BOOK_SEED), "--only", "3.7",
                    "--out", str(tmp_path), "--data-dir", str(mnist_dir)])
    out = json.loads((tmp_path / "results.json").read_text())
    (row,) = out["rows"]
    assert (row["id"], row["book_seed"], row["x64"], row["seeds"]) == ("3.7@book", book_random.BOOK_SEED, True,
                                                                        [book_random.BOOK_SEED])
    assert len(row["curves"]["evaluation_accuracy"]) == 3
    book = report.book_curve("regularized_full")
    if book is None:
        assert row["replay"] is None
    else:
        assert row["curves"]["evaluation_accuracy"] == book[1][:3]
        assert row["replay"]["evaluation_accuracy"]["equal"] == 3


@pytest.mark.parametrize("seed, message", [("-1", "must lie in 0 .. 2**32 - 1"), (str(2 ** 32), "must lie in 0"),
                                           ("abc", "'abc' is not a whole number"), ("1.5", "not a whole number")])
def test_a_book_seed_outside_32_bits_or_not_a_number_is_refused_by_argparse_before_mnist_loads(
        tmp_path, capsys, monkeypatch, seed, message):
    from experiments import chap3
    monkeypatch.setattr(chap3, "load_mnist", lambda *a, **k: pytest.fail("loaded MNIST despite a bad --book-seed"))
    with pytest.raises(SystemExit) as e:
        chap3.main(["--quick", "--only", "3.7", "--book-seed", seed, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--book-seed" in err and message in err, err
    assert not (tmp_path / "out").exists()


class _Loaded(Exception):
    pass


def test_the_largest_book_seed_is_accepted_and_implies_float64(tmp_path, monkeypatch, x64_restored):
    from experiments import chap3
    monkeypatch.setattr(chap3, "load_mnist", lambda *a, **k: (_ for _ in ()).throw(_Loaded()))
    with pytest.raises(_Loaded):
        chap3.main(["--quick", "--only", "3.7", "--book-seed", str(2 ** 32 - 1), "--out", str(tmp_path)])
    assert jax.config.jax_enable_x64   # through the run's own --x64 setting


def test_rows_that_are_not_replayed_are_refused_with_the_list_of_those_that_are(tmp_path, monkeypatch,
                                                                               x64_restored):
    from experiments import chap3, session
    monkeypatch.setattr(chap3, "load_mnist", lambda *a, **k: pytest.fail("loaded MNIST for rows it cannot replay"))
    with pytest.raises(session.Refusal) as e:
        chap3.main(["--quick", "--only", "3.7", "3.1", "3.8", "--book-seed", "1", "--out", str(tmp_path)])
    message = str(e.value)
    assert "3.1 3.8 are not replayed" in message and " ".join(book_replay.SEEDED_ROWS) in message
    assert session.main_entry(chap3.main, ["--quick", "--only", "3.1", "--book-seed", "1", "--out",
                                          str(tmp_path)]) == 1
    assert not (tmp_path / "results.json").exists()


def test_replays_are_jobs_of_the_row_driver_one_per_script_run():
    """``--plan``/``--part`` and ``--resume`` see the replays as the driver's jobs, with their rows."""
    import argparse
    args = argparse.Namespace(book_seed=7, only=["3.7", "3.18", "3.10-100"], quick=False, chapter="chap3")
    jobs = book_replay.jobs(args, None)
    assert [(j.id, j.rows, j.seeds, j.settings) for j in jobs] == [
        ("3.7@book", ["3.7@book"], [7], {"book_seed": 7}),
        ("3.10-100@book", ["3.10-100@book"], [7], {"book_seed": 7}),
        ("3.18@book", ["3.18a@book", "3.18b@book", "3.18c@book"], [7], {"book_seed": 7})]


def test_plan_and_part_share_out_the_replays_as_the_drivers_jobs(tmp_path, capsys):
    """``--plan 2`` with --book-seed plans the replays (no training, no MNIST)."""
    from experiments import chap3
    with pytest.raises(SystemExit) as e:
        chap3.main(["--book-seed", "7", "--only", "3.7", "3.18", "3.14", "--plan", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "3 units over 2 parts" in out
    assert all(f"chap3 {j}@book" in out for j in ("3.7", "3.18", "3.14")) and "chap3 3.7 " not in out


def test_a_script_of_two_runs_resumes_where_it_stopped_and_gives_the_uninterrupted_rows(tmp_path, mnist_dir,
                                                                                       monkeypatch, capsys,
                                                                                       x64_restored):
    """fig/weight_initialization.py trains one net twice (default, then large
    weights, the streams continuing): stopped after the first epoch of the
    second run and resumed, the first run comes back whole from its checkpoint,
    the second continues from its epoch 1, and the row is the uninterrupted one's."""
    import json

    from experiments import chap3, progress
    argv = ["--quick", "--only", "3.10", "--book-seed", str(book_random.BOOK_SEED), "--data-dir", str(mnist_dir)]
    real_progress = progress.progress

    def stopping_in_the_second_run(label, epochs, show, **kw):
        printer = real_progress(label, epochs, show, **kw)

        def on_epoch(e, record):
            printer(e, record)
            if label.endswith("large"):
                raise KeyboardInterrupt   # after the epoch's checkpoint, as Ctrl-C would
        return on_epoch

    with jax.numpy_dtype_promotion("standard"):
        chap3.main(argv + ["--out", str(tmp_path / "whole")])
        monkeypatch.setattr(progress, "progress", stopping_in_the_second_run)
        with pytest.raises(KeyboardInterrupt):
            chap3.main(argv + ["--out", str(tmp_path / "stopped")])
        monkeypatch.setattr(progress, "progress", real_progress)
        capsys.readouterr()
        chap3.main(argv + ["--out", str(tmp_path / "stopped"), "--resume"])
    out = capsys.readouterr().out
    assert re.search(r"\[3\.10@book default\] resumed from .*3\.10@book@default.*: 3 of 3 epochs done", out)
    assert re.search(r"\[3\.10@book large\] resumed from .*3\.10@book@large.*: 1 of 3 epochs done", out)
    rows = [json.loads((tmp_path / f / "results.json").read_text())["rows"] for f in ("whole", "stopped")]
    assert [r["id"] for r in rows[1]] == ["3.10@book"] and len(rows[1][0]["curves"]["large"]) == 3
    for key in ("curves", "measured", "large_final", "replay"):
        assert rows[0][0][key] == rows[1][0][key], key


def test_a_replays_checkpoint_of_another_book_seed_is_refused_naming_the_seed_to_pass():
    from experiments import session
    from nndl_jax.checkpoint import CheckpointError
    text = session.checkpoint_refusal(CheckpointError("another run", "/c/3.7@book/state.npz",
                                                     [("book_seed", 12345678, 7)]))
    assert "book_seed: saved 12345678, this run 7 (pass --book-seed 12345678 to continue it)" in text
