"""The book's random streams (nndl_jax.book_random): NumPy's legacy RandomState
in network2's draw order, Python 2.7's shuffle, the pickle's pixels. NumPy
and the standard library only; each test runs in milliseconds."""
import random

import numpy as np
import pytest

from nndl_jax import book_random as br

SEED = br.BOOK_SEED
SIZES = [784, 30, 10]


def _seed_words(seed):
    """The 32-bit words (least significant first) CPython seeds MT19937 with."""
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            return words


_MASK = 0xFFFFFFFF


def _init_genrand(s):
    """MT19937's init_genrand (Matsumoto and Nishimura's mt19937ar.c), the 624 state words."""
    mt = [s & _MASK]
    for i in range(1, 624):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & _MASK)
    return mt


def _init_by_array(key):
    """MT19937's init_by_array (mt19937ar.c), the 624 state words."""
    mt, i, j = _init_genrand(19650218), 1, 0
    for _ in range(max(624, len(key))):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525)) + key[j] + j) & _MASK
        i, j = i + 1, j + 1
        if i >= 624:
            mt[0], i = mt[623], 1
        if j >= len(key):
            j = 0
    for _ in range(623):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941)) - i) & _MASK
        i += 1
        if i >= 624:
            mt[0], i = mt[623], 1
    mt[0] = 0x80000000
    return mt


def test_hand_written_init_genrand_is_numpys_legacy_seeding():
    """The check below relies on this transcription of mt19937ar.c's seeding."""
    assert np.random.RandomState(SEED).get_state()[1].tolist() == _init_genrand(SEED)


@pytest.mark.parametrize("seed", [0, 1, SEED, 2**40 + 3])
def test_python3_float_stream_is_mt19937_init_by_array(seed):
    """random.Random(seed).random() is MT19937 seeded by init_by_array of the
    seed's 32-bit words, drawing 53-bit floats: what Python 2.7 does too.
    Checked against NumPy's own MT19937 and 53-bit floats (random_sample)
    started from that state."""
    rng = br.python_stream(seed)
    ours = np.array([rng.random() for _ in range(2000)])
    numpy_mt = np.random.RandomState()
    numpy_mt.set_state(("MT19937", np.array(_init_by_array(_seed_words(seed)), np.uint32), 624, 0, 0.0))
    assert np.array_equal(ours, numpy_mt.random_sample(2000))


def test_first_draws_equal_cpython_27():
    """Reference values printed by CPython 2.7.18: ``random.seed(12345678);
    [random.random() for _ in range(3)]`` and then ``random.shuffle(range(10))``."""
    rng = br.python_stream(SEED)
    assert [rng.random() for _ in range(3)] == [0.7202671550185803, 0.6330310001166692, 0.22877255649315598]
    order = list(range(10))
    br.shuffle_py27(order, rng)
    assert order == [7, 3, 9, 8, 1, 0, 6, 4, 5, 2]


def _hand_shuffle_27(order, floats):
    """Python 2.7's shuffle written another way: the swap partners from a list
    of pre-drawn floats, position n−1 first."""
    out = list(order)
    n = len(out)
    for k, i in enumerate(range(n - 1, 0, -1)):
        j = int(floats[k] * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


@pytest.mark.parametrize("n", [10, 1000])
def test_epoch_orders_are_py27_shuffles_each_permuting_the_last(n):
    epochs = 3
    orders = br.book_orders(SEED, n, epochs)
    rng = random.Random(SEED)
    order = list(range(n))
    for e in range(epochs):  # epoch e shuffles the order epoch e-1 left (the book shuffles in place)
        order = _hand_shuffle_27(order, [rng.random() for _ in range(n - 1)])
        assert orders[e].tolist() == order
        assert sorted(order) == list(range(n))
    assert orders.dtype == np.int32 and orders.shape == (epochs, n)


def test_python3_shuffle_gives_other_orders():
    """Python 3's random.shuffle draws with _randbelow: other permutations from the same seed."""
    py3 = list(range(1000))
    random.Random(SEED).shuffle(py3)
    assert br.book_orders(SEED, 1000, 1)[0].tolist() != py3


def test_epoch_orders_continue_the_stream_and_the_list():
    """Two SGD calls on one list (weight_initialization.py) equal one call of all the epochs."""
    rng, order = br.python_stream(SEED), list(range(100))
    first = br.epoch_orders(rng, order, 2)
    second = br.epoch_orders(rng, order, 3)
    assert np.array_equal(np.concatenate([first, second]), br.book_orders(SEED, 100, 5))


def _sizes_count(sizes):
    return sum(sizes[1:]) + sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _split_book_draws(flat, sizes):
    """One initializer's draws (biases of every layer, then weights of every
    layer, each row-major in the book's [n_out, n_in] layout) from a flat run of N(0, 1) draws."""
    biases, weights, k = [], [], 0
    for n_out in sizes[1:]:
        biases.append(flat[k:k + n_out])
        k += n_out
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(flat[k:k + n_in * n_out].reshape(n_out, n_in))
        k += n_in * n_out
    return biases, weights


def test_network2_weights_are_the_seeded_randomstate_draws_in_the_books_order():
    """The default initializer's draws come first (the constructor), the large
    initializer's second; legacy randn gives the same sequence however the
    draws are split into calls, so one flat draw is the reference."""
    count = _sizes_count(SIZES)
    flat = np.random.RandomState(SEED).randn(2 * count)
    default_b, default_w = _split_book_draws(flat[:count], SIZES)
    large_b, large_w = _split_book_draws(flat[count:], SIZES)
    default = br.network2_weights(SEED, SIZES)
    large = br.network2_weights(SEED, SIZES, large=True)
    for layer, w, b, n_in in zip(default, default_w, default_b, SIZES):
        assert layer["w"].shape == (w.shape[1], w.shape[0]) and layer["b"].shape == b.shape
        assert np.array_equal(layer["w"], w.T / np.sqrt(n_in)) and np.array_equal(layer["b"], b)
    for layer, w, b in zip(large, large_w, large_b):
        assert np.array_equal(layer["w"], w.T) and np.array_equal(layer["b"], b)
    assert large[0]["b"][0] == flat[count]  # the first draw of the second initializer


def test_network_weights_draw_biases_then_weights_once():
    count = _sizes_count(SIZES)
    biases, weights = _split_book_draws(np.random.RandomState(SEED).randn(count), SIZES)
    params = br.network_weights(SEED, SIZES)
    assert all(np.array_equal(p["w"], w.T) and np.array_equal(p["b"], b)
               for p, w, b in zip(params, weights, biases))


def test_book_pixels_are_byte_over_256_in_float32():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256)
    ours = pixels.astype(np.float32) / np.float32(255.0)      # this project's loader
    book = br.book_pixels(ours)
    assert book.dtype == np.float32
    assert np.array_equal(book, pixels.astype(np.float32) / np.float32(256.0))
    assert book.max() == np.float32(0.99609375)
    assert np.array_equal(br.book_pixels(book), book)           # the pickle's values stay as they are


def test_book_pixels_refuse_values_that_are_not_bytes():
    with pytest.raises(ValueError, match="byte/255"):
        br.book_pixels(np.array([[0.5 / 255.0, 0.3]], np.float32))
