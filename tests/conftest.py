"""Shared test setup: strict JAX promotion rules, MNIST, keys, a private cache.

The user cache is left as the tests found it: for the whole session
``XDG_CACHE_HOME`` points at a temporary folder (one per process: each
pytest-xdist worker, ``pytest -n 2``, has its own) (checkpoints, expanded data and
anything else the code under test keeps in its cache go there, and go away with
it). MNIST is still read from where the user keeps it: the folder is resolved
first ($NNDL_JAX_DATA, else the user cache) and pinned in $NNDL_JAX_DATA.

Fixtures (other test files rely on these names):
  mnist_dir  Path of the MNIST folder (`mnist_folder`): $NNDL_JAX_DATA if set, else the
             user cache (``data.resolve_data_dir()``), downloaded there by the project's own
             ``data.download_mnist`` when files are missing. No MNIST (no network, an empty
             $NNDL_JAX_DATA) fails the test when CI=true and skips it, with the reason, otherwise.
  mnist      load_mnist(mnist_dir), loaded once per session (Splits of Datasets).
  key        jax.random.key(0).
  said_waits the façades' once-per-process lines before a wait (``nndl_jax.waits``) made
             unsaid for one test: without it, every test runs as in a process that has said
             them already (autouse), so the book's printout a test compares is the book's alone.
"""

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

from nndl_jax import data, waits

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def has_mnist(folder: Path) -> bool:
    """Whether ``folder`` holds the four MNIST IDX files (gzipped or raw) the tests read."""
    return folder.is_dir() and all(data.find_idx(folder, key) for key in data.IDX_FILES)


def mnist_folder() -> Path:
    """The folder of the four MNIST IDX files the tests read.

    $NNDL_JAX_DATA when set (only read, as the loader does); else the user
    cache, where missing files are downloaded with `data.download_mnist`.
    Raises `data.MNISTError` saying why when there is no MNIST to read.
    """
    folder = data.resolve_data_dir()
    if has_mnist(folder):
        return folder
    if os.environ.get(data.ENV_VAR):
        raise data.MNISTError(
            f"{data.ENV_VAR}={os.environ[data.ENV_VAR]} does not hold the four MNIST IDX files "
            "the tests read; point it at a folder that does, or unset it to use "
            f"(and fill) the user cache {data.cache_dir() / 'mnist'}."
        )
    data.download_mnist(folder)
    return folder


# The MNIST folder as the user has it, resolved before the cache is redirected.
_USER_MNIST: Path | None = None
_SESSION_CACHE: Path | None = None


# The user's own XDG_CACHE_HOME ("" when unset), kept for pytest-xdist's workers: they start
# from the controller's environment, whose cache is already the controller's temporary one.
USER_CACHE_VAR = "NNDL_JAX_TESTS_USER_XDG_CACHE_HOME"


def restore_users_cache_home(environ=os.environ):
    """Put back the user's XDG_CACHE_HOME in a process started by the tests'
    controller (a pytest-xdist worker), so that it finds the user's MNIST;
    in the first pytest process, remember it for the workers."""
    if USER_CACHE_VAR not in environ:
        environ[USER_CACHE_VAR] = environ.get("XDG_CACHE_HOME", "")
    elif environ[USER_CACHE_VAR]:
        environ["XDG_CACHE_HOME"] = environ[USER_CACHE_VAR]
    else:
        environ.pop("XDG_CACHE_HOME", None)


def pytest_configure(config):
    """Pin MNIST where the user keeps it, then give the session (each
    pytest-xdist worker too) a cache of its own."""
    global _USER_MNIST, _SESSION_CACHE
    restore_users_cache_home()
    _USER_MNIST = data.resolve_data_dir()
    if has_mnist(_USER_MNIST):
        os.environ[data.ENV_VAR] = str(_USER_MNIST)
    _SESSION_CACHE = Path(tempfile.mkdtemp(prefix="nndl-jax-tests-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(_SESSION_CACHE)


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def session_cache() -> Path:
    """The temporary folder that stands for XDG_CACHE_HOME during the tests."""
    return _SESSION_CACHE


def user_mnist_folder() -> Path:
    """The tests' MNIST: the folder pinned at start, or the user's own cache, filled on first
    use (a fresh machine) and then pinned, so that code under test that reads the cache finds it."""
    if os.environ.get(data.ENV_VAR) or _USER_MNIST is None:
        return mnist_folder()
    if not has_mnist(_USER_MNIST):
        data.download_mnist(_USER_MNIST)
    os.environ[data.ENV_VAR] = str(_USER_MNIST)
    return _USER_MNIST


def unavailable(reason: str):
    """Stop a test that needs MNIST: a failure in CI (CI=true), else a skip with ``reason``."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    try:
        return user_mnist_folder()
    except data.MNISTError as e:
        unavailable(f"real MNIST is not available to the tests: {e}")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return data.load_mnist(mnist_dir)


@pytest.fixture
def key():
    return jax.random.key(0)


class _AllSaid(set):
    """``waits._SAID`` in a process that has said every once-per-process line."""

    def __contains__(self, key):
        return True


@pytest.fixture(autouse=True)
def _waits_said_already(monkeypatch):
    monkeypatch.setattr(waits, "_SAID", _AllSaid())


@pytest.fixture
def said_waits(monkeypatch):
    """The lines ``waits.say(..., once=True)`` has said in this test (a fresh
    process's state: none yet)."""
    said = set()
    monkeypatch.setattr(waits, "_SAID", said)
    return said
