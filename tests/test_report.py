"""experiments/store.py, report.py, driver.py and reproduce.py: results merged
by row and never lost, the checks a run makes before it trains, the report
page, and the README's results table, which must equal what the committed
reproduced/ files give."""
import json
import re
from pathlib import Path

import pytest

from experiments import chap4, chap6, checkpoints, driver, progress, report, reproduce, store

REPO = Path(__file__).resolve().parents[1]


def _results(folder):
    return json.loads((Path(folder) / "results.json").read_text())


def _args(tmp_path, *argv, chapter="chapX", row_ids=("1.1", "1.2", "6.8")):
    return driver.parse_args(chapter, "", ["--out", str(tmp_path), *argv], row_ids=list(row_ids))


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
    store.record(args, [report.row("1.2", "b", None, [1.0, 2.0])], curves={"1.2": [1, 2]}, n=1)
    store.record(args, [report.row("1.1", "a", 95.0, 3.0)], curves={"1.1": [3]}, n=2)
    out = driver.finish(args, [report.row("1.2", "b again", None, 5.0)], curves={"1.2": [5]})
    assert [(r["id"], r["measured"]) for r in out["rows"]] == [("1.1", 3.0), ("1.2", 5.0)]
    assert out["curves"] == {"1.1": [3], "1.2": [5]} and out["n"] == 2
    assert out == _results(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        store.record(args, [], runs=[])


def test_rows_are_in_natural_id_order():
    ids = ["3.14@1000", "3.10", "3.9", "3.14@100", "3.2", "5.8.4.1", "5.10.1"]
    assert sorted(ids, key=store.row_sort_key) == ["3.2", "3.9", "3.10", "3.14@100", "3.14@1000",
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
    assert "unknown row id 9.9" in err and "4.1 4.2 4.2m 4.2w 4.3" in err
    assert (tmp_path / "results.json").read_bytes() == before


def test_chap6_only_accepts_a_row_with_variants(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(chap6, "run", lambda args: seen.append(args) or ([], {}))
    chap6.main(["--quick", "--out", str(tmp_path), "--only", "6.8", "6.10b"])
    wanted = [r["id"] for r in chap6.ROWS
              if driver.wanted(seen[0], chap6.base_id(r["id"])) or driver.wanted(seen[0], r["id"])]
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
    assert "move it away or give another folder" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == content


def test_quick_and_full_rows_never_share_a_folder(tmp_path, capsys):
    driver.finish(_args(tmp_path, "--quick"), [report.row("1.1", "a", None, 1.0)])
    with pytest.raises(SystemExit):
        _args(tmp_path)                                 # a full run into a quick folder
    assert "holds --quick results; a full run must not mix" in capsys.readouterr().err
    full = tmp_path / "full"
    driver.finish(_args(full), [report.row("1.1", "a", None, 1.0)])
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
    a = checkpoints.checkpoint_dir(_args(Path("out"), chapter="chap6"), "6.8a")
    assert a == checkpoints.checkpoint_dir(_args(tmp_path / "out", chapter="chap6"), "6.8a")  # absolute --out
    assert re.fullmatch(r"[0-9a-f]{12}", a.parent.parent.name)
    assert a.relative_to(tmp_path / "cache" / "nndl-jax" / "checkpoints").parts[1:] == ("chap6", "6.8a")
    assert checkpoints.checkpoint_dir(_args(tmp_path / "other", chapter="chap6"), "6.8a").parent.parent != \
        a.parent.parent
    assert not a.exists()


def test_progress_eta_counts_only_the_epochs_after_the_first_finished_in_this_process(capsys, monkeypatch):
    """Issue 24 item 8: the first epoch (which includes compiling, here 100 s)
    gives only an upper bound; later estimates use the epochs since it (10 s
    each), so a resumed run that starts at epoch 10 and compiles for long still
    estimates right; every `every`-th epoch is printed, but all are timed."""
    clock = iter([0.0, 100.0, 110.0, 120.0, 130.0])
    monkeypatch.setattr(driver.time, "time", lambda: next(clock))
    show = progress.progress("3.8", 14, lambda record: progress.numbers(record["acc"], "{:.2f}"), every=2)
    show(10, {"acc": [0.12345, 9.87654]})   # resumed: the first epoch of this process is epoch 10
    show(11, {"acc": [1, 2]})
    show(12, {"acc": [1, 2]})               # not printed (every 2), but timed
    show(13, {"acc": [1, 2]})
    waiting, *lines = capsys.readouterr().out.splitlines()
    assert waiting.startswith("  [3.8] compiling (first run only") and waiting.endswith("then 14 epochs ...")
    assert lines[0] == ("  [3.8] Epoch 10 (11 of 14): 0.12 9.88  "
                        "(1 min 40 s with compiling; at most about 5 min 0 s left)")
    assert lines[1] == "  [3.8] Epoch 11 (12 of 14): 1.00 2.00  (1 min 50 s, ETA 20 s)"   # 10 s an epoch, 2 left
    assert lines[2] == "  [3.8] Epoch 13 (14 of 14): 1.00 2.00  (2 min 10 s)" and len(lines) == 3
    assert report.duration(4000) == "1 h 6 min" and report.duration(75) == "1 min 15 s"
    assert report.duration(0.44) == "0.4 s"


def test_progress_prints_fits_events(capsys):
    show = progress.progress("1.1", 3, lambda record: "")
    show(1, {"events": [{"event": "resumed", "path": "/c/state.npz", "epochs_done": 1, "epochs": 3},
                        {"event": "diverged", "net": 2, "epoch": 1, "eta": 100.0}]})
    out = capsys.readouterr().out
    assert "[1.1] resumed from /c/state.npz: 1 of 3 epochs done" in out
    assert "[1.1] net 2 diverged in Epoch 1 (η = 100)" in out   # the book's count, from 0


# --- the report and the README ----------------------------------------------------------------

def test_report_page_shows_every_row_book_beside_measured_and_links_existing_figures(tmp_path):
    driver.finish(_args(tmp_path / "chap1", chapter="chap1"), [
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
    driver.finish(_args(tmp_path / "chap4", chapter="chap4"), [
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


def test_report_wall_time_adds_the_earlier_sittings_of_resumed_rows(tmp_path):
    """A row resumed over sittings carries earlier_seconds; the chapter's line in
    REPORT.md adds them to its runs' wall time and says so, and counts untimed
    restored epochs. (The README, for the book's readers, names none of this.)"""
    args = _args(tmp_path / "chap6", chapter="chap6")
    driver.finish(args, [report.row("6.7", "expanded", 99.37, 99.41, earlier_seconds=7200.0, untimed_epochs=0),
                         report.row("6.8a", "fc 300", 99.46, 99.40, earlier_seconds=3600.0, untimed_epochs=5)])
    res = json.loads((tmp_path / "chap6" / "results.json").read_text())
    wall = res["wall_seconds"] + 10800
    line = next(ln for ln in reproduce.report_page(tmp_path).splitlines() if ln.startswith("Measured:"))
    assert "sittings" not in reproduce.readme_block(tmp_path)
    assert f"{report.duration(wall)} wall (with the earlier sittings of 2 resumed rows; 5 epochs restored " \
           "from checkpoints that predate epoch timing are not counted) on" in line
    driver.finish(args, [report.row("6.7", "expanded", 99.37, 99.41), report.row("6.8a", "fc 300", 99.46, 99.4)])
    line = next(ln for ln in reproduce.report_page(tmp_path).splitlines() if ln.startswith("Measured:"))
    assert "resumed" not in line


def test_wall_time_counts_runs_side_by_side_once_and_says_what_they_summed_to():
    """Two runs started together on two cores take the longer one's wall time,
    not the sum; a later run adds its own; a run id without a start time adds
    its wall_seconds."""
    runs = [{"id": "2026-12-02T10:00:00+00:00 pid 1 #1", "wall_seconds": 3600.0},
            {"id": "2026-12-02T10:30:00+00:00 pid 2 #1", "wall_seconds": 3600.0},   # 10:30-11:30: overlaps
            {"id": "2026-12-02T12:00:00+00:00 pid 3 #1", "wall_seconds": 600.0}]
    assert report.wall_clock_seconds(runs) == 5400.0 + 600.0
    assert report.wall_clock_seconds(runs + [{"id": "run 4", "wall_seconds": 60.0}]) == 6060.0
    assert report.wall_text(runs) == "1 h 40 min wall (2 h 10 min of runs, some side by side)"
    assert report.wall_text(runs[2:]) == "10 min 0 s wall"
    rows = [{"id": "6.7", "earlier_seconds": 600.0}]
    assert report.wall_text(runs, rows) == ("1 h 50 min wall (2 h 20 min of runs, some side by side; "
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
    """Divergence is a payload the job records with its rows through the one writer (store.record)."""
    args = _args(tmp_path)
    assert store.divergence("1.1+1.2", [-1, -1, -1]) == {}
    store.record(args, [], **store.divergence("1.1+1.2", [-1, 3, -1]))
    store.record(args, [], **store.divergence("3.7@abc", [0]))
    assert _results(tmp_path)["diverged"] == {"1.1+1.2": [-1, 3, -1], "3.7@abc": [0]}


# --- the results store: every file validated when read (issue 24 items 1, 2, 11) ------------

DAMAGED = {  # case: (results.json, what the refusal names)
    "a row without an id": ({"rows": [{"experiment": "e", "unit": "%", "measured": 1.0}]}, "row 1 has no string id"),
    "runs not a list": ({"rows": [], "runs": "none"}, "'runs' is not a list"),
    "runs a dict": ({"rows": [], "runs": {"a": 1}}, "'runs' is not a list"),
    "a row that is not a dict": ({"rows": ["4.1"]}, "row 1 is str, not an object"),
    "a row without measured": ({"rows": [{"id": "4.1", "experiment": "e", "unit": ""}]},
                               "row 1 (id '4.1') has no 'measured'"),
    "a summary without runs": ({"rows": [{"id": "4.1", "experiment": "e", "unit": "", "measured": {"mean": 1}}]},
                               "row 1 (id '4.1') has a 'measured' summary without a list of numbers"),
    # what the tables read of a row (report.format_table, markdown_table): merge failed in them with a traceback
    "a row without book": ({"rows": [{"id": "4.1", "experiment": "e", "unit": "", "measured": 1.0}]},
                           "row 1 (id '4.1') has no 'book'"),
    "a book that is text": ({"rows": [{"id": "4.1", "experiment": "e", "unit": "", "book": "97%", "measured": 1.0}]},
                            "row 1 (id '4.1') has a 'book' of type str, not a number or null"),
    "a note that is a number": ({"rows": [{"id": "4.1", "experiment": "e", "unit": "", "book": None,
                                           "measured": 1.0, "note": 3}]},
                                "row 1 (id '4.1') has a 'note' of type int, not a string"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_results_file_is_refused_before_training_naming_the_file_and_row(tmp_path, capsys,
                                                                                  monkeypatch, case):
    content, named = DAMAGED[case]
    (tmp_path / "results.json").write_text(json.dumps(content))
    before = (tmp_path / "results.json").read_bytes()
    monkeypatch.setattr(chap4, "run", lambda args: pytest.fail("trained despite a damaged results file"))
    with pytest.raises(SystemExit) as e:
        chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.json'} is not a valid results file" in err
    assert named in err and "move it away or give another folder" in err
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.parametrize("how", ["folder", "truncated"])
def test_an_unusable_results_file_in_out_is_refused_in_one_line_before_training(tmp_path, capsys, monkeypatch,
                                                                               how):
    """A chapter run's --out whose results.json is a folder or a truncated
    file: the one reader's one-line error naming the file and what to do
    (``store.read_results``, as merge and the report give it), nothing trained,
    nothing touched."""
    path = tmp_path / "results.json"
    if how == "folder":
        path.mkdir()
        (path / "kept.txt").write_text("not touched")
        said = f"{path} is a folder, not a results file"
    else:
        driver.finish(_args(tmp_path, "--quick", chapter="chap4"), [report.row("4.1", "a", None, 1.0)])
        path.write_bytes(path.read_bytes()[:-7])           # cut off, as an interrupted copy leaves it
        said = f"{path} cannot be read as results (JSONDecodeError: "
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    monkeypatch.setattr(chap4, "run", lambda args: pytest.fail("trained despite an unusable results file"))
    with pytest.raises(SystemExit) as e:
        chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err, err
    assert [line for line in err.splitlines() if str(path) in line] == [err.splitlines()[-1]]   # one line
    assert err.rstrip().endswith("it is left as it is: move it away or give another folder")
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before


def test_a_fifo_in_place_of_results_json_is_refused_without_opening_it(tmp_path):
    """Opening a FIFO waits for a writer for ever: the one reader stats it first."""
    import os
    import threading
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(store.out_problem(tmp_path, True, "chap4")), daemon=True)
    reader.start()
    reader.join(timeout=60)
    if reader.is_alive():   # it opened the FIFO and waits: let it go, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=60)
        pytest.fail("the results store opened a FIFO named results.json")
    assert answer == [f"{fifo} is not a regular file; it is left as it is: move it away or give another folder"]


def test_report_skips_a_damaged_file_with_a_warning_and_the_readme_block_names_it(tmp_path, capsys):
    driver.finish(_args(tmp_path / "chap1", chapter="chap1"), [report.row("1.1", "a", 95.0, [95.0, 96.0])])
    (tmp_path / "chap4").mkdir()
    (tmp_path / "chap4" / "results.json").write_text(json.dumps(DAMAGED["a row without an id"][0]))
    assert reproduce.report_main(["--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: left out of the report: {tmp_path / 'chap4' / 'results.json'}" in err and "row 1" in err
    page = (tmp_path / "REPORT.md").read_text()
    assert "## chap1" in page and "## chap4" not in page
    with pytest.raises(store.ResultsError, match=r"chap4/results.json is not a valid results file: row 1"):
        reproduce.readme_block(tmp_path)


def test_every_committed_results_file_is_valid():
    for folder in sorted((REPO / "reproduced").glob("chap*")):
        assert store.read_results(folder)["rows"], folder


def test_a_chapters_out_holding_another_chapters_results_is_refused_before_training(tmp_path, capsys,
                                                                                   monkeypatch):
    chap4.main(["--quick", "--out", str(tmp_path), "--only", "4.1"])
    before = (tmp_path / "results.json").read_bytes()
    from experiments import chap5
    monkeypatch.setattr(chap5, "run", lambda args: pytest.fail("trained into another chapter's folder"))
    with pytest.raises(SystemExit) as e:
        chap5.main(["--quick", "--out", str(tmp_path), "--only", "5.10"])
    assert e.value.code == 2
    assert f"{tmp_path / 'results.json'} holds chap4's results, not chap5's" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_bytes() == before


def test_best_of_k_follows_each_rows_direction():
    """Issue 24 item 11: higher is better for accuracies, lower for costs and
    deviations, and gradient norms have no best at all."""
    accuracy = report.row("1.1", "a", None, [95.0, 96.0])
    cost = report.row("3.18a", "c", None, [0.35, 0.34, 0.36], unit="", direction="lower")
    norm = report.row("5.5.1", "n", None, [0.1, 0.2], unit="")
    assert accuracy["measured"]["best"] == 96.0 and report.measured_cells(accuracy)[1] == "96.00% (2)"
    assert cost["measured"]["best"] == 0.34 and report.measured_cells(cost)[1] == "0.34 (3)"
    assert norm["direction"] == "none" and norm["measured"]["best"] is None and report.measured_cells(norm)[1] == ""
    # the recorded rows: 3.18's training costs take their lowest run, chapter 5's norms none
    chap3 = {r["id"]: r for r in store.read_results(REPO / "reproduced" / "chap3")["rows"]}
    chap5 = {r["id"]: r for r in store.read_results(REPO / "reproduced" / "chap5")["rows"]}
    for rid in ("3.18a", "3.18b", "3.18c"):
        runs = chap3[rid]["measured"]["runs"]
        assert report.measured_cells(chap3[rid])[1] == f"{report._fmt(min(runs), '')} ({len(runs)})"
    assert report.measured_cells(chap5["5.5.1"])[1] == "" and report.measured_cells(chap5["5.1"])[1].endswith("(3)")


def test_table_sizes_ids_and_wraps_text_at_word_boundaries():
    long = "a rather long experiment description that goes on well past the fifty-eight columns"
    text = report.format_table([report.row("6.11@12345678", long, 99.6, 98.0, note="n " * 80),
                                report.row("1.1", "short", None, 1.0)])
    lines = text.splitlines()
    assert all(len(line) <= len(lines[0]) for line in lines)
    words = " ".join(line[len("6.11@12345678 "):len("6.11@12345678 ") + 58].strip() for line in lines[2:4])
    assert words == long                                   # wrapped, no word cut
    assert lines[4].startswith(" " * 16 + "n n") and lines[-1].startswith("1.1           short")
    assert lines[2].index("99.60%") + len("99.60%") == lines[-1].index("—") + 1   # columns aligned


def test_a_quick_rows_note_says_shortened(tmp_path):
    args = _args(tmp_path, "--quick")
    out = store.record(args, [report.row("1.1", "a", None, 1.0, note="measured"),
                              report.row("1.2", "b", None, 1.0, note="SHORTENED: 2 epochs")])
    notes = [r["note"] for r in out["rows"]]
    assert notes == [f"{store.SHORTENED}; measured", "SHORTENED: 2 epochs"]


def test_an_interrupted_writes_temporary_file_is_removed_by_the_next_record(tmp_path):
    args = _args(tmp_path)
    stale = tmp_path / ".results.json.999999999.tmp"      # a pid that cannot be running
    stale.write_text("half")
    store.record(args, [report.row("1.1", "a", None, 1.0)])
    assert not stale.exists() and _results(tmp_path)["rows"][0]["id"] == "1.1"


def test_resume_over_the_committed_results_would_train_nothing_they_hold(tmp_path, mnist):
    """`nndl-jax reproduce --resume` into reproduced/ skips every row recorded
    there, rows recorded before settings were stamped into rows included (their
    setting was the book's); chapter 1's exercise row 1.8, not recorded, is left to train."""
    import shutil

    from experiments import chap1, chap3, chap5
    todo = {}
    for name, module in (("chap1", chap1), ("chap3", chap3), ("chap4", chap4), ("chap5", chap5)):
        shutil.copytree(REPO / "reproduced" / name, tmp_path / name)
        args = driver.parse_args(name, "", ["--out", str(tmp_path / name), "--resume"],
                                 row_ids=[r["id"] for r in module.ROWS],
                                 add_arguments=getattr(module, "add_arguments", None))
        jobs = {"chap1": lambda a: chap1.jobs(a, mnist), "chap3": lambda a: chap3.jobs(a, mnist),
                "chap4": lambda a: chap4.jobs(a, {}),
                "chap5": lambda a: chap5.jobs(a, mnist, chap5.settings(a, mnist))}[name](args)
        todo[name] = [j.id for j in jobs if driver.recorded_job(args, j) is None]
    assert todo == {"chap1": ["1.8"], "chap3": [], "chap4": [], "chap5": []}


@pytest.mark.parametrize("seed", ["-1", "4294967296", "4294967295"])
def test_seeds_outside_32_bits_are_refused_before_training(tmp_path, capsys, seed):
    """--seed 4294967295 with 3 seeds runs past 2**32 - 1 too; such seeds would
    silently collide with small ones."""
    with pytest.raises(SystemExit) as e:
        _args(tmp_path, "--seed", seed)
    assert e.value.code == 2 and "seeds must lie in 0 .. 2**32 - 1" in capsys.readouterr().err


# --- REPORT.md: data from results files, files read, parts' wall time (issues 31 and 33) ---------

def _report_folder(tmp_path, rows, **run_changes):
    """``tmp_path/chap1/results.json`` as a run writes it, its run entry then changed by ``run_changes``."""
    driver.finish(_args(tmp_path / "chap1", chapter="chap1"), rows)
    res = _results(tmp_path / "chap1")
    res["runs"][0].update(run_changes)
    (tmp_path / "chap1" / "results.json").write_text(json.dumps(res))
    return res


def _outside_code_spans(page):
    """The page less its inline code spans (where Markdown stays literal)."""
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", page)


def test_report_writes_text_from_results_files_as_data(tmp_path):
    """A newline in a recorded command line must not start a heading, `<` and `>`
    must not make HTML, and link syntax must not make a link or an image."""
    hostile = "x\n# owned <img src=x onerror=alert(1)> [click](http://evil.example) ![i](http://evil.example/i.png)"
    _report_folder(tmp_path, [report.row("1.1", hostile, 95.0, 95.0, note="a ` tick and\r\n## also")],
                   argv=["--out", hostile, "`"], environment={"platform": "<b>\n# box"})
    page = reproduce.report_page(tmp_path)
    headings = [ln for ln in page.splitlines() if ln.lstrip().startswith("#")]
    assert headings == ["# Neural Networks and Deep Learning in JAX: the book beside the measured", "## chap1"]
    text = _outside_code_spans(page)
    assert not re.search(r"(?<!\\)<", text) and not re.search(r"(?<!\\)>", text)
    assert not re.search(r"(?<!\\)\]\(http", text)
    (command,) = [ln for ln in page.splitlines() if "python -m experiments.chap1" in ln]
    assert command.startswith("- ``python -m experiments.chap1 --out 'x\\n# owned <img")   # one line: \n shown
    assert "| 1.1 | x # owned \\<img src=x onerror=alert(1)\\> [click\\](http://evil.example)" in page
    assert report.markdown_text("a\\](b)") == "a\\\\\\](b)"     # a backslash of its own escapes nothing
    assert report.code_span("a`b") == "``a`b``" and report.code_span("`") == "`` ` ``"


def test_only_regular_files_are_read(tmp_path):
    """What the report checks before it opens a results file (a stat, which reads nothing)."""
    import os
    (tmp_path / "regular.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "regular.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.json")
    assert store.unreadable(tmp_path / "regular.json") is None and store.unreadable(tmp_path / "link.json") is None
    assert store.unreadable(tmp_path / "zero.json") == store.unreadable(tmp_path / "fifo.json") == \
        "is not a regular file"
    assert store.unreadable(tmp_path) == "is a folder, not a results file"
    assert store.unreadable(tmp_path / "missing").startswith("cannot be read")


def test_report_command_leaves_out_a_results_file_linked_to_dev_zero_or_a_fifo(tmp_path):
    """The command itself, in a process of its own bounded by a timeout and a
    memory cap (reading /dev/zero would grow until the cap; opening a FIFO
    with no writer would wait for ever): both files are left out with a
    warning, the rest reported."""
    import os
    import subprocess
    import sys
    _report_folder(tmp_path, [report.row("1.1", "a", 95.0, 95.0)])
    (tmp_path / "chap3").mkdir()
    (tmp_path / "chap3" / "results.json").symlink_to("/dev/zero")
    (tmp_path / "chap4").mkdir()
    os.mkfifo(tmp_path / "chap4" / "results.json")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 ** 31, 2 ** 31)); "
            "from experiments import reproduce; sys.exit(reproduce.report_main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for chapter in ("chap3", "chap4"):
        assert f"left out of the report: {tmp_path / chapter / 'results.json'} is not a regular file" in done.stderr
    page = (tmp_path / "REPORT.md").read_text()
    assert "## chap1" in page and "## chap3" not in page and "## chap4" not in page


def test_report_command_says_in_one_message_when_out_cannot_take_report_md(tmp_path, capsys, monkeypatch):
    """Run as root, permissions do not stop a write: a REPORT.md that is a folder
    does, and a read-only folder is a PermissionError from the writer."""
    _report_folder(tmp_path, [report.row("1.1", "a", 95.0, 95.0)])
    (tmp_path / "REPORT.md").mkdir()
    assert reproduce.report_main(["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nndl-jax report: cannot write {tmp_path / 'REPORT.md'} (") and err.count("\n") == 1
    assert "give an --out you can write to" in err and (tmp_path / "REPORT.md").is_dir()

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(store, "write_text", read_only)
    (tmp_path / "REPORT.md").rmdir()
    assert reproduce.report_main(["--out", str(tmp_path)]) == 1
    assert "(Permission denied); nothing was changed" in capsys.readouterr().err
    assert not (tmp_path / "REPORT.md").exists()


def test_the_parts_of_a_plan_take_their_longest_part_as_wall_time_and_their_sum_as_compute():
    """Parts run at once on machines of their own: a chapter made of parts took
    as long as its longest part (a part over two sittings: their union), whatever
    hours they started; the sum is its compute time. Runs of no part count as before."""
    part = lambda i, plan="p1": {"part": f"{i}/3", "plan": plan}  # noqa: E731
    runs = [{"id": "2026-12-02T10:00:00+00:00 pid 1 #1", "wall_seconds": 3600.0, "part": part(1)},
            {"id": "2026-12-02T12:00:00+00:00 pid 2 #1", "wall_seconds": 1800.0, "part": part(2)},
            {"id": "2026-12-02T13:00:00+00:00 pid 3 #1", "wall_seconds": 1800.0, "part": part(2)},  # a resumed part
            {"id": "2026-12-03T09:00:00+00:00 pid 4 #1", "wall_seconds": 600.0, "part": part(3)}]
    assert report.wall_seconds(runs) == (3600.0, 7800.0, 3)
    assert report.wall_text(runs) == "1 h 0 min wall (the longest of 3 parts; 2 h 10 min of compute in all)"
    alone = {"id": "2026-12-04T09:00:00+00:00 pid 5 #1", "wall_seconds": 300.0}
    assert report.wall_seconds(runs + [alone])[:2] == (3900.0, 8100.0)
    assert report.wall_text(runs[:1]) == "1 h 0 min wall (one part; 1 h 0 min of compute)"
    assert report.wall_seconds([alone]) == (300.0, 300.0, 0)


def test_report_page_gives_a_merged_chapter_its_longest_part(tmp_path):
    res = _report_folder(tmp_path, [report.row("1.1", "a", 95.0, 95.0), report.row("1.2", "b", 96.0, 96.0)])
    first = dict(res["runs"][0], id="2026-12-02T10:00:00+00:00 pid 1 #1", wall_seconds=3600.0,
                 part={"part": "1/2", "plan": "p"})
    second = dict(first, id="2026-12-02T12:00:00+00:00 pid 2 #1", wall_seconds=1200.0,
                  part={"part": "2/2", "plan": "p"})
    res["runs"] = [first, second]
    res["rows"][0]["run"], res["rows"][1]["run"] = first["id"], second["id"]
    (tmp_path / "chap1" / "results.json").write_text(json.dumps(res))
    page = reproduce.report_page(tmp_path)
    assert "1 h 0 min wall (the longest of 2 parts; 1 h 20 min of compute in all)" in page
    assert re.search(r"^\| \[chap1\]\(#chap1\) \| 2 \| full \| .* \| 1 h 0 min \|", page, re.M)
