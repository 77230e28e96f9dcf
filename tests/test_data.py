"""The MNIST data layer: readers, verification, downloads, layouts, expansion.

Bad-data tests corrupt COPIES in tmp_path, never the shared files.
"""

import errno
import gzip
import hashlib
import io
import os
import pickle
import pickletools
import shutil
import tempfile
import urllib.error
import zlib
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import mnist_folder, unavailable

from nndl_jax import cli, data, expand_mnist, mnist_loader
from nndl_jax.data import IDX_FILES, Dataset, MNISTError, Splits, as_arrays, check_finite, expand

# ---------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array, magic=None, gz=False) -> Path:
    content = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(content, compresslevel=1) if gz else content)
    return path


def raw_content(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


@pytest.fixture
def small_images():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)


@pytest.fixture
def mnist_copy(mnist_dir, tmp_path):
    """A private copy of the four MNIST .gz files, safe to corrupt."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for key in IDX_FILES:
        src = data.find_idx(mnist_dir, key)
        shutil.copy(src, folder / src.name)
    return folder


def replace_with_raw(folder: Path, key: str, content: bytes) -> Path:
    """Swap the file for ``key`` in ``folder`` by a raw (uncompressed) one holding ``content``."""
    name = IDX_FILES[key].name
    for p in (folder / name, folder / (name + ".gz")):
        if p.exists():
            p.unlink()
    (folder / name).write_bytes(content)
    return folder / name


# ---------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_read_idx_returns_the_written_images_and_labels(tmp_path, small_images, gz):
    images, labels = small_images
    suffix = ".gz" if gz else ""
    img = data.read_idx(write_idx(tmp_path / f"i{suffix}", images, gz=gz), expect_magic=2051)
    lab = data.read_idx(write_idx(tmp_path / f"l{suffix}", labels, gz=gz), expect_magic=2049)
    assert img.dtype == np.uint8 and img.shape == (7, 28, 28)
    np.testing.assert_array_equal(img, images)
    np.testing.assert_array_equal(lab, labels)


def test_read_idx_wrong_magic_names_the_file(tmp_path, small_images):
    path = write_idx(tmp_path / "labels", small_images[1])
    with pytest.raises(MNISTError, match=r"labels: wrong magic number 2049 \(expected 2051"):
        data.read_idx(path, expect_magic=2051)


def test_read_idx_truncated_and_overlong(tmp_path, small_images):
    content = idx_bytes(small_images[0])
    (tmp_path / "short").write_bytes(content[:-10])
    (tmp_path / "long").write_bytes(content + b"\0")
    with pytest.raises(MNISTError, match="short: truncated file"):
        data.read_idx(tmp_path / "short")
    with pytest.raises(MNISTError, match="1 unexpected bytes"):
        data.read_idx(tmp_path / "long")


def test_truncated_gzip_stream_is_an_mnist_error(tmp_path, small_images):
    gz = gzip.compress(idx_bytes(small_images[0]))
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(MNISTError, match="cut.gz: the gzip stream is corrupt or truncated"):
        data.read_idx(tmp_path / "cut.gz")


def corrupt_deflate(gz: bytes) -> bytes:
    """``gz`` with one byte of its deflate stream flipped, so that zlib itself
    fails (a ``zlib.error``, not the gzip module's CRC check)."""
    bad = bytearray(gz)
    bad[200] ^= 0xFF
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(bad))
    return bytes(bad)


def test_corrupt_gzip_stream_is_an_mnist_error_naming_the_file(tmp_path):
    labels = np.random.default_rng(4).integers(0, 10, 5000).astype(np.uint8)
    path = tmp_path / "labels.gz"
    path.write_bytes(corrupt_deflate(gzip.compress(idx_bytes(labels))))
    with pytest.raises(MNISTError, match="labels.gz: the gzip stream is corrupt or truncated"):
        data.read_idx(path)


def test_corrupt_gzip_in_the_data_folder_is_reported_and_the_file_kept(mnist_copy):
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    path.write_bytes(corrupt_deflate(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(MNISTError, match="train-labels-idx1-ubyte.gz: the gzip stream is corrupt"):
        data.load_mnist(mnist_copy, download=True)  # never replaced by a download either
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------
# the book's mnist.pkl.gz


def small_sets(n=(6, 3, 4)):
    rng = np.random.default_rng(2)
    return tuple((rng.random((k, 784), dtype=np.float32), rng.integers(0, 10, k).astype(np.int64)) for k in n)


def python2_style_pickle(obj) -> bytes:
    """A pickle laid out as Python 2 wrote the book's file: byte data as
    BINSTRING (a py2 ``str``), protocol 2, ``numpy.core`` module names."""
    raw = bytearray(pickle.dumps(obj, protocol=3))
    for op, _, pos in pickletools.genops(bytes(raw)):
        if op.name == "BINBYTES":
            raw[pos] = ord("T")  # BINSTRING, same length layout
        elif op.name == "SHORT_BINBYTES":
            raw[pos] = ord("U")  # SHORT_BINSTRING
        elif op.name == "PROTO":
            raw[pos + 1] = 2
    return bytes(raw).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.mark.parametrize("style", ["python3", "python2"])
def test_read_pickle_returns_the_three_sets(tmp_path, style):
    sets = small_sets()
    blob = pickle.dumps(sets, protocol=2) if style == "python3" else python2_style_pickle(sets)
    if style == "python2":  # the default ASCII decoding fails: latin1 is needed
        with pytest.raises(UnicodeDecodeError):
            pickle.loads(blob)
    path = tmp_path / data.PICKLE_NAME
    path.write_bytes(gzip.compress(blob))
    splits = data.read_pickle(path)
    assert isinstance(splits, Splits)
    for got, (x, y) in zip(splits, sets):
        assert got.x.dtype == np.float32 and got.y.dtype == np.int32
        np.testing.assert_array_equal(got.x, x)
        np.testing.assert_array_equal(got.y, y)


def test_load_mnist_falls_back_to_the_pickle(tmp_path):
    sets = small_sets()
    (tmp_path / data.PICKLE_NAME).write_bytes(gzip.compress(pickle.dumps(sets)))
    splits = data.load_mnist(tmp_path)
    assert [len(d.y) for d in splits] == [6, 3, 4]


def test_read_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / data.PICKLE_NAME
    path.write_bytes(gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(MNISTError, match="refusing to unpickle"):
        data.read_pickle(path)


def test_read_pickle_bad_shapes_name_the_set(tmp_path):
    sets = list(small_sets())
    sets[1] = (sets[1][0][:, :700], sets[1][1])
    path = tmp_path / data.PICKLE_NAME
    path.write_bytes(gzip.compress(pickle.dumps(tuple(sets))))
    with pytest.raises(MNISTError, match="validation set: .*700 wide"):
        data.read_pickle(path)


# ---------------------------------------------------------------------------
# real MNIST


def test_real_mnist_has_the_books_split(mnist):
    assert [len(d.x) for d in mnist] == [50_000, 10_000, 10_000]
    for d in mnist:
        assert d.x.dtype == np.float32 and d.x.shape[1] == 784
        assert d.y.dtype == np.int32 and d.y.ndim == 1
        assert d.x.min() == 0.0 and d.x.max() == 1.0
        assert set(np.unique(d.y)) == set(range(10))
    # the famous first training labels, and the first test labels
    np.testing.assert_array_equal(mnist.training.y[:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(mnist.test.y[:5], [7, 2, 1, 0, 4])


def test_validation_is_the_last_10000_training_images(mnist, mnist_dir):
    labels = data.read_idx(data.find_idx(mnist_dir, "train_labels"))
    np.testing.assert_array_equal(mnist.validation.y, labels[50_000:])
    np.testing.assert_array_equal(mnist.training.y, labels[:50_000])
    images = data.read_idx(data.find_idx(mnist_dir, "train_images"))
    np.testing.assert_array_equal(mnist.validation.x[-1], images[-1].reshape(784) / np.float32(255))


@pytest.mark.parametrize("key", list(IDX_FILES))
def test_real_files_match_the_published_md5(mnist_dir, key):
    path = data.find_idx(mnist_dir, key)
    assert hashlib.md5(raw_content(path)).hexdigest() == IDX_FILES[key].md5
    assert data.check_file(path, key).size + 4 + 4 * (3 if "images" in key else 1) == IDX_FILES[key].n_bytes


def test_raw_idx_copies_load_like_the_gzipped_ones(mnist_copy, mnist):
    content = raw_content(mnist_copy / "t10k-labels-idx1-ubyte.gz")
    replace_with_raw(mnist_copy, "test_labels", content)
    np.testing.assert_array_equal(data.load_mnist(mnist_copy).test.y, mnist.test.y)


# ---------------------------------------------------------------------------
# every bad-data error, on copies


def test_wrong_magic_number_is_reported(mnist_copy):
    content = bytearray(raw_content(mnist_copy / "t10k-labels-idx1-ubyte.gz"))
    content[3] = 3  # labels claim to be images
    replace_with_raw(mnist_copy, "test_labels", bytes(content))
    with pytest.raises(MNISTError, match=r"t10k-labels-idx1-ubyte: wrong magic number 2051 \(expected 2049"):
        data.load_mnist(mnist_copy)


def test_truncated_file_is_reported(mnist_copy):
    content = raw_content(mnist_copy / "t10k-images-idx3-ubyte.gz")
    replace_with_raw(mnist_copy, "test_images", content[:-784])
    with pytest.raises(MNISTError, match="t10k-images-idx3-ubyte: truncated file"):
        data.load_mnist(mnist_copy)


def test_image_label_count_mismatch_is_reported(mnist_copy):
    labels = data.read_idx(mnist_copy / "t10k-labels-idx1-ubyte.gz")
    path = replace_with_raw(mnist_copy, "test_labels", idx_bytes(labels[:-1]))
    with pytest.raises(MNISTError, match="checksum mismatch"):  # verified: the MD5 catches it first
        data.load_mnist(mnist_copy)
    with pytest.raises(MNISTError, match="count mismatch: .*10000 images, .*9999 labels"):
        data.load_mnist(mnist_copy, verify=False)
    assert path.exists()


def test_checksum_mismatch_is_reported_and_the_file_kept(mnist_copy):
    content = bytearray(raw_content(mnist_copy / "t10k-images-idx3-ubyte.gz"))
    content[5000] ^= 0xFF  # one pixel
    path = replace_with_raw(mnist_copy, "test_images", bytes(content))
    with pytest.raises(MNISTError, match="t10k-images-idx3-ubyte: checksum mismatch.*2646ac647ad5339dbf082846283269ea"):
        data.load_mnist(mnist_copy, download=True)  # never replaced by a download either
    assert path.read_bytes() == bytes(content)


def test_missing_file_without_download_says_what_to_do(mnist_copy, monkeypatch):
    (mnist_copy / "train-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setattr(data, "urlopen", _never_called)
    with pytest.raises(MNISTError, match=r"missing train-labels-idx1-ubyte\[\.gz\].*NNDL_JAX_DATA"):
        data.load_mnist(mnist_copy)
    monkeypatch.setenv("NNDL_JAX_DATA", str(mnist_copy))
    with pytest.raises(MNISTError, match=r"\$NNDL_JAX_DATA"):
        data.load_mnist()


# ---------------------------------------------------------------------------
# downloads, with fake openers


def _never_called(url, *a, **k):
    raise AssertionError(f"unexpected download of {url}")


class FakeResponse:
    def __init__(self, payload: bytes, fail_after: int | None = None):
        self.stream = io.BytesIO(payload)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.stream.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by fake peer")
        if self.fail_after is not None:
            n = min(n, self.fail_after - self.stream.tell())
        return self.stream.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeMirror:
    """Serves the shared .gz files by name; ``bad`` maps a url to broken bytes."""

    def __init__(self, source: Path, bad=None, fail_half_way=()):
        self.source, self.bad, self.fail_half_way, self.calls = source, bad or {}, fail_half_way, []

    def __call__(self, url, *a, **k):
        self.calls.append(url)
        payload = self.bad.get(url) or (self.source / url.rsplit("/", 1)[1]).read_bytes()
        return FakeResponse(payload, len(payload) // 2 if url in self.fail_half_way else None)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part")


def test_download_fills_the_cache_atomically(mnist_dir, mnist, tmp_path, monkeypatch):
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mirror = FakeMirror(mnist_dir)
    monkeypatch.setattr(data, "urlopen", mirror)
    splits = data.load_mnist()  # the cache: downloading allowed
    cache = tmp_path / "nndl-jax" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name + ".gz" for f in IDX_FILES.values())
    assert len(mirror.calls) == 4 and all(u.startswith(data.MIRRORS[0]) for u in mirror.calls)
    np.testing.assert_array_equal(splits.test.y, mnist.test.y)
    data.load_mnist()  # second time: nothing downloaded
    assert len(mirror.calls) == 4


def test_download_falls_back_to_the_next_mirror_on_a_bad_checksum(mnist_dir, tmp_path):
    first = data.MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"
    bad = gzip.compress(idx_bytes(np.zeros(10_000, np.uint8), magic=2049))
    mirror = FakeMirror(mnist_dir, bad={first: bad})
    paths = data.download_mnist(tmp_path, opener=mirror)
    assert data.MIRRORS[1] + "t10k-labels-idx1-ubyte.gz" in mirror.calls
    assert data.check_file(paths["test_labels"], "test_labels").shape == (10_000,)
    assert leftovers(tmp_path) == []


def test_download_with_bad_checksums_everywhere_leaves_nothing(mnist_dir, tmp_path):
    bad = gzip.compress(idx_bytes(np.zeros(10_000, np.uint8), magic=2049))
    urls = {m + "t10k-labels-idx1-ubyte.gz": bad for m in data.MIRRORS}
    with pytest.raises(MNISTError, match="(?s)t10k-labels-idx1-ubyte.gz failed at every mirror.*checksum mismatch"):
        data.download_mnist(tmp_path, opener=FakeMirror(mnist_dir, bad=urls))
    assert not (tmp_path / "t10k-labels-idx1-ubyte.gz").exists()
    assert leftovers(tmp_path) == []


def test_download_failing_half_way_leaves_no_partial_file(mnist_dir, tmp_path):
    urls = [m + "train-images-idx3-ubyte.gz" for m in data.MIRRORS]
    mirror = FakeMirror(mnist_dir, fail_half_way=urls)
    with pytest.raises(MNISTError, match="(?s)connection reset by fake peer.*NNDL_JAX_DATA"):
        data.download_mnist(tmp_path, opener=mirror)
    assert not (tmp_path / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path) == []
    assert mirror.calls[:2] == urls


def test_download_keeps_a_users_existing_file(mnist_dir, tmp_path):
    user_file = tmp_path / "train-labels-idx1-ubyte"  # raw: the user's own copy
    user_file.write_bytes(raw_content(mnist_dir / "train-labels-idx1-ubyte.gz"))
    stamp = user_file.stat().st_mtime_ns
    mirror = FakeMirror(mnist_dir)
    paths = data.download_mnist(tmp_path, opener=mirror)
    assert paths["train_labels"] == user_file and user_file.stat().st_mtime_ns == stamp
    assert not any("train-labels" in u for u in mirror.calls)
    assert not (tmp_path / "train-labels-idx1-ubyte.gz").exists()


def test_download_falls_back_to_the_next_mirror_on_a_corrupt_gzip(mnist_dir, tmp_path):
    first = data.MIRRORS[0] + "t10k-labels-idx1-ubyte.gz"
    mirror = FakeMirror(mnist_dir, bad={first: corrupt_deflate((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())})
    paths = data.download_mnist(tmp_path, opener=mirror)
    assert mirror.calls.count(data.MIRRORS[1] + "t10k-labels-idx1-ubyte.gz") == 1
    assert data.check_file(paths["test_labels"], "test_labels").shape == (10_000,)
    assert leftovers(tmp_path) == []


class CompetingMirror(FakeMirror):
    """While serving ``url``, another process puts its own copy of that file in ``folder``."""

    def __init__(self, source, url, their_file: Path, their_bytes: bytes):
        super().__init__(source)
        self.url, self.their_file, self.their_bytes = url, their_file, their_bytes

    def __call__(self, url, *a, **k):
        if url == self.url:
            self.their_file.write_bytes(self.their_bytes)
        return super().__call__(url, *a, **k)


def their_copy(mnist_dir, name: str, gz: bool) -> bytes:
    """A good copy of MNIST file ``name`` whose bytes differ from the mirror's."""
    content = raw_content(mnist_dir / (name + ".gz"))
    return gzip.compress(content, compresslevel=1, mtime=0) if gz else content


@pytest.mark.parametrize("gz", [True, False], ids=["their_gz", "their_raw"])
def test_download_keeps_a_file_created_meanwhile(mnist_dir, tmp_path, gz):
    name = "train-labels-idx1-ubyte"
    theirs = tmp_path / (name + (".gz" if gz else ""))
    their_bytes = their_copy(mnist_dir, name, gz)
    mirror = CompetingMirror(mnist_dir, data.MIRRORS[0] + name + ".gz", theirs, their_bytes)
    paths = data.download_mnist(tmp_path, opener=mirror)
    assert paths["train_labels"] == theirs and theirs.read_bytes() == their_bytes
    assert sorted(p.name for p in tmp_path.glob(name + "*")) == [theirs.name]  # not a second copy
    assert leftovers(tmp_path) == []
    assert data.check_file(paths["test_images"], "test_images").shape == (10_000, 28, 28)


def test_download_keeps_a_file_created_between_the_last_check_and_the_move(mnist_dir, tmp_path, monkeypatch):
    # The narrowest window: the other process writes just after the downloader's
    # last look for the file (its second `find_idx`, once the download is verified).
    name = "t10k-labels-idx1-ubyte"
    theirs, their_bytes = tmp_path / (name + ".gz"), their_copy(mnist_dir, name, gz=True)
    real_find_idx, looks = data.find_idx, []

    def find_idx_then_they_write(folder, key):
        found = real_find_idx(folder, key)
        if key == "test_labels":
            looks.append(found)
            if len(looks) == 2:
                theirs.write_bytes(their_bytes)
        return found

    monkeypatch.setattr(data, "find_idx", find_idx_then_they_write)
    paths = data.download_mnist(tmp_path, opener=FakeMirror(mnist_dir))
    assert looks == [None, None]  # both looks missed their file
    assert paths["test_labels"] == theirs and theirs.read_bytes() == their_bytes
    assert leftovers(tmp_path) == []


def test_download_without_hard_links_still_moves_files_into_place(mnist_dir, mnist, tmp_path, monkeypatch):
    def no_hard_links(src, dst, *a, **k):
        raise PermissionError(errno.EPERM, "hard links not supported here (fake)", str(dst))

    monkeypatch.setattr(data.os, "link", no_hard_links)
    paths = data.download_mnist(tmp_path, opener=FakeMirror(mnist_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name + ".gz" for f in IDX_FILES.values())
    np.testing.assert_array_equal(data.read_idx(paths["test_labels"]), mnist.test.y)


def make_unwritable(folder: Path, monkeypatch):
    """Make ``folder`` refuse new files. chmod 555 does that for a normal user;
    root (as in CI containers) writes anyway, so when the chmod did not take,
    creating a file in ``folder`` raises the EACCES the OS gives a normal user."""
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        return  # the real thing
    real_mkstemp = tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(folder / ".part"))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(data.tempfile, "mkstemp", refused)


def test_download_into_a_read_only_folder_says_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "readonly"
    folder.mkdir()
    make_unwritable(folder, monkeypatch)
    try:
        with pytest.raises(MNISTError, match=rf"(?s)cannot write into {folder} .*Permission denied.*"
                                             r"Make the folder writable.*NNDL_JAX_DATA"):
            data.download_mnist(folder, opener=_never_called)  # refused before any download
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_download_under_a_file_says_what_to_do(tmp_path):
    (tmp_path / "not-a-folder").write_text("a file, where the data folder's parent should be")
    folder = tmp_path / "not-a-folder" / "mnist"  # creating it fails even for root
    with pytest.raises(MNISTError, match=rf"cannot write into {folder} .*Make the folder writable"):
        data.download_mnist(folder, opener=_never_called)


def test_a_full_disk_during_a_download_leaves_no_partial_file(mnist_dir, tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device (fake)")

    monkeypatch.setattr(data.os, "fsync", disk_full)
    with pytest.raises(MNISTError, match=rf"cannot write into {tmp_path} .*No space left on device"):
        data.download_mnist(tmp_path, opener=FakeMirror(mnist_dir))
    assert list(tmp_path.iterdir()) == []


def test_no_network_error_points_at_nndl_jax_data(tmp_path, monkeypatch):
    def offline(url, *a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data, "urlopen", offline)
    with pytest.raises(MNISTError, match="(?s)no network.*set NNDL_JAX_DATA to a folder"):
        data.load_mnist(tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_no_network_error_via_injected_opener(tmp_path):
    def offline(url, *a, **k):
        raise urllib.error.URLError("no network")

    with pytest.raises(MNISTError, match="(?s)no network.*set NNDL_JAX_DATA"):
        data.download_mnist(tmp_path, opener=offline)
    assert list(tmp_path.iterdir()) == []


def _offline_per_mirror(url, *a, **k):
    host = url.split("/")[2]
    raise urllib.error.URLError(f"no route to {host}")


def test_offline_first_use_names_the_folder_each_mirror_the_files_and_what_to_do(mnist_dir, tmp_path, monkeypatch):
    """A fresh machine without a network: the message holds all a user needs, and
    copying the four files into the folder it names is enough."""
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "urlopen", _offline_per_mirror)
    folder = tmp_path / "xdg" / "nndl-jax" / "mnist"
    (tmp_path / "xdg").mkdir()
    with pytest.raises(MNISTError) as error:
        data.load_mnist()
    message = str(error.value)
    assert f"could not be downloaded into {folder}:" in message
    for mirror in data.MIRRORS:  # each mirror with its own error
        host = mirror.split("/")[2]
        assert f"{mirror}train-images-idx3-ubyte.gz: <urlopen error no route to {host}>" in message
    assert all(f.name + ".gz" in message for f in IDX_FILES.values())
    assert "copy the four MNIST files" in message and f"into {folder}, or set NNDL_JAX_DATA" in message
    assert list((tmp_path / "xdg").iterdir()) == []  # no empty nndl-jax/mnist/ left behind
    folder.mkdir(parents=True)  # doing what the message says works, offline
    for key in IDX_FILES:
        shutil.copy(data.find_idx(mnist_dir, key), folder)
    assert len(data.load_mnist().test.y) == 10_000


def test_a_failed_download_keeps_folders_that_existed_or_gained_files(tmp_path, monkeypatch):
    """Only the folders the download created, and only while empty, are removed."""
    cache = tmp_path / "nndl-jax"
    (cache / "checkpoints").mkdir(parents=True)
    with pytest.raises(MNISTError):
        data.download_mnist(cache / "mnist", opener=_offline_per_mirror)
    assert sorted(p.name for p in cache.iterdir()) == ["checkpoints"]

    def offline_after_a_file_appears(url, *a, **k):  # another process puts a file there meanwhile
        (tmp_path / "new" / "mnist" / "notes.txt").write_text("kept")
        return _offline_per_mirror(url)

    with pytest.raises(MNISTError):
        data.download_mnist(tmp_path / "new" / "mnist", opener=offline_after_a_file_appears)
    assert (tmp_path / "new" / "mnist" / "notes.txt").read_text() == "kept"


def test_an_interrupted_first_download_leaves_no_empty_folder(tmp_path):
    def interrupted(url, *a, **k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.download_mnist(tmp_path / "a" / "mnist", opener=interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_the_user_named_is_not_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "urlopen", _never_called)
    with pytest.raises(MNISTError, match="downloading was not allowed"):
        data.load_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    assert data.resolve_data_dir() == tmp_path / "xdg" / "nndl-jax" / "mnist"
    monkeypatch.setenv("NNDL_JAX_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


# ---------------------------------------------------------------------------
# as_arrays: one home for the layouts


def _reference(n=4):
    rng = np.random.default_rng(3)
    return rng.random((n, 784), dtype=np.float32), np.array([3, 0, 9, 3][:n])


def _layouts():
    x, y = _reference()
    one_hot = np.eye(10)[y]
    return {
        "dataset": Dataset(x, y.astype(np.int32)),
        "arrays": (x, y),
        "arrays_column": (x[:, :, None], y),
        "arrays_one_hot": (x, one_hot),
        "arrays_one_hot_column": (x, one_hot[:, :, None]),
        "book_training_list": [(xi[:, None], oh[:, None]) for xi, oh in zip(x, one_hot)],
        "book_test_list": [(xi[:, None], int(yi)) for xi, yi in zip(x, y)],
        "book_test_numpy_ints": [(xi[:, None], yi) for xi, yi in zip(x, y)],
        "book_zip": "zip",
        "uint8_pixels": (np.rint(x * 255).astype(np.uint8), y),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_as_arrays_accepts_every_layout(layout):
    x, y = _reference()
    given = _layouts()[layout]
    if given == "zip":
        given = zip(list(x[:, :, None]), y.tolist())
    got = as_arrays(given)
    assert got.x.dtype == np.float32 and got.y.dtype == np.int32
    assert got.x.shape == (4, 784) and got.y.shape == (4,)
    np.testing.assert_array_equal(got.y, y)
    tol = 0.5 / 255 if layout == "uint8_pixels" else 0
    np.testing.assert_allclose(got.x, x, atol=tol)


def test_as_arrays_accepts_jax_arrays():
    import jax.numpy as jnp

    x, y = _reference()
    got = as_arrays((jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_array_equal(got.y, y)
    assert isinstance(got.x, np.ndarray)


@pytest.mark.parametrize("bad, message", [
    ((np.zeros((4, 783), np.float32), np.zeros(4, int)), "783 wide, expected 784"),
    ((np.zeros((4, 784), np.float32), np.zeros(3, int)), "4 images but 3 labels"),
    ((np.zeros((0, 784), np.float32), np.zeros(0, int)), "empty data"),
    ([], "empty data"),
    ((np.zeros((4, 28, 28), np.float32), np.zeros(4, int)), r"x has shape \(4, 28, 28\)"),
    ((np.zeros((4, 784), np.float32), np.array([0, 1, 2, 10])), r"labels range over \[0, 10\]"),
    ((np.zeros((4, 784), np.float32), np.full((4, 10), 0.1)), "not one-hot"),
    ((np.zeros((4, 784), np.float32), np.zeros((4, 9))), "9 wide, expected 10"),
    ((np.zeros((4, 784), np.float32), np.array([0.5, 1, 2, 3])), "not integers"),
    ([(np.zeros((784, 1)), 1), (np.zeros((783, 1)), 1)], "several shapes"),
    ([np.zeros(784), np.zeros(784), np.zeros(784)], r"\(x, y\) pair"),
])
def test_as_arrays_rejects_bad_shapes_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        as_arrays(bad)


def test_as_arrays_other_widths_when_asked():
    got = as_arrays((np.ones((2, 3)), np.array([0, 1])), n_inputs=3, n_classes=2)
    assert got.x.shape == (2, 3)


def with_bad_pixels(values, where=((12, 345), (40, 0), (40, 783))):
    x = np.random.default_rng(5).random((50, 784))
    for (i, j), v in zip(where, values):
        x[i, j] = v
    return x


@pytest.mark.parametrize("layout", ["arrays", "float32", "book_list"])
def test_as_arrays_refuses_a_nan_pixel_saying_where(layout):
    x = with_bad_pixels([np.nan])
    y = np.arange(50) % 10
    given = {"arrays": (x, y), "float32": (x.astype(np.float32), y),
             "book_list": [(xi[:, None], int(yi)) for xi, yi in zip(x, y)]}[layout]
    with pytest.raises(ValueError, match=r"x: 1 value not finite \(1 NaN, 0 inf\) in 1 example, "
                                         r"first at example 12, pixel 345\. .*fix or drop"):
        as_arrays(given)


def test_as_arrays_counts_nan_and_inf_pixels_and_lists_the_examples():
    x = with_bad_pixels([np.inf, np.nan, -np.inf])
    with pytest.raises(ValueError, match=r"3 values not finite \(1 NaN, 2 inf\) in 2 examples, "
                                         r"first at example 12, pixel 345 \(examples 12, 40\)"):
        as_arrays((x, np.zeros(50, int)))


def test_as_arrays_refuses_pixels_beyond_float32():
    x = with_bad_pixels([1e300])
    with pytest.raises(ValueError, match=r"1 value not finite \(0 NaN, 1 inf\).*example 12, pixel 345"):
        as_arrays((x, np.zeros(50, int)))


def test_check_finite_returns_finite_data_untouched():
    x = np.random.default_rng(6).random((3, 4), dtype=np.float32)
    assert check_finite(x) is x
    pixels = np.full((2, 784), 255, np.uint8)
    assert check_finite(pixels) is pixels  # integers are always finite
    message = r"images: 1 value not finite \(0 NaN, 1 inf\) in 1 example, first at example 1\."
    with pytest.raises(ValueError, match=message):
        check_finite(np.array([0.0, np.inf]), "images")


@pytest.mark.parametrize("y, n_classes, message", [
    (np.array([0, 1, 10, 3, 12]), 10,
     r"labels range over \[0, 12\], expected \[0, 10\): 2 labels out of range, first at example 2 \(examples 2, 4\)"),
    (np.array([0, 1, 2, 3, 2]), 3, r"expected \[0, 3\): 1 label out of range, first at example 3\."),
    (np.array([0, -1, 2, 3, 2]), None, r"labels range over \[-1, 3\], expected \[0, n\): 1 label .* example 1\."),
    (np.array([0, 1, 2.5, 3, 2]), 10, "labels of dtype float64 are not integers"),
    (np.array([0, 1, np.nan, 3, 2]), 10, "labels of dtype float64 are not integers"),
])
def test_as_arrays_refuses_labels_out_of_range_saying_where(y, n_classes, message):
    with pytest.raises(ValueError, match=message):
        as_arrays((np.zeros((5, 784), np.float32), y), n_classes=n_classes)


def test_as_arrays_takes_any_nonnegative_label_without_a_class_count():
    got = as_arrays((np.zeros((2, 784), np.float32), np.array([0, 57])), n_classes=None)
    np.testing.assert_array_equal(got.y, [0, 57])


# ---------------------------------------------------------------------------
# expansion


def book_expand_one(image: np.ndarray):
    """The book's expand_mnist.py inner loop, literally (np.roll, then a zeroed edge)."""
    image = image.reshape(28, 28)
    out = [image.reshape(784)]
    for d, axis, index_position, index in [(1, 0, "first", 0), (-1, 0, "first", 27),
                                           (1, 1, "last", 0), (-1, 1, "last", 27)]:
        new_img = np.roll(image, d, axis)
        if index_position == "first":
            new_img[index, :] = np.zeros(28)
        else:
            new_img[:, index] = np.zeros(28)
        out.append(new_img.reshape(784))
    return out


def test_expand_unshuffled_matches_the_books_loop():
    x, y = _reference(3)
    got = expand(x, y, shuffle=False)
    assert got.x.shape == (15, 784) and got.x.dtype == np.float32
    want = np.stack([img for xi in x for img in book_expand_one(xi)])
    np.testing.assert_array_equal(got.x, want)
    np.testing.assert_array_equal(got.y, np.repeat(y, 5))


def test_expand_shifts_by_one_pixel_with_zero_fill():
    image = np.zeros((28, 28), np.float32)
    image[0, 5] = image[27, 7] = image[10, 0] = image[12, 27] = 1.0
    got = expand(image.reshape(1, 784), np.array([4]), shuffle=False).x.reshape(5, 28, 28)
    down, up, right, left = got[1:]
    assert np.argwhere(down).tolist() == [[1, 5], [11, 0], [13, 27]]  # row 27 fell off
    assert np.argwhere(up).tolist() == [[9, 0], [11, 27], [26, 7]]  # row 0 fell off
    assert np.argwhere(right).tolist() == [[0, 6], [10, 1], [27, 8]]  # column 27 fell off
    assert np.argwhere(left).tolist() == [[0, 4], [12, 26], [27, 6]]  # column 0 fell off


def test_expand_shuffle_is_a_seeded_permutation():
    x, y = _reference(4)
    book = expand(x, y, shuffle=False)
    a, b, c = (expand(x, y, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    order = np.random.default_rng(7).permutation(20)
    np.testing.assert_array_equal(a.x, book.x[order])
    np.testing.assert_array_equal(a.y, book.y[order])


def test_expanded_mnist_file_round_trip(mnist_dir, mnist, tmp_path, capsys):
    loaded = expand_mnist.load_expanded(mnist_dir, seed=0, out_dir=tmp_path)  # made, then read
    assert (tmp_path / "mnist_expanded_seed0.npz").is_file()
    assert "Saved 250000 images" in capsys.readouterr().out
    assert loaded.x.shape == (250_000, 784) and loaded.x.dtype == np.float32
    assert loaded.y.shape == (250_000,) and loaded.y.dtype == np.int32
    want = expand(*mnist.training, seed=0)
    np.testing.assert_array_equal(loaded.x, want.x)
    np.testing.assert_array_equal(loaded.y, want.y)
    assert leftovers(tmp_path) == []


def test_a_wrong_expanded_file_is_refused(tmp_path):
    np.savez(tmp_path / "mnist_expanded_seed0.npz", x=np.zeros((3, 784), np.uint8),
             y=np.zeros(3, np.uint8), seed=np.int64(0))
    with pytest.raises(MNISTError, match="Delete it to rebuild"):
        expand_mnist.load_expanded(seed=0, out_dir=tmp_path)


# ---------------------------------------------------------------------------
# the book's mnist_loader


def test_load_data_wrapper_gives_the_books_lists(mnist_dir, mnist):
    training, validation, test = mnist_loader.load_data_wrapper(data_dir=mnist_dir)
    assert (type(training), type(validation), type(test)) == (list, list, list)
    assert (len(training), len(validation), len(test)) == (50_000, 10_000, 10_000)
    for x, y in training[:3]:
        assert x.shape == (784, 1) and x.dtype == np.float32
        assert y.shape == (10, 1) and y.sum() == 1.0
    assert np.argmax(training[0][1]) == 5
    np.testing.assert_array_equal(training[0][1], mnist_loader.vectorized_result(5))
    for x, y in validation[:3] + test[:3]:
        assert x.shape == (784, 1) and isinstance(y, int)
    assert [y for _, y in test[:5]] == [7, 2, 1, 0, 4]
    np.testing.assert_array_equal(test[9][0][:, 0], mnist.test.x[9])
    back = as_arrays(training)  # the façades' conversion returns the arrays
    np.testing.assert_array_equal(back.y, mnist.training.y)


def test_load_data_gives_the_books_arrays(mnist_dir, mnist):
    training, validation, test = mnist_loader.load_data(data_dir=mnist_dir)
    assert training[0].shape == (50_000, 784) and training[0].dtype == np.float32
    assert training[1].dtype == np.int64 and validation[0].shape == (10_000, 784)
    np.testing.assert_array_equal(test[1], mnist.test.y)


def test_vectorized_result():
    e = mnist_loader.vectorized_result(3)
    assert e.shape == (10, 1) and e[3, 0] == 1.0 and e.sum() == 1.0


# ---------------------------------------------------------------------------
# the nndl-jax command


def test_cli_data_reports_verified_files_and_sizes(mnist_dir, capsys):
    assert cli.main(["data", "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(": verified") == 4
    assert "training   x (50000, 784)" in out and "test       x (10000, 784)" in out


def test_cli_data_fails_on_an_empty_folder(tmp_path, capsys):
    assert cli.main(["data", "--data-dir", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().out


def test_cli_run_dispatches_to_an_experiment_main(monkeypatch):
    import sys
    import types

    seen = []
    fake = types.ModuleType("experiments.chap99")
    fake.main = lambda argv, run_session=None: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "experiments.chap99", fake)
    from experiments import cli as experiments_cli
    assert experiments_cli.main(["run", "99", "--quick", "--seed", "3"]) == 0
    assert seen == [["--quick", "--seed", "3"]]


# ---------------------------------------------------------------------------
# the tests on a fresh machine (tests/conftest.py)


def test_tests_fetch_mnist_into_an_empty_user_cache(mnist_dir, mnist, tmp_path, monkeypatch):
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    mirror = FakeMirror(mnist_dir)
    monkeypatch.setattr(data, "urlopen", mirror)  # the project's download code, minus the network
    folder = mnist_folder()
    assert folder == tmp_path / "nndl-jax" / "mnist" == data.resolve_data_dir()
    assert sorted(mirror.calls) == sorted(data.MIRRORS[0] + f.name + ".gz" for f in IDX_FILES.values())
    np.testing.assert_array_equal(data.load_mnist(folder).test.y, mnist.test.y)
    assert mnist_folder() == folder and len(mirror.calls) == 4  # filled: nothing fetched again


def test_tests_read_a_filled_user_cache_without_fetching(mnist_copy, tmp_path, monkeypatch):
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shutil.copytree(mnist_copy, tmp_path / "xdg" / "nndl-jax" / "mnist")
    monkeypatch.setattr(data, "urlopen", _never_called)
    assert mnist_folder() == tmp_path / "xdg" / "nndl-jax" / "mnist"


def test_tests_never_download_into_the_folder_nndl_jax_data_names(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDL_JAX_DATA", str(tmp_path))
    monkeypatch.setattr(data, "urlopen", _never_called)
    with pytest.raises(MNISTError, match=f"NNDL_JAX_DATA={tmp_path} does not hold the four MNIST IDX files"):
        mnist_folder()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ci", ["true", ""])
def test_tests_without_mnist_fail_in_ci_and_skip_elsewhere(tmp_path, monkeypatch, ci):
    def offline(url, *a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(data, "urlopen", offline)
    with pytest.raises(MNISTError, match="(?s)could not be downloaded.*no network") as error:
        mnist_folder()
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match=("CI=true and " if ci else "") + "no MNIST: MNIST could not be downloaded"):
        unavailable(f"no MNIST: {error.value}")


def test_the_tests_write_into_a_cache_of_their_own_and_read_mnist_where_the_user_keeps_it(mnist_dir):
    assert data.cache_dir() == conftest.session_cache() / "nndl-jax"
    assert data.resolve_data_dir() == mnist_dir  # pinned in NNDL_JAX_DATA, not looked for in that cache
    assert not conftest.session_cache().is_relative_to(Path.home() / ".cache")


def test_tests_on_a_fresh_machine_fill_the_users_cache_and_pin_it(mnist_dir, tmp_path, monkeypatch):
    """No NNDL_JAX_DATA and an empty user cache: MNIST is downloaded into the user's
    cache (not the session's), then pinned so that code under test finds it."""
    users = tmp_path / "home-cache" / "nndl-jax" / "mnist"
    monkeypatch.setattr(conftest, "_USER_MNIST", users)
    monkeypatch.delenv("NNDL_JAX_DATA")
    mirror = FakeMirror(mnist_dir)
    monkeypatch.setattr(data, "urlopen", mirror)
    assert conftest.user_mnist_folder() == users and len(mirror.calls) == 4
    assert data.resolve_data_dir() == users and conftest.has_mnist(users)
