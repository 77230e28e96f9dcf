"""The book's own random streams, so that its seeded runs can be replayed exactly.

The figure scripts of the book (``fig/overfitting.py``, ``weight_initialization.py``,
``multiple_eta.py``, ``more_data.py``) call ``random.seed(12345678)`` and
``np.random.seed(12345678)`` before training with network2.py. Two streams then
decide everything random in a run:

- **the initial weights**: NumPy's global legacy ``RandomState``, drawn with
  ``randn`` in the order network2's code draws them. ``Network.__init__`` calls
  ``default_weight_initializer`` (biases, then weights / √n_in, layer by layer);
  a script that then calls ``large_weight_initializer`` draws a second time from
  the same stream (biases, then weights). network.py draws biases, then weights.
  ``RandomState`` is NumPy's frozen legacy generator (its streams never change
  between NumPy versions), so ``np.random.RandomState(seed)`` here gives what the
  book's ``np.random.seed(seed)`` gave in 2015.
- **the order of the training examples**: network2's ``SGD`` calls
  ``random.shuffle(training_data)`` at the start of every epoch, in place, so
  epoch e permutes the order epoch e − 1 left. The book ran Python 2.7, whose
  ``shuffle`` is the Fisher–Yates walk ``for i = n−1 … 1: j = int(random() ·
  (i + 1)); swap x[i], x[j]``. Python 3's ``shuffle`` draws j with
  ``_randbelow`` (rejection sampling over ``getrandbits``) instead, so it gives
  other permutations from the same seed; ``shuffle_py27`` is the 2.7 walk.
  The float stream itself, ``random.Random(seed).random()``, is the same in
  Python 3 as in 2.7 for an integer seed (both seed MT19937 with
  ``init_by_array`` of the seed's 32-bit words and draw 53-bit floats the same
  way). Checked: CPython 2.7.18 and 3.11 give the same first 10⁶ floats for
  seeds 0, 1, 12345678 and 2⁴⁰ + 3, and 2.7.18's own ``random.shuffle`` gives
  the same 30 epochs of orders of 50,000 as ``epoch_orders`` for seed 12345678;
  ``tests/test_book_random.py`` checks the stream against NumPy's independent
  MT19937 (``RandomState([seed])`` is ``init_by_array`` too).

The pixels: the book's ``mnist.pkl.gz`` stores each image as float32 byte/256
(so 255 becomes 0.99609375, never 1.0; the pickle comes from the LISA lab's
conversion, whose maximum of 255/256 is a known quirk), and ``mnist_loader``
passes those values on unchanged; network2's float64 weights promote them to
float64 exactly. ``book_pixels`` turns this project's byte/255 images into the
pickle's values. (The pickle itself is not at hand here; the replays confirm
it: with byte/256 the replay of fig/overfitting.py's λ = 5 run equals the
book's test accuracy after the first epoch, 9,212; with byte/255 it gives 9,196.)

Used by the façades' ``book_seed`` (``network.Network(sizes, book_seed=S)``,
``network2.Network(sizes, cost, book_seed=S)``: a ``BookStreams`` each, or one
shared) and by the chapter-3 replays (``experiments/book_replay.py``).
NumPy and the standard library only (this module sits beside ``data`` in the
import order). Params come back in the core layout: a list of
``{"w": [n_in, n_out], "b": [n_out]}`` float64 NumPy arrays.
"""
import random

import numpy as np

BOOK_SEED = 12345678
"""The seed every figure script of the book sets (``random.seed`` and ``np.random.seed``)."""


# --- the initial weights: NumPy's legacy RandomState in the book's order --------------

def numpy_stream(seed):
    """What ``np.random.seed(seed)`` makes the book's global generator: a legacy
    ``RandomState`` seeded the same way (MT19937 ``init_genrand(seed)``)."""
    return np.random.RandomState(int(seed))


def _core_layer(w_book, b_book):
    """network2's layout (w [n_out, n_in], b [n_out, 1]) → the core's ({"w": [n_in, n_out], "b": [n_out]})."""
    return {"w": np.ascontiguousarray(w_book.T), "b": b_book[:, 0].copy()}


def default_weights(rng, sizes):
    """network2's ``default_weight_initializer`` drawn from ``rng``: every
    layer's biases N(0, 1) first, then every layer's weights N(0, 1)/√n_in
    (``randn(n_out, n_in) / np.sqrt(n_in)``, as the book divides)."""
    biases = [rng.randn(n_out, 1) for n_out in sizes[1:]]
    weights = [rng.randn(n_out, n_in) / np.sqrt(n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return [_core_layer(w, b) for w, b in zip(weights, biases)]


def large_weights(rng, sizes):
    """network2's ``large_weight_initializer`` (and network.py's constructor)
    drawn from ``rng``: every layer's biases N(0, 1), then every layer's weights N(0, 1)."""
    biases = [rng.randn(n_out, 1) for n_out in sizes[1:]]
    weights = [rng.randn(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return [_core_layer(w, b) for w, b in zip(weights, biases)]


def network2_weights(seed, sizes, large=False):
    """The initial params of ``network2.Network(sizes)`` right after
    ``np.random.seed(seed)``, followed by ``large_weight_initializer()`` when
    ``large`` (as fig/overfitting.py does): the constructor's default draw
    comes first either way, so the large weights are the stream's second draw."""
    rng = numpy_stream(seed)
    params = default_weights(rng, sizes)
    return large_weights(rng, sizes) if large else params


def network_weights(seed, sizes):
    """The initial params of network.py's ``Network(sizes)`` after ``np.random.seed(seed)``."""
    return large_weights(numpy_stream(seed), sizes)


# --- the order of the training examples: Python 2.7's shuffle ------------------------

def python_stream(seed):
    """What ``random.seed(seed)`` makes the book's module-level generator (for
    an integer seed the float stream is the same in Python 3 as in 2.7)."""
    return random.Random(int(seed))


class BookStreams:
    """The book's two module-level generators after ``random.seed(seed);
    np.random.seed(seed)``: ``numpy`` (a ``RandomState``: the initial weights)
    and ``python`` (a ``random.Random``: the shuffles). Every network of a
    book script draws from the same two, so networks that share one
    ``BookStreams`` continue each other's streams as the script's do
    (multiple_eta.py builds three nets after one seeding)."""

    def __init__(self, seed):
        self.seed = int(seed)
        self.numpy = numpy_stream(self.seed)
        self.python = python_stream(self.seed)

    def __repr__(self):
        return f"BookStreams(seed={self.seed})"


def shuffle_py27(items, rng):
    """Shuffle the list ``items`` in place as Python 2.7's ``random.shuffle``
    does with the generator ``rng``: Fisher–Yates from the end, the swap
    partner of position i being ``int(rng.random() * (i + 1))``."""
    draw = rng.random
    for i in range(len(items) - 1, 0, -1):
        j = int(draw() * (i + 1))
        items[i], items[j] = items[j], items[i]


def epoch_order_stream(rng, order):
    """network2's per-epoch ``random.shuffle(training_data)``, one epoch at a
    time: ``orders(e)`` → epoch e's order (int32 [n] indices into the
    training set), for e = 0, 1, 2, … as ``train.fit(orders=)`` asks.

    ``order`` is the list as the epochs find it (``list(range(n))`` for a
    fresh ``training_data``); each new epoch shuffles it in place once more
    with ``shuffle_py27`` (so epoch e permutes epoch e − 1's order). An epoch
    is shuffled when first asked for, so a run stopped early (early stopping)
    leaves ``rng`` and ``order`` where the book's stopped loop leaves its
    ``random`` module and list.
    """
    made = []

    def orders(e):
        while len(made) <= e:
            shuffle_py27(order, rng)
            made.append(np.array(order, np.int32))
        return made[e]
    return orders


def epoch_orders(rng, order, epochs):
    """The training orders of ``epochs`` epochs of network2's ``SGD``:
    ``[epochs, n]`` int32 indices into the training set (``epoch_order_stream``'s
    first ``epochs``).

    ``rng`` and ``order`` are left where the book's ``random`` module and list
    would be, so a script that trains again on the same list (weight_initialization.py,
    multiple_eta.py) continues by calling this again with both.
    """
    orders, out = epoch_order_stream(rng, order), np.empty((int(epochs), len(order)), np.int32)
    for e in range(int(epochs)):
        out[e] = orders(e)
    return out


def book_orders(seed, n, epochs):
    """``epoch_orders`` of a fresh list of ``n`` examples after ``random.seed(seed)``:
    fig/overfitting.py's ``SGD(training_data[:n], epochs, ...)``."""
    return epoch_orders(python_stream(seed), list(range(int(n))), epochs)


# --- the pixels as the book's pickle stores them ----------------------------------------

def book_pixels(x):
    """Images as the book's ``mnist.pkl.gz`` holds them: float32 byte/256.

    ``x``: float images of this project's loader (byte/255, float32) or
    already byte/256 (read from the book's pickle); both give byte/256. Anything
    else (values that are not whole bytes on either scale) raises ValueError.
    """
    x = np.asarray(x)
    for scale in (255.0, 256.0):
        pixels = np.rint(x.astype(np.float64) * scale)
        if pixels.min(initial=0) >= 0 and pixels.max(initial=0) <= 255 and np.array_equal(
                (pixels / scale).astype(x.dtype), x):
            return (pixels / 256.0).astype(np.float32)
    raise ValueError("book_pixels needs 8-bit images scaled as byte/255 (this project's loader) "
                     "or byte/256 (the book's pickle); got other values")
