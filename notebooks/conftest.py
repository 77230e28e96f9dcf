"""Runs the chapter notebooks as tests, through nbmake, in their quick form.

`pytest` (whose testpaths hold notebooks/) or `pytest notebooks/chap1.ipynb`
executes each notebook top to bottom in a fresh kernel and fails on the first
cell that raises. Nothing here is needed for `pytest tests/...`: this file is
read only when notebooks/ is collected, so runs of the tests alone neither
need nbmake nor run a notebook.

While a notebook runs, its kernel (which inherits this process's environment)
gets, and the rest of the session keeps as it was:
- NNDL_JAX_QUICK=1 unless set: the short form (fewer epochs, a subset, a few
  experiments), as CI runs them; NNDL_JAX_QUICK=0 runs the book's settings;
- PYTHONPATH starting with this clone, as pytest's ``pythonpath = ["."]`` does
  for the tests, so the notebooks run the code next to them;
- as for the tests, the user cache is left as it was: MNIST is read from
  where the user keeps it (NNDL_JAX_DATA), XDG_CACHE_HOME and the notebooks'
  results folder (NNDL_JAX_NOTEBOOK_RESULTS) are a temporary folder, removed
  at the end.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_KERNEL_ENV = {}
_TEMPORARY = []


def pytest_configure(config):
    """Turn nbmake's collection on (as ``--nbmake`` would) and decide the kernels' environment."""
    if not config.pluginmanager.hasplugin("nbmake"):
        raise pytest.UsageError("the notebooks in notebooks/ run through the pytest plugin nbmake, which is not "
                                "installed: pip install -e \".[test]\" (or pip install nbmake), or run "
                                "`pytest tests` to leave the notebooks out.")
    config.option.nbmake = True
    scratch = Path(tempfile.mkdtemp(prefix="nndl-jax-notebooks-"))
    _TEMPORARY.append(scratch)
    _KERNEL_ENV.update(
        NNDL_JAX_QUICK=os.environ.get("NNDL_JAX_QUICK", "1"),
        PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        XDG_CACHE_HOME=str(scratch / "cache"),
        NNDL_JAX_NOTEBOOK_RESULTS=str(scratch / "results"),
        **_user_mnist())


def _user_mnist():
    """{"NNDL_JAX_DATA": folder} when the user's MNIST folder holds the files (else
    nothing: the notebooks download MNIST into the temporary cache, as a fresh Colab does)."""
    from nndl_jax import data
    folder = data.resolve_data_dir()
    if all(data.find_idx(folder, key) for key in data.IDX_FILES):
        return {data.ENV_VAR: str(folder)}
    return {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """The kernels' environment while a notebook runs (nbmake starts its kernel here), then the old one back."""
    before = {name: os.environ.get(name) for name in _KERNEL_ENV}
    os.environ.update(_KERNEL_ENV)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pytest_unconfigure(config):
    for folder in _TEMPORARY:
        shutil.rmtree(folder, ignore_errors=True)
