"""experiments/report.py and experiments/reproduce.py: results merged by row and
never lost, the checks a run makes before it trains, the report page, and the
README's results table, which must equal what the committed reproduced/ files give."""
import json
import re
from pathlib import Path

import pytest

from experiments import chap4, chap6, report, reproduce

REPO = Path(__file__).resolve().parents[1]


def _results(folder):
    return json.loads((Path(folder) / "results.json").read_text())


def _args(tmp_path, *argv, chapter="chapX", row_ids=("1.1", "1.2", "6.8")):
    return report.parse_args(chapter, "", ["--out", str(tmp_path), *argv], row_ids=list(row_ids))


# --- merging -------------------------------------------------------------------------------

def test_only_adds_its_rows_and_keeps_the_others_and_a_rerun_replaces_only_its_row(tmp_path):
    """Through the real chapter 4 (its rows 4.1 and 4.2 train nothing)."""
    chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1"])
    first = _results(tmp_path)
    assert [r["id"] for r in first["rows"]] == ["4.1"] and first["rows"][0]["quick"] is True
    chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.2m"])
    second = _results(tmp_path)
    ids = [r["id"] for r in second["rows"]]
    assert ids[0] == "4.1" and {"4.2.5", "4.2w.5", "4.2m.5"} <= set(ids)
    assert second["rows"][0] == first["rows"][0]              # kept as it was, stamps and all
    assert set(second["bumps"]) == {"5", "10", "20"}
    assert len(second["runs"]) == 2 and second["complete"] is True

    # rerun 4.1 over a doctored value: only 4.1 changes, and back to the measured value
    doctored = json.loads(json.dumps(second))
    doctored["rows"][0]["measured"] = 123.0
    (tmp_path / "results.json").write_text(json.dumps(doctored))
    chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1"])
    third = _results(tmp_path)
    assert third["rows"][0]["measured"] == first["rows"][0]["measured"] != 123.0
    assert third["rows"][0]["run"] != first["rows"][0]["run"]
    assert third["rows"][1:] == second["rows"][1:]
    # a run that no row refers to any more is dropped; the one that made the 4.2 rows stays
    assert [run["id"] for run in third["runs"]] == [second["rows"][1]["run"], third["rows"][0]["run"]]


def test_merge_replaces_rows_by_id_and_merges_per_row_payload(tmp_path):
    args = _args(tmp_path)
    report.record(args, [report.row("1.2", "b", None, [1.0, 2.0])], curves={"1.2": [1, 2]}, n=1)
    report.record(args, [report.row("1.1", "a", 95.0, 3.0)], curves={"1.1": [3]}, n=2)
    out = report.finish(args, [report.row("1.2", "b again", None, 5.0)], curves={"1.2": [5]})
    assert [(r["id"], r["measured"]) for r in out["rows"]] == [("1.1", 3.0), ("1.2", 5.0)]
    assert out["curves"] == {"1.1": [3], "1.2": [5]} and out["n"] == 2
    assert out == _results(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        report.record(args, [], runs=[])


def test_rows_are_in_natural_id_order():
    ids = ["3.14@1000", "3.10", "3.9", "3.14@100", "3.2", "5.8.4.1", "5.10.1"]
    assert sorted(ids, key=report.row_sort_key) == ["3.2", "3.9", "3.10", "3.14@100", "3.14@1000",
                                                    "5.8.4.1", "5.10.1"]


# --- what a run checks before it trains ---------------------------------------------------------

def test_an_unknown_row_id_is_an_error_listing_the_ids_and_results_are_untouched(tmp_path, capsys,
                                                                                 monkeypatch):
    (tmp_path / "results.json").write_text('{"rows": [], "kept": "as it was"}')
    before = (tmp_path / "results.json").read_bytes()
    monkeypatch.setattr(chap4, "run", lambda args: pytest.fail("trained despite a bad --only"))
    with pytest.raises(SystemExit) as e:
        chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1", "9.9"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "unknown row id 9.9" in err and "4.1 4.2 4.2w 4.2m 4.3" in err
    assert (tmp_path / "results.json").read_bytes() == before


def test_chap6_only_accepts_a_row_with_variants(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(chap6, "run", lambda args: seen.append(args) or ([], {}))
    chap6.main(["--quick", "--out", str(tmp_path), "--only", "6.8", "6.10b"])
    wanted = [r[0] for r in chap6.ROWS
              if report.wanted(seen[0], chap6.base_id(r[0])) or report.wanted(seen[0], r[0])]
    assert wanted == ["6.8a", "6.8b", "6.10b"]
    assert "6.8" in chap6.ROW_IDS and "6.12" in chap6.ROW_IDS and "6.1" in chap6.ROW_IDS


def test_an_out_that_cannot_be_written_fails_before_training(tmp_path, capsys, monkeypatch):
    """Run as root, permissions do not stop a write; a path under a file does."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(chap4, "run", lambda args: pytest.fail("trained into an unwritable --out"))
    with pytest.raises(SystemExit) as e:
        chap4.main(["--quick", "--out", str(blocker / "results")])
    assert e.value.code != 0
    assert f"--out {blocker / 'results'} cannot be written" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("content", ["{not json", '{"no": "rows"}'])
def test_an_out_whose_results_file_is_not_one_fails_and_is_left_alone(tmp_path, capsys, content):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(SystemExit):
        _args(tmp_path)
    assert "move it away or give another --out" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == content


def test_quick_and_full_rows_never_share_a_folder(tmp_path, capsys):
    report.finish(_args(tmp_path, "--quick"), [report.row("1.1", "a", None, 1.0)])
    with pytest.raises(SystemExit):
        _args(tmp_path)                                 # a full run into a quick folder
    assert "holds --quick results; a full run must not mix" in capsys.readouterr().err
    full = tmp_path / "full"
    report.finish(_args(full), [report.row("1.1", "a", None, 1.0)])
    with pytest.raises(SystemExit):
        _args(full, "--quick")
    assert "holds full results; a --quick run must not mix" in capsys.readouterr().err
    _args(tmp_path, "--quick")                          # the same kind is welcome


def test_resume_and_restart_are_flags_for_the_trainer_and_exclude_each_other(tmp_path):
    assert (_args(tmp_path).resume, _args(tmp_path).restart) == (False, False)
    assert _args(tmp_path, "--resume").resume and _args(tmp_path, "--restart").restart
    with pytest.raises(SystemExit):
        _args(tmp_path, "--resume", "--restart")


def test_checkpoint_dir_is_in_the_user_cache_one_folder_per_out_and_row(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    a = report.checkpoint_dir(_args(Path("out"), chapter="chap6"), "6.8a")
    assert a == report.checkpoint_dir(_args(tmp_path / "out", chapter="chap6"), "6.8a")  # absolute --out
    assert re.fullmatch(r"[0-9a-f]{12}", a.parent.parent.name)
    assert a.relative_to(tmp_path / "cache" / "nndl-jax" / "checkpoints").parts[1:] == ("chap6", "6.8a")
    assert report.checkpoint_dir(_args(tmp_path / "other", chapter="chap6"), "6.8a").parent.parent != \
        a.parent.parent
    assert not a.exists()


def test_progress_prints_an_eta_from_the_epochs_so_far(capsys, monkeypatch):
    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr(report.time, "time", lambda: next(clock))
    show = report.progress("6.2", 4)
    show(0, {"evaluation_accuracy": [90, 91]})          # 10 s for 1 epoch of 4: 30 s left
    show(3, {"evaluation_accuracy": [97, 98]})          # the last: no estimate
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("(10.0 s, ETA 30 s)") and lines[1].endswith("(20.0 s)")
    assert report.duration(4000) == "1 h 6 min" and report.duration(75) == "1 min 15 s"


# --- the report and the README ----------------------------------------------------------------

def test_report_page_shows_every_row_book_beside_measured_and_links_existing_figures(tmp_path):
    report.finish(_args(tmp_path / "chap1", chapter="chap1"), [
        report.row("1.1", "[784,30,10]", 95.42, [95.0, 95.5], note="peak"),
        report.row("1.5", "darkness | baseline", 22.25, 22.25)], settings={"epochs": 30})
    (tmp_path / "chap1" / "chap1_accuracy.png").write_bytes(b"png")
    page = reproduce.report_page(tmp_path)
    assert "| 1.1 | [784,30,10] | 95.42% | 95.25% ± 0.25 | 95.50% (2) | peak |" in page
    assert "| 1.5 | darkness \\| baseline | 22.25% | 22.25% |  |  |" in page
    assert "Settings: `epochs=30`" in page and "python -m experiments.chap1 --out" in page
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
    assert links == ["chap1/chap1_accuracy.png"] and all((tmp_path / link).exists() for link in links)


def test_readme_block_holds_full_rows_with_a_book_number_and_is_rewritten_between_markers(tmp_path):
    report.finish(_args(tmp_path / "chap4", chapter="chap4"), [
        report.row("4.2.5", "bumps", 0.4, 0.36, unit=""), report.row("4.1", "step", None, 1e-5, unit=""),
        report.row("4.3", "sgd", 0.1, 0.2, unit="", note="SHORTENED: 5 epochs (book 1000)")])
    block = reproduce.readme_block(tmp_path)
    assert block.startswith(reproduce.BEGIN) and block.endswith(reproduce.END)
    assert "| 4.2.5 | bumps | 0.4 | 0.36 |" in block and "| 4.1 |" not in block
    assert "| 4.3 | sgd (SHORTENED: not the book's setting, see the report) | 0.1 | 0.2 |" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{reproduce.BEGIN}\nstale\n{reproduce.END}\n\nafter\n")
    assert reproduce.update_readme(readme, tmp_path) is True
    assert readme.read_text() == f"# title\n\n{block}\n\nafter\n"
    assert reproduce.update_readme(readme, tmp_path) is False
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no generated results block"):
        reproduce.update_readme(readme, tmp_path)
    assert readme.read_text() == "no markers"


def test_readme_wall_time_adds_the_earlier_sittings_of_resumed_rows(tmp_path):
    """A row resumed over sittings carries earlier_seconds; the chapter's line adds
    them to its runs' wall time and says so, and counts untimed restored epochs."""
    args = _args(tmp_path / "chap6", chapter="chap6")
    report.finish(args, [report.row("6.7", "expanded", 99.37, 99.41, earlier_seconds=7200.0, untimed_epochs=0),
                         report.row("6.8a", "fc 300", 99.46, 99.40, earlier_seconds=3600.0, untimed_epochs=5)])
    res = json.loads((tmp_path / "chap6" / "results.json").read_text())
    wall = res["wall_seconds"] + 10800
    line = next(ln for ln in reproduce.readme_block(tmp_path).splitlines() if ln.startswith("**chap6**"))
    assert f"{reproduce._duration(wall)} wall (with the earlier sittings of 2 resumed rows; 5 epochs restored " \
           "from checkpoints that predate epoch timing are not counted) on" in line
    report.finish(args, [report.row("6.7", "expanded", 99.37, 99.41), report.row("6.8a", "fc 300", 99.46, 99.4)])
    line = next(ln for ln in reproduce.readme_block(tmp_path).splitlines() if ln.startswith("**chap6**"))
    assert "resumed" not in line


def test_wall_time_counts_runs_side_by_side_once_and_says_what_they_summed_to():
    """Two runs started together on two cores take the longer one's wall time,
    not the sum; a later run adds its own; a run id without a start time adds
    its wall_seconds."""
    runs = [{"id": "2026-12-02T10:00:00+00:00 pid 1 #1", "wall_seconds": 3600.0},
            {"id": "2026-12-02T10:30:00+00:00 pid 2 #1", "wall_seconds": 3600.0},   # 10:30-11:30: overlaps
            {"id": "2026-12-02T12:00:00+00:00 pid 3 #1", "wall_seconds": 600.0}]
    assert reproduce.wall_clock_seconds(runs) == 5400.0 + 600.0
    assert reproduce.wall_clock_seconds(runs + [{"id": "run 4", "wall_seconds": 60.0}]) == 6060.0
    assert reproduce.wall_text(runs) == "1 h 40 min wall (2 h 10 min of runs, some side by side)"
    assert reproduce.wall_text(runs[2:]) == "10 min 0 s wall"
    rows = [{"id": "6.7", "earlier_seconds": 600.0}]
    assert reproduce.wall_text(runs, rows) == ("1 h 50 min wall (2 h 20 min of runs, some side by side; "
                                               "with the earlier sittings of 1 resumed row)")


def test_readme_results_table_is_what_the_committed_reproduced_files_give():
    """The README's generated block can never drift from reproduced/: regenerate
    it with `nndl-jax report --readme` after adding results there."""
    text = (REPO / "README.md").read_text()
    start, end = text.index(reproduce.BEGIN), text.index(reproduce.END) + len(reproduce.END)
    assert text[start:end] == reproduce.readme_block(REPO / "reproduced"), \
        "README.md's results table is stale: run `nndl-jax report --readme`"
    for results in (REPO / "reproduced").glob("chap*/results.json"):
        rows = json.loads(results.read_text())["rows"]
        assert rows and not any(r["quick"] for r in rows), f"{results}: quick rows do not belong in reproduced/"


def test_a_run_with_a_diverged_net_is_marked_in_the_results_and_one_without_is_not(tmp_path):
    args = _args(tmp_path)
    report.record_divergence(args, "1.1+1.2", [-1, -1, -1])
    assert not (tmp_path / "results.json").exists()
    report.record_divergence(args, "1.1+1.2", [-1, 3, -1])
    report.record_divergence(args, "3.7@abc", [0])
    assert _results(tmp_path)["diverged"] == {"1.1+1.2": [-1, 3, -1], "3.7@abc": [0]}
