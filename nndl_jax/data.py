"""MNIST for the book: readers, verification, the cache, the split, expansion.

NumPy and the standard library only; from the package only ``seeds`` (NumPy
only too, the one seed check), so every other module can rely on it.

Where the data comes from (`resolve_data_dir`):

1. the ``data_dir`` argument, if given;
2. the ``NNDL_JAX_DATA`` environment variable, if set;
3. the user cache, ``$XDG_CACHE_HOME/nndl-jax/mnist`` (``~/.cache/nndl-jax/mnist``).

What is read from that folder (`load_mnist`): the four IDX files of the
official MNIST database, each either gzip-compressed
(``train-images-idx3-ubyte.gz``) or raw (``train-images-idx3-ubyte``);
failing that, the book's ``mnist.pkl.gz``. Every IDX file is checked against
the published MD5 of its *uncompressed* content, so a re-compressed copy is
accepted and a corrupt, truncated or foreign one is refused with an
`MNISTError` that names the file. A file that fails is never deleted or
overwritten.

Downloads: when IDX files are missing, ``download=None`` (the default)
downloads them only when the folder is the user cache (case 3): a folder
the user named (cases 1 and 2) is theirs and is only read. ``download=True``
downloads the missing files into any folder, ``download=False`` never
downloads. Each file is fetched from the first mirror in `MIRRORS` that
answers with the right content (verified in memory), written to a temporary
file in the same folder, and only then linked into place, so a failed or
interrupted download leaves nothing behind but what was there before, and a
file that another process put there meanwhile is kept as it is. A folder that
cannot be written gives an `MNISTError` before anything is fetched.

The book's split: the first 50,000 training images train, the last 10,000
validate, the 10,000 t10k images test. Images are float32 rows of 784 pixels
(pixel / 255, in [0, 1]); labels are int32. (The book's ``mnist.pkl.gz``
stores pixel / 256; it is read as stored.)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nndl_jax.seeds import check_seed

__all__ = [
    "Dataset",
    "Splits",
    "MNISTError",
    "IDX_FILES",
    "MIRRORS",
    "PICKLE_NAME",
    "N_TRAIN",
    "N_VALIDATION",
    "N_TEST",
    "resolve_data_dir",
    "cache_dir",
    "read_idx",
    "read_pickle",
    "check_file",
    "download_mnist",
    "load_mnist",
    "as_arrays",
    "is_pair_of_sets",
    "check_finite",
    "expand",
]


class Dataset(NamedTuple):
    """Images ``x`` float32 ``[n, 784]`` in [0, 1] and labels ``y`` int32 ``[n]``."""

    x: np.ndarray
    y: np.ndarray


class Splits(NamedTuple):
    """The book's three sets: 50,000 training, 10,000 validation, 10,000 test."""

    training: Dataset
    validation: Dataset
    test: Dataset


class MNISTError(ValueError):
    """MNIST files that are missing, corrupt, or cannot be downloaded."""


N_TRAIN, N_VALIDATION, N_TEST = 50_000, 10_000, 10_000
IMAGE_SIZE = 28
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE

# IDX magic numbers: 0x00000803 (unsigned bytes, 3 dims) and 0x00000801 (1 dim).
MAGIC_IMAGES, MAGIC_LABELS = 2051, 2049


class IdxFile(NamedTuple):
    name: str  # raw file name; the gzip file adds ".gz"
    magic: int
    n_bytes: int  # uncompressed size
    md5: str  # MD5 of the uncompressed content, as published with MNIST


IDX_FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", MAGIC_IMAGES, 47_040_016,
                            "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": IdxFile("train-labels-idx1-ubyte", MAGIC_LABELS, 60_008,
                            "a25bea736e30d166cdddb491f175f624"),
    "test_images": IdxFile("t10k-images-idx3-ubyte", MAGIC_IMAGES, 7_840_016,
                           "2646ac647ad5339dbf082846283269ea"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", MAGIC_LABELS, 10_008,
                           "27ae3e4e09519cfbb04c329615203637"),
}

# Public mirrors of the gzip files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

PICKLE_NAME = "mnist.pkl.gz"
ENV_VAR = "NNDL_JAX_DATA"

_FILE_NAMES = ", ".join(f.name + ".gz" for f in IDX_FILES.values())

_NO_DATA_HINT = (
    f"Set {ENV_VAR} to a folder holding a local copy of MNIST (the four files "
    f"{_FILE_NAMES}, gzipped or raw, or the book's {PICKLE_NAME})."
)


def _copy_hint(folder: Path) -> str:
    """What to do when MNIST cannot be downloaded into ``folder``: copy it there, or point elsewhere."""
    return (f"To use a copy you already have, copy the four MNIST files ({_FILE_NAMES}; gzipped or raw) "
            f"into {folder}, or set {ENV_VAR} to a folder that holds them (or the book's {PICKLE_NAME}).")


# ---------------------------------------------------------------------------
# Where the data lives


def cache_dir() -> Path:
    """The package's cache folder: ``$XDG_CACHE_HOME/nndl-jax`` or ``~/.cache/nndl-jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nndl-jax"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The MNIST folder: ``data_dir``, else ``$NNDL_JAX_DATA``, else the cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return cache_dir() / "mnist"


def _is_user_choice(data_dir) -> bool:
    return data_dir is not None or bool(os.environ.get(ENV_VAR))


def find_idx(data_dir: Path, key: str) -> Path | None:
    """The path of IDX file ``key`` in ``data_dir`` (gzip preferred), or None."""
    spec = IDX_FILES[key]
    for name in (spec.name + ".gz", spec.name):
        path = Path(data_dir) / name
        if path.is_file():
            return path
    return None


# ---------------------------------------------------------------------------
# Reading and verifying IDX files


def _read_content(path: Path) -> bytes:
    """The uncompressed bytes of the file ``path``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise MNISTError(f"{path}: cannot read the file ({e}).") from e
    return _uncompressed(raw, path)


def _uncompressed(raw: bytes, source) -> bytes:
    """``raw`` decompressed if it is gzip (recognised by its magic bytes), else as it is.

    ``source`` (a path or URL) names the bytes in the error.
    """
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, ValueError, zlib.error) as e:
        raise MNISTError(
            f"{source}: the gzip stream is corrupt or truncated ({e}). "
            "Replace the file with a good copy (delete it to let the loader "
            "download it again, if the folder is the cache)."
        ) from e


def _parse_idx(content: bytes, path, expect_magic: int | None = None) -> np.ndarray:
    if len(content) < 4:
        raise MNISTError(f"{path}: truncated file: {len(content)} bytes, not even an IDX header.")
    magic = int.from_bytes(content[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        kind = "images" if expect_magic == MAGIC_IMAGES else "labels"
        raise MNISTError(
            f"{path}: wrong magic number {magic} (expected {expect_magic} for IDX {kind}). "
            "This is not the MNIST file its name says; replace it with the original."
        )
    if content[0] != 0 or content[1] != 0 or content[2] != 0x08 or not 1 <= content[3] <= 3:
        raise MNISTError(
            f"{path}: magic number {magic} is not an IDX file of unsigned bytes; "
            "replace it with the original MNIST file."
        )
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise MNISTError(f"{path}: truncated file: the IDX header needs {header} bytes, "
                         f"the file has {len(content)}.")
    dims = tuple(int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(content) < expected:
        raise MNISTError(
            f"{path}: truncated file: the header promises {dims} values "
            f"({expected} bytes), the file has {len(content)} bytes. "
            "Replace it with a complete copy."
        )
    if len(content) > expected:
        raise MNISTError(
            f"{path}: {len(content) - expected} unexpected bytes after the "
            f"{dims} values the header promises; replace it with the original."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or raw) as a uint8 array.

    ``expect_magic`` (2051 images, 2049 labels) is checked when given.
    No checksum is checked here; see `check_file`.
    """
    return _parse_idx(_read_content(Path(path)), path, expect_magic)


def _verify_content(content: bytes, path, spec: IdxFile) -> np.ndarray:
    """Parse ``content`` as the MNIST file ``spec`` and check its MD5."""
    array = _parse_idx(content, path, spec.magic)
    digest = hashlib.md5(content).hexdigest()
    if digest != spec.md5:
        raise MNISTError(
            f"{path}: checksum mismatch: MD5 of the uncompressed content is "
            f"{digest}, the published MNIST value for {spec.name} is {spec.md5}. "
            "The file is corrupt or not the original; it was left untouched. "
            "Replace it with a good copy."
        )
    return array


def check_file(path: str | os.PathLike, key: str) -> np.ndarray:
    """Read MNIST file ``key`` (e.g. "train_images") from ``path`` and verify it.

    Returns the uint8 array; raises `MNISTError` on a wrong magic number,
    truncation or checksum mismatch.
    """
    return _verify_content(_read_content(Path(path)), path, IDX_FILES[key])


def _dataset_from_uint8(images: np.ndarray, labels: np.ndarray, images_path, labels_path) -> Dataset:
    if len(images) != len(labels):
        raise MNISTError(
            f"image/label count mismatch: {images_path} holds {len(images)} images, "
            f"{labels_path} holds {len(labels)} labels."
        )
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MNISTError(f"{images_path}: images are {images.shape[1:]}, not 28x28.")
    if labels.ndim != 1:
        raise MNISTError(f"{labels_path}: labels have shape {labels.shape}, not [n].")
    if labels.size and labels.max() > 9:
        raise MNISTError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9.")
    x = images.reshape(len(images), N_PIXELS).astype(np.float32)
    x /= np.float32(255.0)
    return Dataset(x, labels.astype(np.int32))


def _load_idx(paths: dict[str, Path], verify: bool) -> Splits:
    arrays = {}
    for key, path in paths.items():
        spec = IDX_FILES[key]
        content = _read_content(path)
        arrays[key] = (_verify_content(content, path, spec) if verify
                       else _parse_idx(content, path, spec.magic))
    train = _dataset_from_uint8(arrays["train_images"], arrays["train_labels"],
                                paths["train_images"], paths["train_labels"])
    test = _dataset_from_uint8(arrays["test_images"], arrays["test_labels"],
                               paths["test_images"], paths["test_labels"])
    if len(train.y) != N_TRAIN + N_VALIDATION or len(test.y) != N_TEST:
        raise MNISTError(
            f"{paths['train_images']}, {paths['test_images']}: expected 60,000 training "
            f"and 10,000 test images, found {len(train.y)} and {len(test.y)}."
        )
    return Splits(
        Dataset(train.x[:N_TRAIN], train.y[:N_TRAIN]),
        Dataset(train.x[N_TRAIN:], train.y[N_TRAIN:]),
        test,
    )


# ---------------------------------------------------------------------------
# The book's mnist.pkl.gz


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else (a pickle can run code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def read_pickle(path: str | os.PathLike) -> Splits:
    """Read the book's ``mnist.pkl.gz``: a pickled ((x, y), (x, y), (x, y)).

    The book's file is a Python 2 pickle, read with ``encoding="latin1"``.
    Only NumPy arrays are unpickled. Shapes and labels are checked.
    """
    path = Path(path)
    content = _read_content(path)
    try:
        sets = _NumpyOnlyUnpickler(io.BytesIO(content), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise MNISTError(f"{path}: not a readable pickle of MNIST arrays ({e}).") from e
    try:
        parts = [tuple(s) for s in sets]
        if len(parts) != 3 or any(len(p) != 2 for p in parts):
            raise TypeError
    except TypeError:
        raise MNISTError(f"{path}: expected ((x, y), (x, y), (x, y)), "
                         f"found {type(sets).__name__}.") from None
    out = []
    for name, (x, y) in zip(Splits._fields, parts):
        try:
            out.append(as_arrays((np.asarray(x), np.asarray(y))))
        except ValueError as e:
            raise MNISTError(f"{path}: {name} set: {e}") from e
    return Splits(*out)


# ---------------------------------------------------------------------------
# Download


def _default_opener(url: str, timeout: float = 60.0):
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https mirrors


# Tests replace this (or pass ``opener=``) to download without a network.
urlopen: Callable[..., Any] = _default_opener


def _unwritable(data_dir: Path, e: OSError) -> MNISTError:
    return MNISTError(
        f"cannot write into {data_dir} to download MNIST ({e}). Make the folder "
        "writable, or download into a folder you can write (data_dir=... with "
        f"download=True, or nndl-jax data --data-dir D --download). {_NO_DATA_HINT}"
    )


@contextlib.contextmanager
def _partial_file(data_dir: Path, name: str) -> Iterator[tuple[io.BufferedWriter, Path]]:
    """A new private temporary file in ``data_dir``, open for writing; removed on exit.

    Creating it is the first write into ``data_dir``, so a folder that cannot
    be written fails here, before anything is downloaded.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.", suffix=".part")
    except OSError as e:
        raise _unwritable(data_dir, e) from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out, tmp
    finally:
        tmp.unlink(missing_ok=True)


def _download_verified(spec: IdxFile, mirrors, opener, data_dir: Path) -> bytes:
    """The gzip file ``spec`` from the first mirror whose copy verifies."""
    errors = []
    for mirror in mirrors:
        url = mirror + spec.name + ".gz"
        try:
            with opener(url) as response:
                payload = b"".join(iter(lambda r=response: r.read(1 << 20), b""))
            _verify_content(_uncompressed(payload, url), url, spec)
            return payload
        except Exception as e:  # noqa: BLE001 - try the next mirror
            errors.append(f"{url}: {e}")
    raise MNISTError(
        f"MNIST could not be downloaded into {data_dir}: {spec.name}.gz failed at every mirror:\n  "
        + "\n  ".join(errors) + "\n" + _copy_hint(data_dir)
    )


def _link_into_place(tmp: Path, target: Path) -> Path:
    """Give the finished file ``tmp`` the name ``target``, unless ``target`` exists.

    ``os.link`` is atomic and refuses an existing name, so a file that another
    process created meanwhile is kept as it is (ours is dropped). On a
    filesystem without hard links, ``os.replace`` after a last check.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        pass
    except OSError:
        if not target.exists():
            os.replace(tmp, target)
    return target


def _fetch_one(data_dir: Path, key: str, mirrors, opener) -> Path:
    spec = IDX_FILES[key]
    with _partial_file(data_dir, spec.name) as (out, tmp):
        payload = _download_verified(spec, mirrors, opener, data_dir)
        try:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private
            # A copy (gzipped or raw) that appeared meanwhile is the user's: keep it.
            return find_idx(data_dir, key) or _link_into_place(tmp, data_dir / (spec.name + ".gz"))
        except OSError as e:
            raise _unwritable(data_dir, e) from e


def download_mnist(data_dir: str | os.PathLike | None = None, *, mirrors=MIRRORS,
                   opener: Callable[..., Any] | None = None) -> dict[str, Path]:
    """Download the IDX files missing from ``data_dir``; return all four paths.

    Files already there (gzipped or raw) are left alone, also those that
    appear while downloading. Each download is verified, written to a
    temporary file in ``data_dir``, then linked into place. Raises
    `MNISTError` when no mirror gives a good copy or ``data_dir`` cannot be
    written.
    ``opener(url)`` must return a context manager with ``read(n)``; it
    defaults to `urlopen` (``urllib.request.urlopen``).
    """
    data_dir = resolve_data_dir(data_dir)
    opener = opener or urlopen
    created = _missing_folders(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise _unwritable(data_dir, e) from e
    try:
        return {key: find_idx(data_dir, key) or _fetch_one(data_dir, key, mirrors, opener)
                for key in IDX_FILES}
    except BaseException:
        _remove_empty(created)  # a failed (or interrupted) first download leaves no empty folders
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty; keep any that is not."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------
# The front door


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool | None = None,
               *, verify: bool = True) -> Splits:
    """MNIST in the book's split: training (50k), validation (10k), test (10k).

    ``data_dir``: see `resolve_data_dir`. ``download``: None downloads missing
    IDX files only into the user cache; True into any folder; False never.
    ``verify``: check the MD5 of every IDX file (about 0.1 s).
    """
    folder = resolve_data_dir(data_dir)
    paths = {key: find_idx(folder, key) for key in IDX_FILES}
    if all(paths.values()):
        return _load_idx(paths, verify)
    pickle_path = folder / PICKLE_NAME
    if pickle_path.is_file():
        return read_pickle(pickle_path)
    if download is None:
        download = not _is_user_choice(data_dir)
    if download:
        return _load_idx(download_mnist(folder), verify)
    missing = [IDX_FILES[k].name + "[.gz]" for k, p in paths.items() if p is None]
    where = ("the folder you gave" if data_dir is not None
             else f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the cache")
    raise MNISTError(
        f"MNIST not found in {folder} ({where}): missing {', '.join(missing)} "
        f"and no {PICKLE_NAME}; downloading was not allowed here "
        "(pass download=True, or run nndl-jax data --data-dir FOLDER --download, to download "
        "into this folder). " + _copy_hint(folder)
    )


# ---------------------------------------------------------------------------
# One home for the book's data layouts


def _labels(y: np.ndarray, n_classes: int | None, what: str) -> np.ndarray:
    if y.ndim == 3 and y.shape[2] == 1:
        y = y[:, :, 0]
    if y.ndim == 2 and y.shape[1] == 1 and n_classes != 1:
        raise ValueError(f"{what}: labels of shape {y.shape}, a column; pass integer labels as "
                         f"[n] (y.ravel()) or one-hot rows as [n, {n_classes or 'k'}].")
    if y.ndim == 2:  # one-hot
        if n_classes is not None and y.shape[1] != n_classes:
            raise ValueError(f"{what}: one-hot labels are {y.shape[1]} wide, expected {n_classes}.")
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise ValueError(f"{what}: 2-D labels of shape {y.shape} are not one-hot rows "
                             "(each row: one 1, the rest 0).")
        return np.argmax(y, axis=1).astype(np.int32)
    if y.ndim != 1:
        raise ValueError(f"{what}: labels of shape {y.shape}; expected [n] integer labels "
                         "or [n, 10] / [n, 10, 1] one-hot.")
    if not np.issubdtype(y.dtype, np.integer):
        whole = y.dtype.kind == "b" or (y.dtype.kind == "f" and np.all(np.isfinite(y))
                                        and np.all(y == np.floor(y)))
        if not whole:
            raise ValueError(f"{what}: labels of dtype {y.dtype} are not integers (each label a "
                             "whole number: the digit).")
    limit = n_classes if n_classes is not None else LABEL_LIMIT
    if y.size and (y.min() < 0 or y.max() >= limit):
        bad = np.flatnonzero((y < 0) | (y >= limit))
        raise ValueError(f"{what}: labels range over [{y.min()}, {y.max()}], "
                         f"expected [0, {n_classes if n_classes is not None else 'n'}): "
                         f"{_count(len(bad), 'label')} out of range, first at example {bad[0]}"
                         f"{_more(bad)}." + (" Labels are int32: each below 2**31." if y.max() >= LABEL_LIMIT else ""))
    return y.astype(np.int32)


LABEL_LIMIT = 2 ** 31  # labels are int32: a larger one would wrap around


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _more(indices: np.ndarray, shown: int = 5) -> str:
    """`` (examples i, j, ...)`` listing the first few of several ``indices``."""
    if len(indices) < 2:
        return ""
    listed = ", ".join(str(i) for i in indices[:shown])
    return f" (examples {listed}{', ...' if len(indices) > shown else ''})"


def check_finite(x: np.ndarray, what: str = "x") -> np.ndarray:
    """``x`` itself, after checking that every value in it is a finite number.

    One NaN or inf pixel turns every parameter of a network into NaN within
    a mini-batch, so it is refused up front: a ValueError saying how many
    values are not finite, how many NaN and inf, and in which examples (rows
    of ``x``). Costs a min and a max over ``x`` (both propagate NaN and inf);
    the positions are only looked for when something is wrong.
    """
    x = np.asarray(x)
    if x.size == 0 or not np.issubdtype(x.dtype, np.inexact):
        return x
    if np.isfinite(x.min()) and np.isfinite(x.max()):
        return x
    bad = ~np.isfinite(np.atleast_1d(x))
    n_nan = int(np.count_nonzero(np.isnan(x)))
    rows = np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))
    first = [int(i) for i in np.argwhere(bad)[0]]
    where = f"example {first[0]}" + (f", pixel {first[1]}" if bad.ndim == 2
                                     else f", index {tuple(first[1:])}" if bad.ndim > 2 else "")
    n_bad = int(bad.sum())
    raise ValueError(
        f"{what}: {_count(n_bad, 'value')} not finite ({n_nan} NaN, {n_bad - n_nan} inf) "
        f"in {_count(len(rows), 'example')}, first at {where}"
        f"{_more(rows)}. Training on them makes every parameter NaN: fix or drop "
        "those examples (pixels should lie in [0, 1])."
    )


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _stacked(arrays, what: str = "arrays"):
    """``np.stack`` of same-shaped arrays, written into one preallocated array
    (about 3x faster than ``np.stack`` for the book's 50,000 (784, 1) images);
    floating inputs land directly in float32, the dtype ``as_arrays`` returns.
    Arrays of several shapes are refused (never broadcast into each other)."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{what} of several shapes {sorted(shapes)[:3]}; every example needs "
                         "the same shape.")
    dtype = np.result_type(*{a.dtype for a in arrays})
    if np.issubdtype(dtype, np.floating):
        dtype = np.float32
    out = np.empty((len(arrays),) + arrays[0].shape, dtype)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, which check_finite refuses
        for i, a in enumerate(arrays):
            out[i] = a
    return out


def _is_example(item) -> bool:
    """Whether ``item`` is one of the book's ``(x, y)`` examples (an image and
    its label) rather than a whole set of images: a pair whose two parts differ
    in shape, or a tuple whose first part is an array (as ``zip`` makes them)."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return False
    if isinstance(item, tuple) and _is_array(item[0]):
        return True
    try:
        return np.shape(item[0]) != np.shape(item[1])
    except ValueError:  # ragged parts: an image and a label, not a set of equal images
        return True


def _as_array(a, what: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except ValueError as e:
        raise ValueError(f"{what} cannot be read as one array ({e}); give equal-length rows, "
                         "e.g. a NumPy array [n, 784].") from None


def is_pair_of_sets(data) -> bool:
    """Whether ``as_arrays`` reads ``data`` as an ``(x, y)`` pair of sets
    (``x`` all the images, ``y`` all the labels: arrays, lists or any
    array-like) rather than as the book's list of ``(x, y)`` examples (two, say)."""
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and (all(map(_is_array, data)) or not _is_example(data[0])))


def as_arrays(data, *, n_inputs: int | None = N_PIXELS, n_classes: int | None = 10) -> Dataset:
    """Convert any of the book's data layouts to a `Dataset` (x float32, y int32).

    Accepts
      * a `Dataset`, or an ``(x, y)`` pair of arrays (or of anything NumPy
        reads as one: nested lists, JAX arrays): ``x`` ``[n, 784]`` or
        ``[n, 784, 1]`` (uint8 pixels are divided by 255); ``y`` integer labels
        ``[n]`` or one-hot ``[n, 10]`` / ``[n, 10, 1]``;
      * the book's list (or zip) of ``(x, y)`` pairs, ``x`` of shape
        ``(784, 1)``, ``y`` a one-hot ``(10, 1)`` vector or an int.
    A pair of two items is read as ``(x, y)`` sets unless its first item is
    itself an example (an image and a label of another shape, or a tuple
    holding an array, as ``zip`` makes them): then it is a list of two examples.
    ``n_inputs`` / ``n_classes`` are the expected widths (None: any).
    Raises ValueError on empty data, bad shapes, on pixels that are not finite numbers
    (`check_finite`) and on labels that are not integers in
    ``[0, n_classes)``. Pixel values are not range-checked otherwise.
    """
    if is_pair_of_sets(data):
        x, y = _as_array(data[0], "(x, y): x"), _as_array(data[1], "(x, y): y")
        what = "(x, y) arrays"
    else:
        try:
            pairs = list(data)
        except TypeError:
            raise TypeError(f"expected a Dataset, an (x, y) pair of arrays or the book's list of (x, y) "
                            f"pairs; got {type(data).__name__}.") from None
        what = "list of (x, y) pairs"
        if not pairs:
            raise ValueError(f"{what}: empty data (no examples).")
        try:
            xs, ys = zip(*pairs)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: each item must be an (x, y) pair; "
                             f"got {type(pairs[0]).__name__}.") from None
        x = _stacked([np.asarray(a) for a in xs], f"{what}: images")
        if _is_array(ys[0]) and np.ndim(ys[0]):
            y = _stacked([np.asarray(b) for b in ys], f"{what}: labels")
        else:
            y = _as_array(ys, f"{what}: labels")
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{what}: {'x' if x.ndim == 0 else 'y'} is a single value; give x as [n, "
                         f"{n_inputs or 'd'}] images and y as [n] labels.")
    if len(x) == 0:
        raise ValueError(f"{what}: empty data (no examples).")
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim != 2:
        raise ValueError(f"{what}: x has shape {x.shape}; expected [n, {n_inputs or 'd'}] "
                         f"or [n, {n_inputs or 'd'}, 1].")
    if n_inputs is not None and x.shape[1] != n_inputs:
        raise ValueError(f"{what}: x is {x.shape[1]} wide, expected {n_inputs} "
                         "(MNIST images as rows of 28*28 pixels).")
    if len(y) != len(x):
        raise ValueError(f"{what}: {len(x)} images but {len(y)} labels.")
    y = _labels(y, n_classes, what)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    elif not np.issubdtype(x.dtype, np.floating) and x.dtype != np.bool_:
        raise ValueError(f"{what}: x has dtype {x.dtype}; expected floats in [0, 1] or uint8 pixels.")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused just below
        x = np.asarray(x, dtype=np.float32)
    return Dataset(check_finite(x, f"{what}: x"), y)


# ---------------------------------------------------------------------------
# The book's expand_mnist


def _shift(images: np.ndarray, k: int) -> np.ndarray:
    """Shift ``images`` [n, 28, 28] by one pixel with zero fill.

    k = 0: unchanged; then in the book's order (expand_mnist.py, np.roll and a
    zeroed edge): 1 down, 2 up, 3 right, 4 left.
    """
    if k == 0:
        return images
    out = np.zeros_like(images)
    if k == 1:
        out[:, 1:, :] = images[:, :-1, :]
    elif k == 2:
        out[:, :-1, :] = images[:, 1:, :]
    elif k == 3:
        out[:, :, 1:] = images[:, :, :-1]
    elif k == 4:
        out[:, :, :-1] = images[:, :, 1:]
    else:
        raise ValueError(f"shift {k} not in 0..4")
    return out


N_SHIFTS = 5
EXPANSION_SEED = "the expansion's seed"


def expand(x, y, *, seed: int = 0, shuffle: bool = True) -> Dataset:
    """The book's expanded training set: each image and its four one-pixel shifts.

    In book order, example ``5*i + k`` is image ``i`` shifted by `_shift` ``k``
    (0 original, 1 down, 2 up, 3 right, 4 left), zero filled: 50,000 images
    become 250,000. The book then shuffles with an unseeded ``random.shuffle``;
    here ``shuffle=True`` applies ``np.random.default_rng(seed).permutation``,
    so the result is reproducible from ``seed``. ``shuffle=False`` keeps book
    order. ``x`` keeps its dtype if it is uint8 (for compact storage),
    otherwise it is float32 as in `as_arrays`.
    """
    seed = check_seed(seed, EXPANSION_SEED)
    x = np.asarray(x)
    if x.dtype == np.uint8 and (x.ndim not in (2, 3) or np.prod(x.shape[1:]) != N_PIXELS):
        raise ValueError(f"expand: uint8 images of shape {x.shape}; expected [n, {N_PIXELS}] "
                         f"(or [n, {IMAGE_SIZE}, {IMAGE_SIZE}]).")
    if x.dtype == np.uint8:
        data = as_arrays((np.zeros((len(x), N_PIXELS), np.float32), y))
        images = x.reshape(len(x), IMAGE_SIZE, IMAGE_SIZE)
    else:
        data = as_arrays((x, y))
        images = data.x.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    n = len(images)
    order = (np.random.default_rng(seed).permutation(N_SHIFTS * n) if shuffle
             else np.arange(N_SHIFTS * n))
    src, kind = np.divmod(order, N_SHIFTS)
    out = np.empty((N_SHIFTS * n, IMAGE_SIZE, IMAGE_SIZE), dtype=images.dtype)
    for k in range(N_SHIFTS):
        dest = np.flatnonzero(kind == k)
        out[dest] = _shift(images[src[dest]], k)
    return Dataset(out.reshape(N_SHIFTS * n, N_PIXELS), data.y[src])
