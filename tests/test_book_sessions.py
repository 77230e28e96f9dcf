"""The book's sessions as the book writes them (issue 11), the façades'
bad-input errors (issue 10), and equivalence tests for faults the rest of
the suite would not see.

Each test runs the book's calls on a few hundred examples (or toy data).
Float64 comparisons run inside ``jax.enable_x64(True)`` and state their
tolerance.
"""
import functools
import gzip
import os
import pickle
import pickletools
import re
import stat

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nndl_jax import activations, backprop, costs, data, expand_mnist, layers, network, network2, network3, train
from nndl_jax.network3 import FullyConnectedLayer, SoftmaxLayer


def toy(n, seed=0, n_in=6, n_out=4):
    """``n`` random examples: x float32 [n, n_in] in [0, 1), int labels [n]."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, n_in), dtype=np.float32), rng.integers(0, n_out, n).astype(np.int32))


def book_pairs(x, y, n_out=4, one_hot=True):
    """The book's layout: (x (n_in, 1), y) pairs, y one-hot (n_out, 1) or an int."""
    return [(xi.reshape(-1, 1), np.eye(n_out)[yi].reshape(-1, 1) if one_hot else int(yi))
            for xi, yi in zip(x, y)]


def x64_labels():
    """Standard dtype promotion, for float64 runs that evaluate accuracy: under
    x64 the core compares int64 argmax with int32 labels, which the suite's
    strict promotion refuses (and NumPy-style promotion allows)."""
    return jax.numpy_dtype_promotion("standard")


def leaves(params):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(params)]


def same(a, b):
    return all(np.array_equal(p, q) for p, q in zip(leaves(a), leaves(b)))


def toy_net3(seed=None, p_dropout=0.0, mb=5):
    return network3.Network([FullyConnectedLayer(6, 5, p_dropout=p_dropout),
                             SoftmaxLayer(5, 4, p_dropout=p_dropout)], mb, seed=seed)


FACADES = {
    "network": lambda seed=None: network.Network([6, 5, 4], seed=seed),
    "network2": lambda seed=None: network2.Network([6, 5, 4], seed=seed),
    "network3": lambda seed=None: toy_net3(seed),
}


# --- 1. every new network is a fresh random network; seeds replay ------------------------

@pytest.mark.parametrize("facade", FACADES)
def test_each_new_network_is_fresh_and_its_seed_rebuilds_it(facade):
    """conv.py's ``for j in range(3): net = Network(...)`` gives three different
    networks; ``seed=net.seed`` gives the same one again."""
    make = FACADES[facade]
    nets = [make() for _ in range(3)]
    assert len({n.seed for n in nets}) == 3
    first = [leaves(n.params)[0] for n in nets]
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])
    assert same(make(seed=nets[1].seed).params, nets[1].params)


def test_the_chapter_1_session_gives_a_new_network_each_time_and_seed_replays_it(mnist, capsys):
    """The book's calls as written, on 300 training and 100 test images."""
    training_data = book_pairs(mnist.training.x[:300], mnist.training.y[:300], 10)
    test_data = book_pairs(mnist.test.x[:100], mnist.test.y[:100], 10, one_hot=False)
    net = network.Network([784, 30, 10])
    other = network.Network([784, 30, 10])
    assert not np.allclose(net.weights[0], other.weights[0])
    assert net.SGD(training_data, 2, 10, 3.0, test_data=test_data) is None
    printed = capsys.readouterr().out
    assert re.fullmatch(r"Epoch 0: \d+ / 100\nEpoch 1: \d+ / 100\n", printed)
    trained = net.weights + net.biases
    rebuilt = network.Network([784, 30, 10], seed=net.seed)
    net.params = rebuilt.params                                 # (training it here reuses the compiled epoch)
    net.SGD(training_data, 2, 10, 3.0, test_data=test_data, seed=net.last_sgd_seed)
    assert capsys.readouterr().out == printed
    for a, b in zip(trained, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)                    # bit for bit


def _run_twice(facade, x, y):
    """Train the same start twice without a seed, then replay the second run
    from its recorded seed: returns (run 1, run 2, replay of run 2)."""
    net = toy_net3(seed=1, p_dropout=0.5) if facade == "network3" else FACADES[facade](seed=1)
    start = net.params

    def run(**kw):
        net.params = start
        if facade == "network3":
            net.SGD((x, y), 2, 5, 0.5, (x, y), (x, y), **kw)
        else:
            net.SGD((x, y), 2, 5, 0.5, **kw)
        return net.params

    first, second = run(), run()
    return first, second, run(seed=net.last_sgd_seed)


@pytest.mark.parametrize("facade", FACADES)
def test_two_sgd_calls_without_a_seed_give_different_runs_and_the_recorded_seed_replays(facade, capsys):
    """Each call shuffles (network, network2) or drops out (network3, a
    dropout net in dataset order) with a fresh seed, kept as ``last_sgd_seed``."""
    x, y = toy(40, seed=2)
    first, second, replay = _run_twice(facade, x, y)
    assert not same(first, second)
    assert same(second, replay)


# --- 2. network3 as chapter 6 uses it ------------------------------------------------------

def test_size_counts_examples_in_the_books_layouts():
    x, y = toy(23)
    assert network3.size((x, y)) == 23
    assert network3.size(data.Dataset(x, y)) == 23
    assert network3.size(book_pairs(x, y)) == 23


def test_test_mb_predictions_are_the_predictions_of_the_ith_test_mini_batch(capsys):
    net = toy_net3(seed=0)
    with pytest.raises(RuntimeError, match="call net.SGD"):
        net.test_mb_predictions(0)
    x, y = toy(40, seed=1)
    tx, ty = toy(23, seed=2)                                     # 4 mini-batches of 5, 3 left over
    net.SGD((x, y), 1, 5, 0.5, (x, y), (tx, ty))
    assert net.test_mb_predictions(1).shape == (5,)
    np.testing.assert_array_equal(net.test_mb_predictions(1), net.predict(tx[5:10]))
    np.testing.assert_array_equal(np.concatenate([net.test_mb_predictions(i) for i in range(4)]),
                                  net.predict(tx[:20]))
    with pytest.raises(IndexError, match="4 mini-batches of 5"):
        net.test_mb_predictions(4)


def leaky(z):
    return jnp.maximum(z, 0.1 * z)


def test_a_custom_jax_activation_trains_and_saves_only_under_a_registered_name(tmp_path, monkeypatch, capsys):
    x, y = toy(40, seed=3)
    layer = FullyConnectedLayer(6, 5, activation_fn=leaky)
    net = network3.Network([layer, SoftmaxLayer(5, 4)], 5, seed=0)
    w0 = layer.w.copy()
    net.SGD((x, y), 2, 5, 0.5, (x, y), (x, y))
    assert not np.allclose(layer.w, w0)                                 # it trained
    # the net computes with the custom activation: softmax(leaky(x·w0 + b0)·w1 + b1)
    (w, b), (w1, b1) = (layer.params, net.layers[1].params)
    h = x.astype(np.float64) @ w + b
    np.testing.assert_array_equal(net.predict(x), np.argmax(np.maximum(h, 0.1 * h) @ w1 + b1, axis=1))
    with pytest.raises(ValueError, match="register"):
        net.save(tmp_path / "net.npz")
    assert list(tmp_path.iterdir()) == []                               # nothing written
    monkeypatch.setattr(activations, "_BY_NAME", dict(activations._BY_NAME))   # undone after the test
    activations.register("leaky", leaky)
    net.save(tmp_path / "net.npz")
    back = network3.load(tmp_path / "net.npz")
    assert back.layers[0].activation_fn is leaky
    np.testing.assert_array_equal(back.predict(x), net.predict(x))


def test_an_activation_jax_cannot_trace_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be traced by JAX"):
        FullyConnectedLayer(6, 5, activation_fn=lambda z: np.tanh(np.asarray(z)))
    with pytest.raises(ValueError, match="elementwise"):
        FullyConnectedLayer(6, 5, activation_fn=lambda z: jnp.sum(z))


def test_expand_mnist_writes_the_books_pickle_which_the_books_loader_reads(tmp_path):
    x, y = toy(30, seed=4, n_in=784, n_out=10)
    vx, vy = toy(7, seed=5, n_in=784, n_out=10)
    tx, ty = toy(9, seed=6, n_in=784, n_out=10)
    path = expand_mnist.write_book_pickle(tmp_path / "mnist_expanded.pkl.gz", (x, y), (vx, vy), (tx, ty))
    raw = gzip.open(path).read()
    # protocol 2, naming only what Python 2 and NumPy 1 (the book's setting) can import
    ops = list(pickletools.genops(raw))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    assert {a for op, a, _ in ops if op.name == "GLOBAL"} <= {
        "numpy.core.multiarray _reconstruct", "numpy.core.multiarray scalar", "numpy ndarray",
        "numpy dtype", "_codecs encode"}
    # the book's load_data_shared, in its Python 3 form
    training, validation, test = pickle.loads(raw, encoding="latin1")
    assert isinstance(training, list) and len(training[0]) == 30 and training[0][0].shape == (784,)
    np.testing.assert_array_equal(np.asarray(training[0], dtype=np.float32), x)
    np.testing.assert_array_equal(np.asarray(training[1], dtype=np.float32).astype(np.int32), y)
    np.testing.assert_array_equal(validation[0], vx)
    np.testing.assert_array_equal(test[1], ty)
    # and ours, called as the book calls it
    ours = network3.load_data_shared(str(path))
    for got, want in zip(ours, ((x, y), (vx, vy), (tx, ty))):
        np.testing.assert_array_equal(got.x, want[0])
        np.testing.assert_array_equal(got.y, want[1])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_make_book_pickle_expands_then_leaves_an_existing_file_alone(tmp_path, monkeypatch, capsys):
    x, y = toy(4, seed=7, n_in=784, n_out=10)
    small = data.Splits(data.Dataset(x, y), data.Dataset(x[:2], y[:2]), data.Dataset(x[:3], y[:3]))
    monkeypatch.setattr(expand_mnist, "load_mnist", lambda data_dir=None: small)
    path = tmp_path / "mnist_expanded.pkl.gz"
    expand_mnist.main(["--book-pickle", str(path), "--seed", "3"])
    training, _, _ = network3.load_data_shared(path)
    want = data.expand(x, y, seed=3)
    np.testing.assert_array_equal(training.x, want.x)
    np.testing.assert_array_equal(training.y, want.y)
    before = path.read_bytes()
    expand_mnist.make_book_pickle(path, seed=4)
    assert path.read_bytes() == before and "already exists" in capsys.readouterr().out


def test_a_missing_book_pickle_says_how_to_make_it(tmp_path):
    with pytest.raises(data.MNISTError, match="--book-pickle"):
        network3.load_data_shared(tmp_path / "mnist_expanded.pkl.gz")


# --- 3. network2's whole API -----------------------------------------------------------------

def test_network2_update_mini_batch_is_the_books_l2_step():
    """w → (1 − ηλ/n)w − (η/m)Σ∇C_x, b → b − (η/m)Σ∇C_x on one mini-batch of
    the book's pairs, n the training-set size; float64, tolerance 1e-12."""
    x, y = toy(4, seed=8)
    eta, lmbda, n = 0.5, 5.0, 50
    with jax.enable_x64(True):
        net = network2.Network([6, 5, 4], seed=3)
        start = [{k: np.asarray(v) for k, v in p.items()} for p in net.params]
        assert start[0]["w"].dtype == np.float64
        net.update_mini_batch(book_pairs(x, y), eta, lmbda, n)
        g = backprop.backprop_matrix(start, x.astype(np.float64), np.eye(4)[y], cost="cross_entropy")
    for p, s, q in zip(net.params, start, g):
        np.testing.assert_allclose(np.asarray(p["w"]), (1 - eta * lmbda / n) * s["w"] - eta * q["w"],
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(p["b"]), s["b"] - eta * q["b"], rtol=0, atol=1e-12)


def test_network_update_mini_batch_is_the_books_step():
    """network.py: w → w − (η/m)Σ∇C_x for the quadratic cost; float64, 1e-12."""
    x, y = toy(5, seed=9)
    with jax.enable_x64(True):
        net = network.Network([6, 5, 4], seed=4)
        start = [{k: np.asarray(v) for k, v in p.items()} for p in net.params]
        net.update_mini_batch(book_pairs(x, y), 3.0)
        g = backprop.backprop_matrix(start, x.astype(np.float64), np.eye(4)[y], cost="quadratic")
    for p, s, q in zip(net.params, start, g):
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(p[k]), s[k] - 3.0 * q[k], rtol=0, atol=1e-12)


def test_network2_module_functions_are_the_books():
    e = network2.vectorized_result(3)
    assert e.shape == (10, 1) and e[3, 0] == 1.0 and e.sum() == 1.0
    z = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(network2.sigmoid(z), 1 / (1 + np.exp(-z)), rtol=1e-15)
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(network2.sigmoid_prime(z), s * (1 - s), rtol=1e-14)
    assert np.isfinite(network2.sigmoid(np.array([-1000.0, 1000.0]))).all()


class JnpCrossEntropy:
    """A user's cross-entropy, the book's formula in jax.numpy (no nan_to_num)."""

    @staticmethod
    def fn(a, y):
        return jnp.sum(-y * jnp.log(a) - (1 - y) * jnp.log(1 - a))

    @staticmethod
    def delta(z, a, y):
        return a - y


class JnpQuadratic:
    @staticmethod
    def fn(a, y):
        return 0.5 * jnp.linalg.norm(a - y) ** 2


@pytest.mark.parametrize("mine, book", [(JnpCrossEntropy, network2.CrossEntropyCost),
                                        (JnpQuadratic, network2.QuadraticCost),
                                        (network2.CrossEntropyCost(), network2.CrossEntropyCost)])
def test_a_user_cost_trains_as_the_books_through_jax_grad(mine, book, capsys):
    """A cost class of one's own (or an instance, as fig/overfitting.py passes
    it) trains exactly as the book's class with the same formula: ``jax.grad``
    differentiates its ``fn``. Two epochs with L2, float64, tolerance 1e-9."""
    x, y = toy(30, seed=10)
    with jax.enable_x64(True), x64_labels():
        runs = []
        for cost in (mine, book):
            net = network2.Network([6, 5, 4], cost=cost, seed=5)
            net.SGD(book_pairs(x, y), 2, 10, 0.5, lmbda=1.0, seed=6)
            runs.append((net.params, net.total_cost(book_pairs(x, y), 1.0)))
    for p, q in zip(leaves(runs[0][0]), leaves(runs[1][0])):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-9)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-9)


def test_a_cost_instance_saves_under_its_class_name(tmp_path):
    net = network2.Network([6, 5, 4], cost=network2.CrossEntropyCost(), seed=0)
    net.save(tmp_path / "net.json")
    assert network2.load(tmp_path / "net.json").cost is network2.CrossEntropyCost


def test_a_cost_jax_cannot_trace_is_a_clear_error_before_training():
    class NumpyCost:
        @staticmethod
        def fn(a, y):
            return np.sum(np.nan_to_num(-y * np.log(a)))

    class VectorCost:
        @staticmethod
        def fn(a, y):
            return (a - y) ** 2

    with pytest.raises(ValueError, match=r"NumpyCost.fn\(a, y\) cannot be traced by JAX.*jax.numpy"):
        network2.Network([6, 5, 4], cost=NumpyCost)
    with pytest.raises(ValueError, match="one number per example"):
        network2.Network([6, 5, 4], cost=VectorCost)
    with pytest.raises(ValueError, match="cost"):
        network2.Network([6, 5, 4], cost="CrossEntropyCost")


# --- issue 10: the façades' bad input --------------------------------------------------------

@pytest.mark.parametrize("make", [network.Network, network2.Network])
@pytest.mark.parametrize("sizes", [[784, 2.7, 10], [784, "30", 10], [784, 0, 10], [784], [784, True, 10],
                                   [784, float("nan"), 10], [784, float("inf"), 10]])
def test_sizes_must_be_whole_positive_numbers(make, sizes):
    with pytest.raises(ValueError, match="sizes"):
        make(sizes)


@pytest.mark.parametrize("lmbda", [-1, float("nan"), float("inf")])
def test_total_cost_rejects_a_negative_or_non_finite_lmbda(lmbda):
    net = network2.Network([6, 5, 4], seed=0)
    with pytest.raises(ValueError, match="lmbda"):
        net.total_cost(toy(10), lmbda)


def test_network3_rejects_data_of_the_wrong_width_or_labels_beyond_the_softmax(capsys):
    net = toy_net3(seed=0)
    before = leaves(net.params)
    x, y = toy(20, n_in=6)
    wide, _ = toy(20, n_in=7)
    with pytest.raises(ValueError, match=r"training_data does not fit.*takes 6 inputs.*7 wide"):
        net.SGD((wide, y), 1, 5, 0.5, (x, y), (x, y))
    with pytest.raises(ValueError, match=r"validation_data does not fit.*4 classes.*\[0, 4\)"):
        net.SGD((x, y), 1, 5, 0.5, (x, np.full(20, 9, np.int32)), (x, y))
    assert same(net.params, before) and capsys.readouterr().out == ""   # nothing trained or printed


@pytest.mark.parametrize("facade", ["network2", "network3"])
def test_save_into_a_missing_folder_names_the_folder_and_files_get_the_usual_mode(facade, tmp_path):
    net = FACADES[facade](seed=0)
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        net.save(missing / "net.file")
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o027)
    try:
        net.save(tmp_path / "net.file")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "net.file").st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["net.file"]        # no temporary file left


# --- 6. faults the rest of the suite would not see ---------------------------------------------

def test_network3_with_l2_equals_the_numpy_reference_with_c_lambda_over_num_batches(capsys):
    """One epoch of network3's SGD, λ = 2, 23 examples in mini-batches of 5: the
    book trains on the first 20 (4 batches) with the L2 term
    0.5·(λ/num_training_batches)·Σ||w||². Against backprop.sgd_epoch
    (log-likelihood, softmax output), float64, tolerance 1e-12."""
    x, y = toy(23, seed=11)
    eta, lmbda = 0.5, 2.0
    with jax.enable_x64(True), x64_labels():
        net = toy_net3(seed=7)
        start = [{k: np.asarray(v) for k, v in p.items()} for p in net.params]
        assert start[0]["w"].dtype == np.float64
        net.SGD((x, y), 1, 5, eta, (x, y), (x, y), lmbda=lmbda)
        want, _ = backprop.sgd_epoch(start, x[:20].astype(np.float64), np.eye(4)[y[:20]], eta, 5,
                                     activation="sigmoid", cost="log_likelihood", penalty="l2", c=lmbda / 4)
    for p, q in zip(net.params, want):
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(p[k]), q[k], rtol=0, atol=1e-12)


def test_network3_drops_the_last_n_mod_mini_batch_examples(capsys):
    """205 examples in mini-batches of 10 train exactly as their first 200."""
    x, y = toy(205, seed=12)
    runs = []
    for n in (205, 200):
        net = toy_net3(seed=8, p_dropout=0.5, mb=10)
        net.SGD((x[:n], y[:n]), 2, 10, 0.5, (x, y), (x, y), seed=9)
        runs.append(net.params)
    assert same(*runs)


def test_network3_counts_an_equal_validation_accuracy_as_the_best_to_date(capsys):
    """The book's ``>=``: with η so small that nothing changes in float32, the
    validation accuracy stays flat and every epoch is "the best to date"."""
    x, y = toy(40, seed=13)
    net = toy_net3(seed=0)
    net.SGD((x, y), 3, 5, 1e-12, (x, y), (x, y))
    assert len(set(net.history["validation_accuracy"])) == 1
    out = capsys.readouterr().out
    assert out.count("This is the best validation accuracy to date.") == 3
    assert net.history["best_iteration"] == 3 * 8 - 1                  # the last of the equal epochs


def test_network3_test_accuracy_is_over_the_test_sets_own_size(capsys):
    """Validation (40) and test (15) sets of different sizes: the printed and
    recorded test accuracy is correct/15."""
    x, y = toy(40, seed=14)
    tx, ty = toy(15, seed=15)
    net = toy_net3(seed=1)
    net.SGD((x, y), 2, 5, 1.0, (x, y), (tx, ty))
    by_hand = np.mean(net.predict(tx) == ty)
    assert net.history["test_accuracy"][-1] == pytest.approx(by_hand)
    assert net.history["validation_accuracy"][-1] == pytest.approx(np.mean(net.predict(x) == y))
    printed = re.findall(r"The corresponding test accuracy is ([\d.]+)%", capsys.readouterr().out)
    assert float(printed[-1]) == pytest.approx(100 * net.history["test_accuracy_at_best"], abs=0.005)
    assert {round(15 * a, 6) % 1 for a in net.history["test_accuracy"]} == {0.0}


def test_a_dropout_epoch_draws_a_new_mask_for_every_mini_batch(capsys):
    """One epoch of a dropout net (dataset order, seed s) equals mini-batch
    steps made by hand with ``train.step``, mini-batch i keyed by
    ``fold_in(dropout_key, i)`` where (shuffle_key, dropout_key) =
    split(fold_in(train_key, epoch 0)) and train_key = seed_keys([s])[1][0].
    float64, tolerance 1e-12."""
    x, y = toy(20, seed=16)
    eta, s = 0.5, 21
    with jax.enable_x64(True), x64_labels():
        net = toy_net3(seed=2, p_dropout=0.5)
        params = net.params
        net.SGD((x, y), 1, 5, eta, (x, y), (x, y), seed=s)
        apply = network3.build(net.layers).apply
        optimizer = optax.sgd(eta)
        step = jax.jit(functools.partial(train.step, apply=apply, cost=costs.log_likelihood,
                                         penalty=costs.l2_penalty, optimizer=optimizer))
        opt_state = optimizer.init(params)
        _, dropout_key = jax.random.split(jax.random.fold_in(train.seed_keys([s])[1][0], 0))
        xs = jnp.asarray(x, jnp.float64)
        for i in range(4):
            params, opt_state = step(params, opt_state, xs[5 * i:5 * i + 5], jnp.asarray(y[5 * i:5 * i + 5]),
                                     jnp.ones(5, bool), jnp.zeros((), jnp.float64),
                                     jax.random.fold_in(dropout_key, i))
    for p, q in zip(leaves(net.params), leaves(params)):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-12)


def test_each_layer_in_serial_gets_its_own_dropout_key():
    """Two dropout layers (p = 0.5) one after the other keep about 25 % of the
    units, not the 50 % that one shared mask would keep."""
    identity = lambda key, n_in, n_out: (jnp.eye(n_in, n_out), jnp.zeros(n_out))  # noqa: E731
    n = 4000
    init, apply = layers.serial(layers.dense(n, init=identity, p_dropout=0.5),
                                layers.dense(n, init=identity, p_dropout=0.5))
    _, params = init(jax.random.key(0), (n,))
    out = apply(params, jnp.ones((1, n)), train=True, key=jax.random.key(1))
    kept = float(jnp.mean(out != 0))
    assert abs(kept - 0.25) < 0.03, kept                      # sd of the fraction ≈ 0.007


def test_predict_on_a_size_that_is_not_a_multiple_of_the_chunk_equals_apply():
    """1,500 examples in chunks of 1,000 (the last chunk padded): the same
    z as ``apply`` on the whole set, row for row; float32, tolerance 1e-6."""
    init, apply = layers.mlp([6, 5, 4], activations.sigmoid)
    _, params = init(jax.random.key(0), (6,))
    x = jnp.asarray(toy(1500, seed=17)[0])
    z = train.predict(params, x, apply=apply, chunk=1000)
    assert z.shape == (1500, 4)
    np.testing.assert_allclose(np.asarray(z), np.asarray(apply(params, x)), rtol=0, atol=1e-6)


# --- 3. what the first call says before its wait (issue 33 item 6) --------------------------

def test_the_loaders_first_call_says_loading_mnist_on_a_line_of_its_own_before_the_wait_once(
        mnist_dir, said_waits, capsys, monkeypatch):
    """``load_data_wrapper()``, the book's call: "mnist_loader.py: loading MNIST
    ..." on stderr before the files are read (stdout stays the book's); later calls
    (``load_data`` too) say nothing."""
    from nndl_jax import mnist_loader
    printed_at_the_wait = []
    read = mnist_loader.load_arrays

    def load_arrays(*args, **kwargs):
        printed_at_the_wait.append(capsys.readouterr().err)
        return read(*args, **kwargs)

    monkeypatch.setattr(mnist_loader, "load_arrays", load_arrays)
    mnist_loader.load_data_wrapper(mnist_dir)
    mnist_loader.load_data_wrapper(mnist_dir)
    mnist_loader.load_data(mnist_dir)
    assert printed_at_the_wait == ["mnist_loader.py: loading MNIST ...\n", "", ""]
    assert capsys.readouterr() == ("", "")


def test_network3s_loader_says_loading_mnist_once(mnist_dir, said_waits, capsys):
    network3.load_data_shared(mnist_dir)
    network3.load_data_shared(mnist_dir)
    assert capsys.readouterr() == ("", "network3.py: loading MNIST ...\n")


WAIT_LINE = (r"{}\.py: training on \d+ CPU devices?; compiling before the first epoch "
             r"\(first run only: the user cache keeps compiled programs\) \.\.\.")


@pytest.mark.parametrize("facade", FACADES)
def test_the_first_sgd_call_says_its_devices_and_the_compiling_wait_once_before_the_first_epoch(
        facade, said_waits, capsys):
    """On stderr, before the book's lines on stdout, which are the same as a
    second SGD call's (its programs compiled), which says nothing on stderr."""
    x, y = toy(20, seed=3)
    net = FACADES[facade](seed=1)

    def sgd():
        if facade == "network3":
            net.SGD((x, y), 1, 5, 0.5, (x, y), (x, y))
        elif facade == "network2":
            net.SGD((x, y), 1, 5, 0.5, evaluation_data=(x, y), monitor_evaluation_accuracy=True)
        else:
            net.SGD((x, y), 1, 5, 0.5, test_data=(x, y))
        said = capsys.readouterr()
        return said.out.splitlines(), said.err.splitlines()

    (first, first_err), (second, second_err) = sgd(), sgd()
    assert len(first_err) == 1 and re.fullmatch(WAIT_LINE.format(facade), first_err[0]), first_err
    assert second and first == second and second_err == []   # the book's lines alone on stdout
