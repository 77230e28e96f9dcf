"""Shared test setup: strict JAX promotion rules, MNIST, keys.

Fixtures (other test files rely on these names):
  mnist_dir  Path of the MNIST folder: $NNDL_JAX_DATA, else ../shared/data/mnist
             beside the repo. Missing data fails the test when CI=true, skips it otherwise.
  mnist      load_mnist(mnist_dir), loaded once per session (Splits of Datasets).
  key        jax.random.key(0).
"""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


def _has_mnist(folder: Path) -> bool:
    from nndl_jax.data import IDX_FILES, PICKLE_NAME, find_idx

    if not folder.is_dir():
        return False
    return all(find_idx(folder, k) for k in IDX_FILES) or (folder / PICKLE_NAME).is_file()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    env = os.environ.get("NNDL_JAX_DATA")
    folder = Path(env).expanduser() if env else DEFAULT_MNIST_DIR
    if not _has_mnist(folder):
        message = (f"MNIST not found in {folder}: set NNDL_JAX_DATA to a folder "
                   "holding the four MNIST IDX files")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from nndl_jax.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture
def key():
    return jax.random.key(0)
