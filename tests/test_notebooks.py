"""The chapter notebooks as committed: one per chapter, outputs stripped, the Colab
install cell first, a quick form for CI, results into ignored folders.

Running them is nbmake's job (`pytest notebooks/`, through notebooks/conftest.py);
these checks read the JSON only, so they need no kernel.
"""
import json
import re
import subprocess
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTERS = range(1, 7)


def cells(n, kind=None):
    nb = json.loads((NOTEBOOKS / f"chap{n}.ipynb").read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    return [c for c in nb["cells"] if kind is None or c["cell_type"] == kind]


def source(cell):
    return "".join(cell["source"])


@pytest.mark.parametrize("n", CHAPTERS)
def test_committed_without_outputs(n):
    for cell in cells(n, "code"):
        assert cell["outputs"] == [] and cell["execution_count"] is None, source(cell)[:80]


@pytest.mark.parametrize("n", CHAPTERS)
def test_the_first_code_cell_installs_from_repo_url_only_when_nndl_jax_is_missing(n):
    first = source(cells(n, "code")[0])
    assert re.search(r'^REPO_URL = ""', first, re.M)                      # no invented URL
    assert first.index("import nndl_jax") < first.index("%pip install")   # installs only when missing
    assert '"nndl-jax[all] @ git+{REPO_URL}"' in first
    assert "REPO_URL" in source(cells(n, "markdown")[0])                  # the reader is told what to put there


@pytest.mark.parametrize("n", CHAPTERS)
def test_a_quick_form_and_the_device_are_set_up_before_anything_runs(n):
    setup = source(cells(n, "code")[1])
    assert 'os.environ.get("NNDL_JAX_QUICK", os.environ.get("CI", "0"))' in setup
    assert "jax.devices()" in setup and "jax.default_backend()" in setup


@pytest.mark.parametrize("n", [1, 3, 4, 5, 6])
def test_experiments_run_quick_into_an_ignored_folder_and_their_commands_are_given(n):
    text = "\n".join(source(c) for c in cells(n))
    assert f"chap{n}.main(argv)" in text and '"--quick"' in text
    assert 'os.environ.get("NNDL_JAX_NOTEBOOK_RESULTS", "results/notebooks")' in text
    assert f"nndl-jax chap{n}" in text
    ignored = subprocess.run(["git", "check-ignore", "-q", f"results/notebooks/chap{n}/results.json"],
                             cwd=NOTEBOOKS.parent, check=False)
    assert ignored.returncode == 0, "results/ must stay git-ignored"


def test_chapter_2_compares_backprop_by_hand_with_jax_grad_and_finite_differences():
    text = "\n".join(source(c) for c in cells(2, "code"))
    for call in ("backprop.backprop_loop", "backprop.backprop_matrix", "jax.grad(", "backprop.cost(unflat(theta + e)"):
        assert call in text


@pytest.mark.parametrize("n", [1, 3, 5, 6])
def test_the_sessions_monitoring_is_drawn(n):
    assert any("monitoring_figure(" in source(c) for c in cells(n, "code"))
