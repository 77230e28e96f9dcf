"""Shared test setup: strict JAX promotion rules, MNIST, keys.

Fixtures (other test files rely on these names):
  mnist_dir  Path of the MNIST folder (`mnist_folder`): $NNDL_JAX_DATA if set, else the
             user cache (``data.resolve_data_dir()``), downloaded there by the project's own
             ``data.download_mnist`` when files are missing. No MNIST (no network, an empty
             $NNDL_JAX_DATA) fails the test when CI=true and skips it, with the reason, otherwise.
  mnist      load_mnist(mnist_dir), loaded once per session (Splits of Datasets).
  key        jax.random.key(0).
"""

import os
from pathlib import Path

import jax
import pytest

from nndl_jax import data

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


def unavailable(reason: str):
    """Stop a test that needs MNIST: a failure in CI (CI=true), else a skip with ``reason``."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    try:
        return mnist_folder()
    except data.MNISTError as e:
        unavailable(f"real MNIST is not available to the tests: {e}")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return data.load_mnist(mnist_dir)


@pytest.fixture
def key():
    return jax.random.key(0)
