"""The façades with the book's random streams (issue 26):
``network.Network(sizes, book_seed=S)`` and ``network2.Network(sizes, cost, book_seed=S)``.

The references here are written from the book's code, not from
``book_random``: its constructors' NumPy draws (``np.random.randn`` after
``np.random.seed(S)``, biases then weights), Python 2.7's ``random.shuffle``
over ``random.Random(S)`` (transcribed below), and the book's update rule in
NumPy float64 (``backprop.sgd_epoch`` over the shuffled examples).

Float64 comparisons run inside ``jax.enable_x64(True)`` with NumPy-style
promotion (the core compares int64 argmax with int32 labels under x64, which
the suite's strict promotion refuses); tolerances are in the assertions.
"""
import random

import jax
import numpy as np
import pytest

from nndl_jax import backprop, book_random, layers, mnist_loader, network, network2, train
from nndl_jax.activations import sigmoid

SEED = book_random.BOOK_SEED
SIZES = [784, 30, 10]

STEP_TOLERANCE = 1e-12
"""Absolute, on weights and biases of order 1 after 100 and 200 steps: the
façade's sums (``jax.grad`` of the mean cost, an optax step) are formed in
another order than the reference's; measured on the CPU after 100 and 200
steps: 1.8e-15 and 2.9e-15 (network: quadratic, η 3), 1.3e-15 and 3.1e-15
(network2: cross-entropy, η 0.5, λ 5)."""


def x64():
    """Float64 JAX with NumPy-style promotion, for the equivalence checks."""
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(jax.enable_x64(True))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


# --- the book's code, transcribed ----------------------------------------------------------

def book_draw(rng, sizes, scaled):
    """One of the book's initializations drawn from ``rng`` (a ``RandomState``):
    network.py's constructor and network2's ``large_weight_initializer``
    (``scaled`` False), network2's ``default_weight_initializer`` (True):
    ``biases = [randn(y, 1) ...]`` first, then ``weights = [randn(y, x) ...]``
    (divided by √x when scaled). Returns (weights, biases) in the book's layout."""
    biases = [rng.randn(y, 1) for y in sizes[1:]]
    weights = [rng.randn(y, x) for x, y in zip(sizes[:-1], sizes[1:])]
    if scaled:
        weights = [w / np.sqrt(w.shape[1]) for w in weights]
    return weights, biases


def shuffle_py27(x, rng):
    """Python 2.7's ``random.shuffle(x)`` (Lib/random.py, 2.7.18) with ``random = rng.random``."""
    for i in reversed(range(1, len(x))):
        j = int(rng.random() * (i + 1))
        x[i], x[j] = x[j], x[i]


def book_params(weights, biases):
    """The book's layout → the reference's (``backprop``: w [n_in, n_out], b [n_out])."""
    return [{"w": w.T.copy(), "b": b[:, 0].copy()} for w, b in zip(weights, biases)]


def positions(data, original):
    """Where each item of the list ``data`` was in ``original``, by identity (None:
    not one of them); the book's ``random.shuffle`` moves the caller's items, it copies none."""
    where = {id(item): i for i, item in enumerate(original)}
    return [where.get(id(item)) for item in data]


def assert_same_draw(net, weights, biases, dtype):
    assert len(net.weights) == len(weights)
    for got, want in zip(net.weights + net.biases, weights + biases):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want.astype(dtype))


# --- the initial weights ----------------------------------------------------------------------

FACADES = {
    "network": (lambda s: network.Network(SIZES, book_seed=s), (False,)),
    "network2": (lambda s: network2.Network(SIZES, network2.CrossEntropyCost, book_seed=s), (True,)),
}


@pytest.mark.parametrize("name", FACADES)
def test_book_seed_draws_numpys_randomstate_in_the_books_order(name):
    """The initial weights equal, bit for bit (float64), what the book's
    constructor draws after ``np.random.seed(S)``; without x64 the same
    numbers rounded to float32."""
    make, (scaled,) = FACADES[name]
    with x64():
        net = make(SEED)
    assert net.seed is None and net.book_streams.seed == SEED
    assert_same_draw(net, *book_draw(np.random.RandomState(SEED), SIZES, scaled), np.float64)
    assert_same_draw(make(SEED), *book_draw(np.random.RandomState(SEED), SIZES, scaled), np.float32)


def test_network2_initializers_draw_again_from_the_same_stream():
    """``large_weight_initializer()`` then ``default_weight_initializer()`` on a
    book-seeded network2 are the stream's second and third draws, as the
    book's fig scripts make them; a second network sharing the streams
    (``book_random.BookStreams``) draws the fourth, as a second network of a
    book script does after one ``np.random.seed``."""
    rng = np.random.RandomState(SEED)
    with x64():
        streams = book_random.BookStreams(SEED)
        net = network2.Network(SIZES, book_seed=streams)
        assert_same_draw(net, *book_draw(rng, SIZES, scaled=True), np.float64)
        net.large_weight_initializer()
        assert_same_draw(net, *book_draw(rng, SIZES, scaled=False), np.float64)
        net.default_weight_initializer()
        assert_same_draw(net, *book_draw(rng, SIZES, scaled=True), np.float64)
        second = network2.Network(SIZES, book_seed=streams)
        assert_same_draw(second, *book_draw(rng, SIZES, scaled=True), np.float64)
    assert second.book_streams is streams


# --- two epochs on 1,000 images against the book's rule in NumPy -------------------------------

RUNS = {  # façade → (make the net, SGD's arguments after the data and epochs, the reference's rule)
    "network": (lambda: network.Network(SIZES, book_seed=SEED), dict(mini_batch_size=10, eta=3.0),
                dict(cost="quadratic", penalty=None, eta=3.0, lmbda=0.0), False),
    "network2": (lambda: network2.Network(SIZES, network2.CrossEntropyCost, book_seed=SEED),
                 dict(mini_batch_size=10, eta=0.5, lmbda=5.0),
                 dict(cost="cross_entropy", penalty="l2", eta=0.5, lmbda=5.0), True),
}


def book_pairs(x, y):
    """The book's training list: (x (784, 1) column, y (10, 1) one-hot float64) pairs."""
    return [(xi.reshape(-1, 1), mnist_loader.vectorized_result(int(yi))) for xi, yi in zip(x, y)]


@pytest.mark.parametrize("name", RUNS)
def test_two_epochs_on_1000_images_equal_the_books_update_rule_in_numpy_step_for_step(mnist, name):
    """``SGD`` on 1,000 images (byte/256, float64), one epoch per call, twice:
    after each call the weights equal a float64 NumPy run of the book's rule
    (the examples in the order of the book's shuffles, mini-batches of 10,
    ``backprop.sgd_epoch``: w ← (1 − ηλ/n)·w − η·(mean gradient)) to
    STEP_TOLERANCE; the list is left in the book's order, the monitored
    accuracy is the reference's, and one call of two epochs gives the same
    weights bit for bit."""
    make, sgd_args, rule, large = RUNS[name]
    n = 1000
    x = book_random.book_pixels(mnist.training.x[:n])
    labels = mnist.training.y[:n]
    data = book_pairs(x, labels)
    original = list(data)
    test_x, test_y = book_random.book_pixels(mnist.test.x[:500]), mnist.test.y[:500]
    test_data = list(zip(test_x.reshape(-1, 784, 1), test_y.tolist()))

    rng = np.random.RandomState(SEED)
    weights, biases = book_draw(rng, SIZES, scaled=large)
    if large:  # network2: the constructor's default draw, then large_weight_initializer's
        weights, biases = book_draw(rng, SIZES, scaled=False)
    expected, order, shuffles = book_params(weights, biases), list(range(n)), random.Random(SEED)
    targets = np.eye(10)[labels]
    after = []
    for _ in range(2):
        shuffle_py27(order, shuffles)
        expected, _ = backprop.sgd_epoch(expected, x[order].astype(np.float64), targets[order], rule["eta"], 10,
                                         "sigmoid", rule["cost"], rule["penalty"], rule["lmbda"] / n)
        after.append(expected)

    with x64():
        net, whole = make(), make()
        if large:
            net.large_weight_initializer()
            whole.large_weight_initializer()
        for e in range(2):
            if name == "network2":
                accuracy = net.SGD(data, 1, evaluation_data=test_data, monitor_evaluation_accuracy=True,
                                   **sgd_args)[1][0]
            else:
                net.SGD(data, 1, test_data=test_data, **sgd_args)
                accuracy = net.evaluate(test_data)
            for got, want in zip(net.params, after[e]):
                assert got["w"].dtype == np.float64
                np.testing.assert_allclose(np.asarray(got["w"]), want["w"], rtol=0, atol=STEP_TOLERANCE)
                np.testing.assert_allclose(np.asarray(got["b"]), want["b"], rtol=0, atol=STEP_TOLERANCE)
            reference = backprop.feedforward(after[e], test_x.astype(np.float64), "sigmoid", rule["cost"])
            assert accuracy == int(np.sum(np.argmax(reference, axis=1) == test_y))
        whole.SGD(book_pairs(x, labels), 2, **sgd_args)
    assert positions(data, original) == order     # shuffled in place, as the book's
    for a, b in zip(jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_books_chapter3_session_through_network2_gives_the_books_first_epochs(mnist_dir):
    """The book's session with fig/overfitting.py's seed and λ 5 (its
    ``regularized_full.json``), through the façade, for the first 2 epochs:
    its four monitored curves are the replay's (experiments.book_replay:
    ``train.fit`` with ``book_random``'s draws and orders; accuracies equal,
    costs to 1e-12 relative), and, where the book's curve is at hand, the
    book's (accuracies equal, costs to book_replay.COST_RTOL relative)."""
    from experiments import book_replay, report
    epochs = 2
    with x64():
        training_data, _, test_data = mnist_loader.load_data_wrapper(mnist_dir, book_pixels=True)
        net = network2.Network(SIZES, cost=network2.CrossEntropyCost, book_seed=SEED)
        net.large_weight_initializer()
        curves = net.SGD(training_data, epochs, 10, 0.5, lmbda=5.0, evaluation_data=test_data,
                         monitor_evaluation_cost=True, monitor_evaluation_accuracy=True,
                         monitor_training_cost=True, monitor_training_accuracy=True)
        training, _, test = mnist_loader.load_arrays(mnist_dir, book_pixels=True)
        replayed, _, _ = book_replay.replay_fit(
            book_random.network2_weights(SEED, SIZES, large=True), training,
            {"evaluation": (test.x, test.y), "training": (training.x, training.y)}, epochs, 0.5, 5.0,
            book_random.book_orders(SEED, len(training.y), epochs), sizes=SIZES, label="test")
    for name, curve in zip(book_replay.MONITORS, curves):
        assert len(curve) == epochs
        np.testing.assert_allclose(curve, replayed[name], rtol=1e-12 if name.endswith("cost") else 0, atol=0)
    book = report.book_curve("regularized_full")
    if book is not None:
        for curve, book_curve in zip(curves, book):
            np.testing.assert_allclose(curve, book_curve[:epochs], rtol=book_replay.COST_RTOL
                                       if isinstance(book_curve[0], float) else 0, atol=0)


# --- the shuffle stream across SGD calls ---------------------------------------------------------

def toy_pairs(n, seed=0):
    """``n`` book-layout pairs on [6, 5, 4] (x (6, 1), y one-hot (4, 1)) and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    return [(rng.random((6, 1), dtype=np.float32), np.eye(4)[k].reshape(4, 1)) for k in labels], labels


@pytest.mark.parametrize("facade", [network.Network, network2.Network])
def test_shuffle_stream_continues_across_sgd_calls_as_the_books_global_random(facade):
    """``SGD(data, 2)`` then ``SGD(data, 3)`` on one list: the list ends as five
    Python-2.7 shuffles over ``random.Random(S)`` leave it, and the weights
    equal one ``SGD(data, 5)`` call's bit for bit (the second call's epochs
    are the stream's epochs 3 to 5). A second network sharing the streams
    continues them too, as a second network of a book script does; a network
    made from the same seed alone starts them afresh."""
    data, _ = toy_pairs(37)
    original = list(data)
    twice, once = facade([6, 5, 4], book_seed=SEED), facade([6, 5, 4], book_seed=SEED)
    twice.SGD(data, 2, 4, 0.5)
    twice.SGD(data, 3, 4, 0.5)
    order, shuffles = list(range(37)), random.Random(SEED)
    for _ in range(5):
        shuffle_py27(order, shuffles)
    assert positions(data, original) == order
    fresh, _ = toy_pairs(37)
    once.SGD(fresh, 5, 4, 0.5)
    for a, b in zip(jax.tree_util.tree_leaves(twice.params), jax.tree_util.tree_leaves(once.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    streams = book_random.BookStreams(SEED)
    first, second = facade([6, 5, 4], book_seed=streams), facade([6, 5, 4], book_seed=streams)
    shared, _ = toy_pairs(37)
    original = list(shared)
    first.SGD(shared, 2, 4, 0.5)
    second.SGD(shared, 3, 4, 0.5)
    assert positions(shared, original) == order
    alone, _ = toy_pairs(37)
    original = list(alone)
    facade([6, 5, 4], book_seed=SEED).SGD(alone, 3, 4, 0.5)
    assert positions(alone, original) != order


def test_an_early_stopped_sgd_leaves_the_stream_where_the_books_loop_stops():
    """network2 with early stopping: the list has been shuffled once per epoch
    that ran (the book's loop returns before shuffling again), so a following
    ``SGD`` continues from there."""
    data, _ = toy_pairs(37)
    original = list(data)
    evaluation = [(x, int(k)) for (x, _), k in zip(*toy_pairs(20, seed=1))]
    net = network2.Network([6, 5, 4], book_seed=SEED)
    net.SGD(data, 20, 4, 0.5, evaluation_data=evaluation, early_stopping_n=1)
    assert 0 <= net.stopped_at < 19          # it stopped early: the claim below is about that case
    order, shuffles = list(range(37)), random.Random(SEED)
    for _ in range(net.stopped_at + 1):
        shuffle_py27(order, shuffles)
    assert positions(data, original) == order
    net.SGD(data, 1, 4, 0.5)
    shuffle_py27(order, shuffles)
    assert positions(data, original) == order


# --- the default path ------------------------------------------------------------------------------

def test_default_path_is_unchanged_jax_keys_float32_and_the_list_left_alone():
    """Without ``book_seed`` the façades are what they were: the initial
    weights drawn by JAX from ``split(key(seed))[0]`` (network2's redraws
    ``fold_in(that key, k)``), ``SGD`` the core's ``fit`` with ``key(seed)``
    and JAX's permutations, float32, and the caller's list not reordered;
    ``book_seed=None`` is the plain constructor."""
    data, labels = toy_pairs(37)
    kept = list(data)
    x = np.stack([xi.reshape(-1) for xi, _ in data])
    for facade in (network.Network, network2.Network):
        net, plain = facade([6, 5, 4], seed=7, book_seed=None), facade([6, 5, 4], seed=7)
        init_key = jax.random.split(jax.random.key(7))[0]
        init = layers.large_weight_init if facade is network.Network else layers.default_weight_init
        params = train.init_params(layers.mlp_net([6, 5, 4], sigmoid, init=init), init_key, (6,))
        if facade is network2.Network:
            net.large_weight_initializer()
            plain.large_weight_initializer()
            params = train.init_params(layers.mlp_net([6, 5, 4], sigmoid, init=layers.large_weight_init),
                                       jax.random.fold_in(init_key, 1), (6,))
        for got, want in zip(jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(params)):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        net.SGD(data, 2, 4, 0.5, seed=11)
        plain.SGD(data, 2, 4, 0.5, seed=11)
        trainer = net._trainer(4, True, **({"penalty": "l2", "momentum": 0.0} if facade is network2.Network else {}))
        fitted = train.fit(trainer, train.stack([params]), (x, labels.astype(np.int32)), 2,
                           key=jax.random.key(11), eta=0.5)
        for got, same, want in zip(jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(plain.params),
                                   jax.tree_util.tree_leaves(train.unstack(fitted.params)[0])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            np.testing.assert_array_equal(np.asarray(same), np.asarray(want))
        assert net.seed == 7 and net.last_sgd_seed == 11 and net.book_streams is None
        assert all(a is b for a, b in zip(kept, data))


# --- bad input and the loader ----------------------------------------------------------------------

def test_book_seed_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="seed .* or book_seed"):
        network2.Network([6, 5, 4], seed=1, book_seed=2)
    with pytest.raises(ValueError, match="0 <= seed < 2\\*\\*32|seed"):
        network.Network([6, 5, 4], book_seed=-1)
    net = network.Network([6, 5, 4], book_seed=3)
    with pytest.raises(ValueError, match="book's stream"):
        net.SGD(toy_pairs(8)[0], 1, 4, 0.5, seed=5)


def test_loader_book_pixels_are_the_pickles_byte_over_256(mnist_dir):
    """``load_data(book_pixels=True)``: the same images as byte/256 (so 255
    becomes 0.99609375), labels unchanged; ``load_data_wrapper`` passes them on."""
    plain = mnist_loader.load_data(mnist_dir)
    book = mnist_loader.load_data(mnist_dir, book_pixels=True)
    for (px, py), (bx, by) in zip(plain, book):
        assert bx.dtype == np.float32 and bx.max() == np.float32(255 / 256)
        np.testing.assert_array_equal(bx, (np.rint(px.astype(np.float64) * 255) / 256).astype(np.float32))
        np.testing.assert_array_equal(py, by)
    training, _, test = mnist_loader.load_data_wrapper(mnist_dir, book_pixels=True)
    np.testing.assert_array_equal(training[3][0][:, 0], book[0][0][3])
    np.testing.assert_array_equal(test[5][0][:, 0], book[2][0][5])
