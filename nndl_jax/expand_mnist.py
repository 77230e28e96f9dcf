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
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from nndl_jax.data import Dataset, MNISTError, N_PIXELS, N_SHIFTS, N_TRAIN, cache_dir, expand, load_mnist

__all__ = ["DEFAULT_SEED", "expanded_path", "expand_training_data", "load_expanded", "main"]

DEFAULT_SEED = 0


def expanded_path(seed: int = DEFAULT_SEED, out_dir=None) -> Path:
    """Where the expanded set for ``seed`` lives: ``out_dir`` or ``<cache>/expanded``."""
    folder = Path(out_dir) if out_dir is not None else cache_dir() / "expanded"
    return folder / f"mnist_expanded_seed{seed}.npz"


def expand_training_data(data_dir=None, seed: int = DEFAULT_SEED, out_dir=None,
                         *, verbose: bool = True) -> Path:
    """Make the expanded training set from MNIST in ``data_dir``; return its path.

    ``seed`` fixes the shuffle; ``out_dir`` defaults to the user cache
    (``$XDG_CACHE_HOME/nndl-jax/expanded``), never the data folder, which may
    be read-only. An existing file is replaced only by a complete new one.
    """
    training = load_mnist(data_dir).training
    pixels = np.rint(training.x * 255.0).astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / np.float32(255.0), training.x):
        pixels = training.x  # not 8-bit pixels/255 (e.g. the book's pickle, /256): keep floats
    if verbose:
        print(f"Expanding the MNIST training set ({len(pixels)} images, seed {seed})")
    start = time.perf_counter()
    expanded = expand(pixels, training.y, seed=seed)
    path = expanded_path(seed, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, x=expanded.x, y=expanded.y.astype(np.uint8),
                                seed=np.int64(seed))
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if verbose:
        print(f"Saved {len(expanded.y)} images to {path} in {time.perf_counter() - start:.1f} s")
    return path


def load_expanded(data_dir=None, seed: int = DEFAULT_SEED, out_dir=None) -> Dataset:
    """The expanded training set (x float32 [250000, 784], y int32), made if missing."""
    path = expanded_path(seed, out_dir)
    if not path.is_file():
        expand_training_data(data_dir, seed, out_dir)
    try:
        with np.load(path) as f:
            x, y, stored_seed = f["x"], f["y"], int(f["seed"])
    except Exception as e:  # noqa: BLE001 - any failure here means a bad file
        raise MNISTError(f"{path}: cannot read the expanded set ({e}); delete it to rebuild.") from e
    n = N_SHIFTS * N_TRAIN
    if x.shape != (n, N_PIXELS) or y.shape != (n,) or stored_seed != seed:
        raise MNISTError(f"{path}: holds x {x.shape}, y {y.shape}, seed {stored_seed}; expected "
                         f"({n}, {N_PIXELS}), ({n},), seed {seed}. Delete it to rebuild.")
    if x.dtype == np.uint8:
        x = x.astype(np.float32)
        x /= np.float32(255.0)
    return Dataset(x.astype(np.float32, copy=False), y.astype(np.int32))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nndl_jax.expand_mnist",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    expand_training_data(args.data_dir, args.seed, args.out_dir)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $NNDL_JAX_DATA or the cache)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed (default %(default)s)")
    parser.add_argument("--out-dir", default=None, help="where to write (default: <cache>/expanded)")


if __name__ == "__main__":
    raise SystemExit(main())
