"""mnist_loader: the book's loader, with the book's names and return values.

    >>> from nndl_jax import mnist_loader
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()

The files are found, verified and (into the cache only) downloaded by
`nndl_jax.data.load_mnist`; this module only reshapes the arrays into the
book's layout. The project itself uses the array form, `load_arrays`. The
book's calls (`load_data`, `load_data_wrapper`) say "mnist_loader.py: loading
MNIST ..." on a line of their own before the wait, the first time in a process
(`nndl_jax.waits`).

Pixels are byte/255 (0 … 1.0). ``book_pixels=True`` gives them as the book's
``mnist.pkl.gz`` stores them, byte/256 (0 … 0.99609375; see
`nndl_jax.book_random.book_pixels`): what an exact replay of the book's
seeded runs needs (``network2.Network(..., book_seed=S)``).
"""

from __future__ import annotations

import sys

import numpy as np

from nndl_jax import book_random, waits
from nndl_jax.data import Dataset, Splits, load_mnist

__all__ = ["load_data", "load_data_wrapper", "vectorized_result", "load_arrays", "with_book_pixels"]


def load_arrays(data_dir=None, *, book_pixels=False) -> Splits:
    """The book's split as arrays: ``Splits(training, validation, test)`` of
    `nndl_jax.data.Dataset` (x float32 [n, 784] in [0, 1], y int32 [n]);
    ``book_pixels``: x as the book's pickle holds it (byte/256)."""
    splits = load_mnist(data_dir)
    return with_book_pixels(splits) if book_pixels else splits


def with_book_pixels(splits) -> Splits:
    """``splits`` with every image as the book's pickle holds it (float32 byte/256)."""
    return Splits(*(Dataset(book_random.book_pixels(d.x), d.y) for d in splits))


def load_data(data_dir=None, *, book_pixels=False):
    """Return ``(training_data, validation_data, test_data)`` as in the book.

    Each is a pair ``(x, y)``: ``x`` a float32 array [n, 784] of pixel
    intensities in [0, 1] (byte/256 with ``book_pixels``), ``y`` an int64
    array [n] of digits; n is 50,000 for training, 10,000 for validation and test.
    """
    _say_loading()
    return tuple((d.x, d.y.astype(np.int64)) for d in load_arrays(data_dir, book_pixels=book_pixels))


def load_data_wrapper(data_dir=None, *, book_pixels=False):
    """Return ``(training_data, validation_data, test_data)`` as lists, as in the book.

    ``training_data`` is a list of 50,000 pairs ``(x, y)``: ``x`` a (784, 1)
    float32 column of pixels, ``y`` the (10, 1) one-hot `vectorized_result`
    of the digit. ``validation_data`` and ``test_data`` are lists of 10,000
    pairs ``(x, y)`` with ``y`` the digit as an int. (The book's Python 2 code
    returned lists; its Python 3 ports return ``zip`` objects, which can be
    consumed only once: these are lists.) ``book_pixels``: pixels byte/256, as
    the book's pickle holds them (for ``Network(..., book_seed=S)`` replays).
    """
    _say_loading()
    tr_d, va_d, te_d = load_arrays(data_dir, book_pixels=book_pixels)
    one_hot = np.eye(10)[tr_d.y][:, :, None]  # float64, as the book's vectorized_result
    training_data = list(zip(_columns(tr_d.x), one_hot))
    validation_data = list(zip(_columns(va_d.x), va_d.y.tolist()))
    test_data = list(zip(_columns(te_d.x), te_d.y.tolist()))
    return training_data, validation_data, test_data


def _say_loading():
    """The book's calls' line before their wait, once per process: reading
    (and, the first time, downloading and verifying) MNIST takes seconds to
    minutes, which should not pass in silence."""
    waits.say("mnist_loader.py", waits.LOADING_MNIST, once=True, stream=sys.stderr)


def vectorized_result(j):
    """A (10, 1) unit vector with 1.0 in position ``j`` (float64, as in the book):
    the desired output for digit ``j``. ``j`` must be a digit 0-9 (the book's
    would take -1 for 9 and True for 1)."""
    if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, np.integer)) or not 0 <= j < 10:
        raise ValueError(f"vectorized_result takes a digit 0-9, got {j!r}")
    e = np.zeros((10, 1))
    e[j] = 1.0
    return e


def _columns(x):
    # One (784, 1) view per image; the views share the one big array.
    return list(x.reshape(len(x), -1, 1))
