"""expand_mnist: the book's expanded training set, 250,000 images.

The book's ``expand_mnist.py`` appends to each of the 50,000 training images
its four displacements by one pixel (zero filled; in the book's order: down,
up, right, left), shuffles, and saves the result. Here the shuffle is seeded
(see `nndl_jax.data.expand`) and the result is saved as a compressed ``.npz``
of uint8 pixels (about 1/4 the size of float32), written to a temporary file
and moved into place atomically:

    python -m nndl_jax.expand_mnist          # or: nndl-jax expand

`load_expanded` reads it back (making it first if it is missing). Only the
training set is expanded; validation and test are the usual ones.

The book's own file, for the book's call
``network3.load_data_shared("../data/mnist_expanded.pkl.gz")``, is written by
`write_book_pickle` (slower and about 5 times larger; the experiments use the
``.npz``):

    python -m nndl_jax.expand_mnist --book-pickle ../data/mnist_expanded.pkl.gz
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np

from nndl_jax import files, seeds
from nndl_jax.data import (
    EXPANSION_SEED,
    N_PIXELS,
    N_SHIFTS,
    N_TRAIN,
    Dataset,
    MNISTError,
    cache_dir,
    expand,
    load_mnist,
)

__all__ = ["DEFAULT_SEED", "expanded_path", "expand_training_data", "load_expanded", "read_expanded",
           "make_book_pickle", "write_book_pickle", "main"]

DEFAULT_SEED = 0


def check_seed(seed) -> int:
    """``seed`` as an int in [0, 2**32): the one seed check (``seeds.check_seed``)."""
    return seeds.check_seed(seed, EXPANSION_SEED)


def check_out_dir(out_dir) -> None:
    """Refuse, before any work, an ``out_dir`` that cannot become a folder we
    write into: a file (or a path through one), or a folder not writable."""
    if out_dir is None:
        return
    folder = Path(out_dir)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "" if existing == folder else f" ({existing} is a file)"
        raise ValueError(f"--out-dir {folder} is not a folder{where}: give a folder to save the "
                         "expanded set in (it is created when missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out-dir {folder}: cannot write into {existing} (no permission); give another folder")


def expanded_path(seed: int = DEFAULT_SEED, out_dir=None) -> Path:
    """Where the expanded set for ``seed`` lives: ``out_dir`` or ``<cache>/expanded``."""
    seed = check_seed(seed)
    folder = Path(out_dir) if out_dir is not None else cache_dir() / "expanded"
    return folder / f"mnist_expanded_seed{seed}.npz"


def expand_training_data(data_dir=None, seed: int = DEFAULT_SEED, out_dir=None,
                         *, verbose: bool = True) -> Path:
    """Make the expanded training set from MNIST in ``data_dir``; return its path.

    ``seed`` fixes the shuffle; ``out_dir`` defaults to the user cache
    (``$XDG_CACHE_HOME/nndl-jax/expanded``), never the data folder, which may
    be read-only. An existing file is replaced only by a complete new one.
    """
    seed = check_seed(seed)
    check_out_dir(out_dir)
    training = load_mnist(data_dir).training
    pixels = np.rint(training.x * 255.0).astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(255.0), training.x):
        pixels = training.x  # not 8-bit pixels/255 (e.g. the book's pickle, /256): keep floats
    if verbose:
        print(f"Expanding the MNIST training set ({len(pixels)} images, seed {seed})")
    start = time.perf_counter()
    expanded = expand(pixels, training.y, seed=seed)
    path = expanded_path(seed, out_dir)
    files.atomic_write(path, lambda f: np.savez_compressed(f, x=expanded.x, y=expanded.y.astype(np.uint8),
                                                           seed=np.int64(seed)), parents=True)
    if verbose:
        print(f"Saved {len(expanded.y)} images to {path} in {time.perf_counter() - start:.1f} s")
    return path


def load_expanded(data_dir=None, seed: int = DEFAULT_SEED, out_dir=None) -> Dataset:
    """The expanded training set (x float32 [250000, 784], y int32), made if missing."""
    path = expanded_path(seed, out_dir)
    if not path.is_file():
        expand_training_data(data_dir, seed, out_dir)
    return read_expanded(path, seed)


def read_expanded(path, seed: int, n: int = N_SHIFTS * N_TRAIN) -> Dataset:
    """The expanded set saved in ``path``, after checking that it is the one
    asked for: made with ``seed`` (checked first, before the images are
    read), ``n`` images of 784 pixels, labels that are digits. Anything else
    is an `MNISTError` that names the file and says to delete it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            stored_seed = np.asarray(f["seed"])
            if stored_seed.shape != () or stored_seed.dtype.kind not in "iu" or int(stored_seed) != seed:
                raise MNISTError(f"{path}: made with seed {stored_seed.tolist()}, not seed {seed}; "
                                 "delete it to rebuild (or ask for its seed).")
            x, y = f["x"], f["y"]
    except MNISTError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read means a bad file
        reason = "not a .npz file" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise MNISTError(f"{path}: cannot read the expanded set ({reason}); delete it to rebuild.") from None
    if x.shape != (n, N_PIXELS) or y.shape != (n,):
        raise MNISTError(f"{path}: holds x {x.shape}, y {y.shape}; expected ({n}, {N_PIXELS}), ({n},). "
                         "Delete it to rebuild.")
    if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise MNISTError(f"{path}: labels of dtype {y.dtype} over [{y.min()}, {y.max()}] are not digits 0-9. "
                         "Delete it to rebuild.")
    if x.dtype == np.uint8:
        x = x.astype(np.float32)
        x /= np.float32(255.0)
    elif x.dtype.kind != "f" or not (np.all(np.isfinite(x)) and x.min() >= 0 and x.max() <= 1):
        raise MNISTError(f"{path}: pixels of dtype {x.dtype} are not all numbers in [0, 1]. Delete it to rebuild.")
    return Dataset(x.astype(np.float32, copy=False), y.astype(np.int32))


# The functions an array and a NumPy scalar reduce to, and their NumPy 1 names.
_NUMPY1_NAMES = {id(np.zeros(1).__reduce__()[0]): b"_reconstruct", id(np.float64(0).__reduce__()[0]): b"scalar"}


class _BookPickler(pickle._Pickler):
    """A protocol-2 pickler that names NumPy's array and scalar reconstructors
    ``numpy.core.multiarray``, as NumPy 1 (and the book's Python 2) wrote and
    read them; NumPy 2 writes ``numpy._core.multiarray``, which older NumPy
    cannot import. (NumPy 2 still reads the old name.) The pure-Python
    pickler is the one whose ``save_global`` can be overridden."""

    def save_global(self, obj, name=None):
        old_name = _NUMPY1_NAMES.get(id(obj))
        if old_name is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + old_name + b"\n")
        self.memoize(obj)
        return None


def write_book_pickle(path, training, validation, test, *, compresslevel: int = 6) -> Path:
    """Write ``(training, validation, test)`` as the book's expand_mnist.py writes
    ``mnist_expanded.pkl.gz``; return the path.

    The layout is the book's: a gzipped protocol-2 pickle of
    ``([images, labels], (x, y), (x, y))``, where ``images`` is a list of
    float32 arrays of 784 pixels and ``labels`` a list of ints (the book's
    ``[list(d) for d in zip(*pairs)]``), and validation and test are
    ``(x float32 [n, 784], y int64 [n])``. It loads with the book's
    ``load_data_shared`` (``cPickle.load``; in Python 3
    ``pickle.load(f, encoding="latin1")``), with NumPy 1 or 2, and with
    ``network3.load_data_shared(path)``. Written to a temporary file beside
    ``path`` and renamed, so a failure leaves no partial file; the folder
    must exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path.name}: the folder {path.parent.resolve()} does not exist")
    images, labels = training
    validation, test = ((np.asarray(x, np.float32), np.asarray(y, np.int64)) for x, y in (validation, test))
    content = ([list(np.asarray(images, np.float32)), [int(v) for v in labels]], validation, test)

    def write(raw):
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel) as f:
            _BookPickler(f, protocol=2).dump(content)

    return files.atomic_write(path, write)


def make_book_pickle(path, data_dir=None, seed: int = DEFAULT_SEED, *, verbose: bool = True) -> Path:
    """The book's expand_mnist.py: expand the MNIST training set in
    ``data_dir`` and write it with the usual validation and test sets to
    ``path`` in the book's layout (`write_book_pickle`). As the book's, an
    existing file is left alone. ``seed`` fixes the shuffle (the book's
    ``random.shuffle`` was unseeded)."""
    path, seed = Path(path), check_seed(seed)
    if verbose:
        print("Expanding the MNIST training set")
    if path.exists():
        if verbose:
            print(f"The expanded training set already exists ({path}).  Exiting.")
        return path
    splits = load_mnist(data_dir)
    expanded = expand(splits.training.x, splits.training.y, seed=seed)
    if verbose:
        print(f"Saving {len(expanded.y)} expanded images to {path}. This may take a few minutes.")
    return write_book_pickle(path, expanded, splits.validation, splits.test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nndl_jax.expand_mnist",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--book-pickle", metavar="PATH", default=None,
                        help="write the book's mnist_expanded.pkl.gz to PATH instead of the .npz cache")
    args = parser.parse_args(argv)
    if args.book_pickle:
        make_book_pickle(args.book_pickle, args.data_dir, args.seed)
    else:
        expand_training_data(args.data_dir, args.seed, args.out_dir)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $NNDL_JAX_DATA or the cache)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed (default %(default)s)")
    parser.add_argument("--out-dir", default=None, help="where to write (default: <cache>/expanded)")


if __name__ == "__main__":
    raise SystemExit(main())
