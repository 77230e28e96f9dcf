"""The nndl-jax command's experiment shortcuts: `nndl-jax chap6 --quick`,
`nndl-jax chap1 --help`, `nndl-jax reproduce`, `nndl-jax report`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nndl_jax import cli

REPO = Path(__file__).resolve().parents[1]


def test_chapter_help_is_the_chapters_own(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["chap1", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--svm-train-size" in out and "--resume" in out and "--only ROW" in out


def test_chapter_help_from_the_command_line_exits_0():
    """The real entry point, in a fresh interpreter (argparse's exit status included)."""
    done = subprocess.run([sys.executable, "-m", "nndl_jax.cli", "chap6", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--train-size" in done.stdout


def test_chapter_shortcut_takes_options_and_runs(tmp_path):
    assert cli.main(["chap4", "--quick", "--only", "4.1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["id"] for r in results["rows"]] == ["4.1"] and results["quick"] is True


def test_chapter_shortcut_with_a_bad_row_id_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["chap4", "--only", "9.9", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unknown row id 9.9" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_reproduce_quick_chapter_4_end_to_end(tmp_path):
    assert cli.main(["reproduce", "--quick", "--only", "4", "--seeds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "chap4" / "results.json").read_text())
    assert results["complete"] is True and results["seeds"] == [12345678]
    page = (tmp_path / "REPORT.md").read_text()
    for r in results["rows"]:
        assert f"| {r['id']} |" in page
    assert "![universality_error](chap4/universality_error.png)" in page
    assert (tmp_path / "chap4" / "universality_error.png").stat().st_size > 0
    # the report again from what is there, training nothing
    (tmp_path / "REPORT.md").unlink()
    assert cli.main(["report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == page


def test_reproduce_refuses_a_folder_that_holds_the_other_kind_before_training(tmp_path, capsys):
    (tmp_path / "chap5").mkdir()
    (tmp_path / "chap5" / "results.json").write_text(json.dumps({"quick": False, "rows": [
        {"id": "5.1", "quick": False}]}))
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "--quick", "--only", "4", "5", "--out", str(tmp_path)])
    assert e.value.code == 2 and "holds full results" in capsys.readouterr().err
    assert not (tmp_path / "chap4" / "results.json").exists()  # nothing trained


def test_report_needs_an_existing_folder(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--out", str(tmp_path / "missing")])
    assert e.value.code == 2
