"""The book's chapter-1 façade, nndl_jax.network.Network: its attributes,
feedforward, SGD's printout, evaluate, the data layouts it accepts,
reproducibility, the book's mini-batch rule, bad input, and one real epoch."""
import re

import numpy as np
import pytest

from nndl_jax import network

SIZES = [784, 30, 10]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def book_feedforward(net, a):
    """The book's feedforward, written out in NumPy on the book's attributes."""
    for w, b in zip(net.weights, net.biases):
        a = sigmoid(w.astype(np.float64) @ a + b)
    return a


@pytest.fixture(scope="module")
def small(mnist):
    """1,000 training and 200 test images (arrays), enough for fast checks."""
    tr, te = mnist.training, mnist.test
    return (tr.x[:1000], tr.y[:1000]), (te.x[:200], te.y[:200])


def book_layout(x, y, *, one_hot):
    """The book's load_data_wrapper layout: (x (784, 1), y) pairs, y a one-hot
    (10, 1) column for training data and an int for test data."""
    pairs = []
    for xi, yi in zip(x, y):
        target = np.eye(10, dtype=np.float32)[yi].reshape(10, 1) if one_hot else int(yi)
        pairs.append((xi.reshape(784, 1), target))
    return pairs


def test_book_attributes_have_the_book_shapes():
    net = network.Network(SIZES, seed=0)
    assert net.sizes == SIZES and net.num_layers == 3
    assert [w.shape for w in net.weights] == [(30, 784), (10, 30)]
    assert [b.shape for b in net.biases] == [(30, 1), (10, 1)]
    # N(0, 1) initialisation (network.py): 23,520 first-layer weights have mean ≈ 0, std ≈ 1.
    w = net.weights[0]
    assert abs(w.mean()) < 0.03 and abs(w.std() - 1.0) < 0.03


def test_feedforward_on_a_column_and_on_a_batch_matches_the_book_formula(small):
    net = network.Network(SIZES, seed=1)
    x = small[1][0][:5]
    column = net.feedforward(x[0].reshape(784, 1))
    assert column.shape == (10, 1)
    np.testing.assert_allclose(column, book_feedforward(net, x[0].reshape(784, 1).astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    batch = net.feedforward(x)
    assert batch.shape == (5, 10)
    np.testing.assert_allclose(batch[0], column[:, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(batch.T, book_feedforward(net, x.T.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_feedforward_rejects_the_wrong_width():
    net = network.Network(SIZES, seed=0)
    with pytest.raises(ValueError, match="784"):
        net.feedforward(np.zeros((783, 1), np.float32))
    with pytest.raises(ValueError, match="784"):
        net.feedforward(np.zeros((4, 783), np.float32))


def test_sgd_prints_the_books_lines_and_evaluate_counts_argmax(small, capsys):
    (x, y), (tx, ty) = small
    net = network.Network(SIZES, seed=2)
    net.SGD((x, y), 2, 10, 3.0, test_data=(tx, ty), seed=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for j, line in enumerate(lines):
        m = re.fullmatch(rf"Epoch {j}: (\d+) / 200", line)
        assert m, line
    last = int(re.fullmatch(r"Epoch 1: (\d+) / 200", lines[-1]).group(1))
    # evaluate is the number of test inputs whose most active output is the label.
    by_hand = int(np.sum(np.argmax(net.feedforward(tx), axis=1) == ty))
    assert net.evaluate((tx, ty)) == by_hand == last
    assert last > 50  # above chance (20 / 200): it learns, slowly, from 1,000 images in 2 epochs

    net.SGD((x, y), 1, 10, 3.0)
    assert capsys.readouterr().out == "Epoch 0 complete\n"


def reset(net, start):
    """Put the network back to the weights and biases ``start`` (the book's attributes)."""
    net.weights, net.biases = start
    return net


def test_sgd_accepts_the_book_layout_and_gives_the_same_network_as_arrays(small):
    (x, y), (tx, ty) = small
    x, y = x[:200], y[:200]
    net = network.Network(SIZES, seed=3)
    start = (net.weights, net.biases)
    net.SGD((x, y), 1, 10, 3.0, seed=7)
    from_arrays = net.weights + net.biases
    correct = net.evaluate((tx, ty))
    reset(net, start).SGD(book_layout(x, y, one_hot=True), 1, 10, 3.0, seed=7)
    for a, b in zip(from_arrays, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)
    assert net.evaluate(book_layout(tx, ty, one_hot=False)) == correct


def test_same_seed_same_weights_different_seed_different_weights(small):
    (x, y), _ = small
    x, y = x[:300], y[:300]
    net, twin, other = (network.Network(SIZES, seed=s) for s in (0, 0, 1))
    for a, b, c in zip(net.weights + net.biases, twin.weights + twin.biases,
                       other.weights + other.biases):
        np.testing.assert_array_equal(a, b)       # same seed: the same initial network
        assert not np.allclose(a, c)              # another seed: another one
    start = (net.weights, net.biases)

    def trained(sgd_seed):
        reset(net, start).SGD((x, y), 2, 10, 3.0, seed=sgd_seed)
        return net.weights + net.biases

    first, again, other_shuffle = trained(5), trained(5), trained(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other_shuffle[0])
    assert not np.allclose(first[0], start[0][0])


def test_shuffle_false_replays_dataset_order_with_a_short_last_batch(small):
    """25 examples in mini-batches of 10: batches [0:10], [10:20], [20:25] in
    dataset order, the short last one averaged over its own 5 examples (the
    book's update_mini_batch divides by len(mini_batch)). SGD with shuffle=False
    must equal three calls of update_mini_batch, whatever its seed."""
    (x, y), _ = small
    x, y = x[:25], y[:25]
    net = network.Network(SIZES, seed=4)
    start = (net.weights, net.biases)
    net.SGD((x, y), 1, 10, 3.0, shuffle=False, seed=1)
    replay = net.weights + net.biases
    reset(net, start).SGD((x, y), 1, 10, 3.0, shuffle=False, seed=2)
    for a, b in zip(replay, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)
    reset(net, start)
    for k in range(0, 25, 10):
        before_last = net.biases[1].copy()
        net.update_mini_batch((x[k:k + 10], y[k:k + 10]), 3.0)
    for a, c in zip(replay, net.weights + net.biases):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)  # float32, the same operations
    # The short batch really moved the weights (it is not dropped).
    assert np.max(np.abs(net.biases[1] - before_last)) > 1e-4


@pytest.mark.parametrize("bad, match", [
    (dict(x_width=783), "784"),
    (dict(eta=0.0), "eta"),
    (dict(eta=-1.0), "eta"),
    (dict(mini_batch_size=0), "mini_batch_size"),
    (dict(epochs=-1), "epochs"),
])
def test_bad_sgd_arguments_are_clear_value_errors(bad, match):
    net = network.Network(SIZES, seed=0)
    x = np.zeros((20, bad.get("x_width", 784)), np.float32)
    y = np.zeros(20, np.int32)
    before = net.weights[0].copy()
    with pytest.raises(ValueError, match=match):
        net.SGD((x, y), bad.get("epochs", 1), bad.get("mini_batch_size", 10), bad.get("eta", 3.0))
    np.testing.assert_array_equal(net.weights[0], before)  # nothing was trained


def test_one_real_epoch_reaches_over_85_percent(mnist, capsys):
    """The book's chapter-1 run for one epoch: [784,30,10], η = 3.0, mini-batches
    of 10, the 50,000 training images. The book prints 9129 / 10000 after epoch 0;
    runs vary: an N(0, 1) start sometimes leaves one digit unlearnt after an epoch
    (its output neuron saturated), and so does an unlucky order of the mini-batches
    (from the network of seed 1, shuffle seeds 1, 2, 3 give 9074, 8795, 8228),
    so this fixes both seeds: network seed 1, shuffle seed 1."""
    net = network.Network(SIZES, seed=1)
    net.SGD(mnist.training, 1, 10, 3.0, test_data=mnist.test, seed=1)
    correct = int(re.fullmatch(r"Epoch 0: (\d+) / 10000\n", capsys.readouterr().out).group(1))
    assert correct > 8500, correct
    assert net.evaluate(mnist.test) == correct


def test_network_of_any_width_trains_through_the_facade():
    """The façade is not tied to MNIST's 784 inputs and 10 outputs: a [4, 3, 2]
    net trains on arrays and on the book's layout, and rejects a wrong width."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int32)
    net = network.Network([4, 3, 2], seed=1)
    net.SGD((x, y), 2, 5, 3.0)
    assert net.feedforward(x[:1].T).shape == (2, 1)
    book_layout = [(xi.reshape(4, 1), int(yi)) for xi, yi in zip(x, y)]
    assert net.evaluate(book_layout) == net.evaluate((x, y))
    with pytest.raises(ValueError):
        net.evaluate((rng.random((5, 7), dtype=np.float32), y[:5]))
