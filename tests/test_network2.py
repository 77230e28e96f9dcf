"""network2: the book's update rules (L2, L1, momentum) against the NumPy
reference, monitoring, early stopping, the schedule, printing, and the
book's JSON file format."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import backprop, costs, layers, network2, train
from nndl_jax.activations import sigmoid

SIZES = [6, 5, 4]


def toy_data(n, seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return (rng.random((n, sizes[0])).astype(np.float32),
            rng.integers(0, sizes[-1], n).astype(np.int32))


def one_hot(y, k):
    return np.eye(k)[y]


def np_params(seed=1, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=(a, b)), "b": rng.normal(size=b)} for a, b in zip(sizes[:-1], sizes[1:])]


def core_fit64(params, x, y, *, eta, lmbda, mini_batch_size, penalty, momentum=0.0, epochs=1):
    """Train with the core (train.fit) in float64, no shuffling."""
    _, apply = layers.mlp(SIZES, sigmoid)
    trainer = train.Trainer(apply, costs.cross_entropy, mini_batch_size, penalty=penalty,
                            momentum=momentum, shuffle=False)
    stacked = train.stack([[{k: jnp.asarray(v) for k, v in p.items()} for p in params]])
    out, _, _ = train.fit(trainer, stacked, (x.astype(np.float64), y), epochs,
                          key=jax.random.key(0), eta=eta, lmbda=lmbda)
    return [{k: np.asarray(v) for k, v in p.items()} for p in train.unstack(out)[0]]


# --- the update rules --------------------------------------------------------------

@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_regularized_update_matches_the_books_formula(penalty):
    """Two mini-batches of 4 from n = 8 examples: per step
    L2: w' = (1 − ηλ/n)w − η·mean_grad;  L1: w' = w − (ηλ/n)sign(w) − η·mean_grad;
    b' = b − η·mean_grad_b (biases not decayed). float64, tolerance 1e-10."""
    x, y = toy_data(8)
    eta, lmbda, n, m = 0.7, 3.0, 8, 4
    with jax.enable_x64(True):
        expected = np_params()
        X, Y = x.astype(np.float64), one_hot(y, SIZES[-1])
        for k in range(0, n, m):
            g = backprop.backprop_matrix(expected, X[k:k + m], Y[k:k + m], cost="cross_entropy")
            if penalty == "l2":
                expected = [{"w": (1 - eta * lmbda / n) * p["w"] - eta * q["w"], "b": p["b"] - eta * q["b"]}
                            for p, q in zip(expected, g)]
            else:
                expected = [{"w": p["w"] - (eta * lmbda / n) * np.sign(p["w"]) - eta * q["w"],
                             "b": p["b"] - eta * q["b"]} for p, q in zip(expected, g)]
        got = core_fit64(np_params(), x, y, eta=eta, lmbda=lmbda, mini_batch_size=m, penalty=penalty)
    for p, q in zip(got, expected):
        np.testing.assert_allclose(p["w"], q["w"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(p["b"], q["b"], rtol=0, atol=1e-10)


def test_momentum_matches_v_update_over_two_steps():
    """v → μv − η∇C, w → w + v (v starts at 0), two mini-batch steps, L2 in ∇C.
    float64, tolerance 1e-10."""
    x, y = toy_data(8)
    eta, lmbda, mu, n, m = 0.5, 1.0, 0.9, 8, 4
    with jax.enable_x64(True):
        w = np_params()
        v = [{"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])} for p in w]
        X, Y = x.astype(np.float64), one_hot(y, SIZES[-1])
        for k in range(0, n, m):
            g = backprop.backprop_matrix(w, X[k:k + m], Y[k:k + m], cost="cross_entropy")
            pen = backprop.penalty_grads(w, "l2", lmbda / n)
            v = [{key: mu * vi[key] - eta * (gi[key] + qi[key]) for key in ("w", "b")}
                 for vi, gi, qi in zip(v, g, pen)]
            w = [{key: p[key] + vi[key] for key in ("w", "b")} for p, vi in zip(w, v)]
        got = core_fit64(np_params(), x, y, eta=eta, lmbda=lmbda, mini_batch_size=m,
                         penalty="l2", momentum=mu)
    for p, q in zip(got, w):
        np.testing.assert_allclose(p["w"], q["w"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(p["b"], q["b"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("regularization", ["l2", "l1"])
def test_facade_sgd_matches_the_reference_epoch(regularization):
    """network2.Network.SGD (float32, no shuffle) against backprop.sgd_epoch
    (float64), one epoch of 3 mini-batches of 4 with a short last one of 2;
    tolerance 2e-5 (float32 rounding)."""
    x, y = toy_data(10, seed=3)
    net = network2.Network(SIZES, seed=4)
    start = [{"w": np.asarray(p["w"], np.float64), "b": np.asarray(p["b"], np.float64)} for p in net.params]
    net.SGD((x, y), 1, 4, 0.5, lmbda=2.0, regularization=regularization, shuffle=False)
    ref, _ = backprop.sgd_epoch(start, x.astype(np.float64), one_hot(y, 4), 0.5, 4,
                                cost="cross_entropy", penalty=regularization, c=2.0 / 10)
    for p, q in zip(net.params, ref):
        np.testing.assert_allclose(np.asarray(p["w"]), q["w"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(np.asarray(p["b"]), q["b"], rtol=0, atol=2e-5)


# --- costs -------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [network2.QuadraticCost, network2.CrossEntropyCost])
def test_book_cost_classes_agree_with_the_core(cls):
    rng = np.random.default_rng(0)
    z = rng.normal(size=4)
    y = one_hot(np.array(2), 4)
    a = 1 / (1 + np.exp(-z))
    with jax.enable_x64(True):
        assert abs(cls.fn(a, y) - float(cls.core.fn(jnp.asarray(z), jnp.asarray(y)))) < 1e-12
        np.testing.assert_allclose(cls.delta(z, a, y), np.asarray(cls.core.delta(jnp.asarray(z), jnp.asarray(y))),
                                   atol=1e-12)


def test_cross_entropy_finite_for_saturated_outputs():
    """z = ±1000: a = σ(z) is exactly 0 or 1 in floating point; the core cost
    (from z) and its gradient stay finite, and so does the book's nan_to_num form."""
    z = jnp.array([1000.0, -1000.0, 1000.0, -1000.0])
    y = jnp.array([1.0, 0.0, 0.0, 1.0])  # two right (cost 0), two wrong (cost 1000 each)
    c = costs.cross_entropy.fn(z, y)
    g = jax.grad(costs.cross_entropy.fn)(z, y)
    assert np.isfinite(float(c)) and abs(float(c) - 2000.0) < 1e-3
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(g), [0.0, 0.0, 1.0, -1.0])
    a = np.array([1.0, 0.0])
    assert network2.CrossEntropyCost.fn(a, np.array([1.0, 0.0])) == 0.0
    net = network2.Network([3, 2], seed=0)
    net.params = [{"w": jnp.full((3, 2), 1000.0), "b": jnp.zeros(2)}]
    assert np.isfinite(net.total_cost((np.ones((2, 3), np.float32), np.array([0, 1], np.int32)), 1.0))


# --- accuracy, total_cost, initializers ----------------------------------------------

def book_feedforward(net, x):
    a = x.T
    for w, b in zip(net.weights, net.biases):
        a = 1 / (1 + np.exp(-(w.astype(np.float64) @ a + b)))
    return a.T


def test_total_cost_and_accuracy_match_numpy():
    x, y = toy_data(50, seed=5)
    net = network2.Network(SIZES, seed=6)
    lmbda = 3.0
    a = book_feedforward(net, x.astype(np.float64))
    cost = np.mean([network2.CrossEntropyCost.fn(ai, yi) for ai, yi in zip(a, one_hot(y, 4))])
    cost += 0.5 * (lmbda / len(x)) * sum(np.linalg.norm(w) ** 2 for w in net.weights)
    assert abs(net.total_cost((x, y), lmbda) - cost) < 1e-5 * abs(cost)
    assert net.accuracy((x, y)) == int(np.sum(np.argmax(a, axis=1) == y))
    # The book's layouts: one-hot pairs with convert=True, int labels with convert=False.
    pairs = [(xi.reshape(-1, 1), one_hot(yi, 4).reshape(-1, 1)) for xi, yi in zip(x, y)]
    assert net.accuracy(pairs, convert=True) == net.accuracy((x, y))
    assert abs(net.total_cost(pairs, lmbda) - cost) < 1e-5 * abs(cost)
    int_pairs = [(xi.reshape(-1, 1), int(yi)) for xi, yi in zip(x, y)]
    assert abs(net.total_cost(int_pairs, lmbda, convert=True) - cost) < 1e-5 * abs(cost)
    with pytest.raises(ValueError, match="convert"):
        net.accuracy(pairs, convert=False)
    with pytest.raises(ValueError, match="convert"):
        net.total_cost(pairs, lmbda, convert=True)


def test_initializers_follow_the_book_and_draw_afresh_each_call():
    """As the book's (which draws from NumPy's global generator): each call
    draws new weights and biases; the large ones are not a rescaled default
    draw. The same seed and the same calls replay the same weights."""
    net = network2.Network([400, 300, 10], seed=0)
    assert abs(np.std(net.weights[0]) - 1 / np.sqrt(400)) < 0.05 / np.sqrt(400)
    default_w, default_b = net.weights[0], net.biases[0]
    net.large_weight_initializer()
    large_w = net.weights[0]
    assert abs(np.std(large_w) - 1.0) < 0.05
    assert abs(np.std(net.biases[0]) - 1.0) < 0.2
    # a fresh draw: not the default weights times sqrt(n_in), nor the same biases
    assert abs(np.corrcoef(large_w.ravel(), default_w.ravel())[0, 1]) < 0.05
    assert not np.allclose(net.biases[0], default_b)
    net.default_weight_initializer()
    assert abs(np.std(net.weights[0]) - 1 / np.sqrt(400)) < 0.05 / np.sqrt(400)
    assert abs(np.corrcoef(net.weights[0].ravel(), default_w.ravel())[0, 1]) < 0.05
    twin = network2.Network([400, 300, 10], seed=0)
    twin.large_weight_initializer()
    np.testing.assert_array_equal(twin.weights[0], large_w)


# --- SGD: monitoring, printing, early stopping, schedule --------------------------------

def test_monitoring_lists_and_printing_match_the_book(capsys):
    x, y = toy_data(40, seed=7)
    ex, ey = toy_data(20, seed=8)
    net = network2.Network(SIZES, seed=0)
    ec, ea, tc, ta = net.SGD((x, y), 3, 10, 0.5, lmbda=1.0, evaluation_data=(ex, ey),
                             monitor_evaluation_cost=True, monitor_evaluation_accuracy=True,
                             monitor_training_cost=True, monitor_training_accuracy=True)
    assert [len(v) for v in (ec, ea, tc, ta)] == [3, 3, 3, 3]
    lines = [l for l in capsys.readouterr().out.splitlines() if l]
    assert len(lines) == 15
    for e in range(3):
        block = lines[5 * e:5 * e + 5]
        assert block[0] == f"Epoch {e} training complete"
        assert block[1] == f"Cost on training data: {tc[e]}"
        assert block[2] == f"Accuracy on training data: {ta[e]} / 40"
        assert block[3] == f"Cost on evaluation data: {ec[e]}"
        assert block[4] == f"Accuracy on evaluation data: {ea[e]} / 20"
    assert net.total_cost((x, y), 1.0) == pytest.approx(tc[-1], rel=1e-6)
    assert net.accuracy((ex, ey)) == ea[-1]
    ec, ea, tc, ta = net.SGD((x, y), 2, 10, 0.5, evaluation_data=(ex, ey), monitor_evaluation_accuracy=True)
    assert (len(ec), len(ea), len(tc), len(ta)) == (0, 2, 0, 0)
    out = capsys.readouterr().out
    assert "Cost" not in out and re.findall(r"Accuracy on evaluation data: \d+ / 20", out)


def frozen_run(capsys, **kw):
    """η so small that the weights cannot change in float32: the accuracy is
    constant, so only the first epoch is an improvement."""
    x, y = toy_data(30, seed=9)
    net = network2.Network(SIZES, seed=2)
    lists = net.SGD((x, y), 100, 10, 1e-12, evaluation_data=(x, y), monitor_evaluation_accuracy=True,
                    seed=5, **kw)
    assert lists[1][0] > 0 and len(set(lists[1])) == 1
    return net, lists, capsys.readouterr().out


@pytest.mark.parametrize("n", [1, 3])
def test_early_stopping_after_exactly_n_epochs_without_improvement(capsys, n):
    net, lists, out = frozen_run(capsys, early_stopping_n=n)
    assert len(lists[1]) == n + 1          # epoch 0 sets the best, then n without improvement
    assert net.stopped_at == n
    assert out.rstrip().endswith(f"Early-stopping: No accuracy change in last epochs: {n}")


def test_schedule_halves_eta_seven_times_then_stops(capsys):
    net, lists, out = frozen_run(capsys, schedule_n=2)
    eta0 = 1e-12
    expected = [eta0 / 2 ** max(0, (e - 1) // 2) for e in range(15)]
    assert len(lists[1]) == 15 and net.stopped_at == 14
    np.testing.assert_allclose(net.eta_history, expected, rtol=1e-6)
    assert "1/128" in out
    net2, lists2, _ = frozen_run(capsys, schedule_n=2)
    assert lists2 == lists and net2.eta_history == net.eta_history


def test_sgd_rejects_bad_arguments():
    x, y = toy_data(10)
    net = network2.Network(SIZES)
    with pytest.raises(ValueError, match="regularization"):
        net.SGD((x, y), 1, 5, 0.5, regularization="l3")
    with pytest.raises(ValueError, match="evaluation_data"):
        net.SGD((x, y), 1, 5, 0.5, early_stopping_n=3)
    with pytest.raises(ValueError, match="lmbda"):
        net.SGD((x, y), 1, 5, 0.5, lmbda=-1.0)
    with pytest.raises(ValueError, match="cost"):
        network2.Network(SIZES, cost="CrossEntropyCost")


# --- save and load ---------------------------------------------------------------------

def book_load(filename):
    """The book's network2.load, reimplemented with NumPy (returns the arrays)."""
    with open(filename) as f:
        data = json.load(f)
    weights = [np.array(w) for w in data["weights"]]
    biases = [np.array(b) for b in data["biases"]]
    return data["sizes"], data["cost"], weights, biases


def test_save_load_round_trip_and_the_books_reader(tmp_path):
    net = network2.Network(SIZES, seed=3)
    path = tmp_path / "net.json"
    net.save(path)
    back = network2.load(path)
    assert back.sizes == SIZES and back.cost is network2.CrossEntropyCost
    for a, b in zip(back.weights + back.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)
    sizes, cost, w, b = book_load(path)
    assert sizes == SIZES and cost == "CrossEntropyCost"
    assert [x.shape for x in w] == [(5, 6), (4, 5)] and [x.shape for x in b] == [(5, 1), (4, 1)]
    np.testing.assert_array_equal(w[0], net.weights[0])
    assert [p.name for p in tmp_path.iterdir()] == ["net.json"]  # no temporary file left


def test_a_file_written_by_the_book_loads(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [3, 2]
    weights, biases = [rng.normal(size=(2, 3))], [rng.normal(size=(2, 1))]
    data = {"sizes": sizes, "weights": [w.tolist() for w in weights],
            "biases": [b.tolist() for b in biases], "cost": "QuadraticCost"}
    path = tmp_path / "book.json"
    with open(path, "w") as f:
        json.dump(data, f)
    net = network2.load(path)
    assert net.cost is network2.QuadraticCost and net.sizes == sizes
    np.testing.assert_allclose(net.weights[0], weights[0], rtol=1e-6)
    x = np.array([[0.1], [0.5], [0.9]])
    np.testing.assert_allclose(net.feedforward(x), 1 / (1 + np.exp(-(weights[0] @ x + biases[0]))), rtol=1e-5)


def _good(tmp_path):
    network2.Network([3, 2], seed=0).save(tmp_path / "good.json")
    return json.loads((tmp_path / "good.json").read_text())


@pytest.mark.parametrize("case, match", [
    ("not_json", "not a JSON"),
    ("truncated", "not a JSON"),
    ("list", "JSON object"),
    ("missing_key", "missing keys"),
    ("unknown_cost", "unknown cost"),
    ("bad_sizes", "sizes"),
    ("wrong_shape", r"layer 0 has weights \(2, 2\)"),
    ("too_few_layers", "expected 1 weight"),
    ("ragged", "ragged"),
])
def test_load_rejects_bad_files(tmp_path, case, match):
    good = _good(tmp_path)
    text = json.dumps(good)
    bad = {"not_json": "hello", "truncated": text[:len(text) // 2], "list": "[1, 2]",
           "missing_key": json.dumps({k: v for k, v in good.items() if k != "biases"}),
           "unknown_cost": json.dumps(dict(good, cost="HingeCost")),
           "bad_sizes": json.dumps(dict(good, sizes=[3, -2])),
           "wrong_shape": json.dumps(dict(good, weights=[[[1.0, 2.0], [3.0, 4.0]]])),
           "too_few_layers": json.dumps(dict(good, weights=[])),
           "ragged": json.dumps(dict(good, weights=[[[1.0, 2.0, 3.0], [4.0]]]))}[case]
    path = tmp_path / "bad.json"
    path.write_text(bad)
    with pytest.raises(network2.NetworkFileError, match=match):
        network2.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        network2.load(tmp_path / "nope.json")


def test_save_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "net.json"
    network2.Network([3, 2], seed=0).save(path)
    before = path.read_text()

    def broken_dump(obj, f):
        f.write('{"sizes": [3, ')
        raise OSError("disk full")

    monkeypatch.setattr(network2.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        network2.Network([3, 2], seed=1).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.json"]
