"""Units of work and the one results writer: the policies they share (what
identifies a measurement, "already recorded with these settings", merging
records), merge treating parts as data (issue 31 item 6), huge N for
--plan / --part (issue 31 item 8), and the merged report's wall time (issue 33 item 5)."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import merge, parts, report, reproduce, store
from tests.test_parts import write_part

REPO = Path(__file__).resolve().parent.parent


# --- one identity, one merge, one "recorded" policy ----------------------------------------

def test_merge_records_replaces_in_the_store_and_refuses_in_merge():
    held = {"a": {"id": "a", "measured": 1.0, "seconds": 3.0}}
    again = {"id": "a", "measured": 1.0, "seconds": 9.0}          # only a volatile key differs
    other = {"id": "a", "measured": 2.0, "seconds": 3.0}
    assert store.merge_records(held, [other])[0]["a"] is other      # the store: a rerun replaces
    kept, conflicts = store.merge_records(held, [other], refuse=True)
    assert kept["a"] is held["a"] and conflicts == [("a", ["measured"])]
    kept, conflicts = store.merge_records(held, [again], refuse=True)   # the same measurement: the first kept
    assert conflicts == [] and kept["a"] is held["a"]


@pytest.mark.parametrize("change", [dict(quick=False), dict(x64=True), dict(seeds=[2]), dict(epochs=3)])
def test_matches_needs_the_flags_seeds_and_settings(change):
    record = {"quick": True, "x64": False, "seeds": [1], "epochs": 2}
    want = dict(quick=True, x64=False, seeds=[1], settings={"epochs": 2})
    assert store.matches(record, **want)
    assert not store.matches({**record, **change}, **want)
    assert store.matches({k: v for k, v in record.items() if k != "epochs"}, **want)   # stamped later


def test_a_results_file_with_bad_units_is_refused(tmp_path):
    results = {"rows": [], "units": {"1.1@5": {"id": "1.1@5", "row": "1.1"}}}   # no seed
    assert any("'units'" in where for where, _ in store.results_problems(results))


# --- merge treats parts as data (issue 31 item 6) ------------------------------------------

def _chapter(folder, name):
    results = store.read_results(folder)
    results["chapter"] = name
    store.write_json(folder / store.RESULTS, results)
    return folder


@pytest.mark.parametrize("name", ["../../x", "/tmp/elsewhere", "chap1/../../y"])
def test_merge_refuses_a_chapter_that_is_a_path(tmp_path, name, capsys):
    p1 = _chapter(write_part(tmp_path / "p1", {"a": 1.0}), name)
    assert merge.main([str(p1), "--out", str(tmp_path / "out")]) == 1
    assert "not a chapter name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_merge_compares_every_run_entry_not_only_those_rows_refer_to(tmp_path):
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    p2 = write_part(tmp_path / "p2", {"b": 2.0})
    results = store.read_results(p2)
    results["runs"].append(dict(results["runs"][0], id="an earlier run", code={"version": "0.1.0", "commit": "zzz"}))
    store.write_json(p2 / store.RESULTS, results)
    with pytest.raises(merge.MergeError, match="commit"):
        merge.merge([p1, p2], tmp_path / "out")


@pytest.mark.parametrize("package", ["jax", "jaxlib"])
def test_merge_refuses_parts_made_with_another_jax_or_jaxlib(tmp_path, package):
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    p2 = write_part(tmp_path / "p2", {"b": 2.0})
    for folder, version in ((p1, "0.10.2"), (p2, "0.4.30")):
        results = store.read_results(folder)
        results["runs"][0]["environment"] = {"jax": "0.10.2", "jaxlib": "0.10.2", package: version}
        store.write_json(folder / store.RESULTS, results)
    with pytest.raises(merge.MergeError, match=package):
        merge.merge([p1, p2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_into_an_out_that_is_a_file_is_one_message_naming_it(tmp_path, capsys):
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "below"):
        assert merge.main([str(p1), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"{tmp_path / 'afile'} is a file" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_merge_stopped_half_way_says_what_was_written(tmp_path, monkeypatch):
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    p2 = _chapter(write_part(tmp_path / "p2", {"b": 2.0}), "chapY")
    real, calls = store.write_json, []

    def full_disk_on_the_second(path, payload):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        return real(path, payload)

    monkeypatch.setattr(store, "write_json", full_disk_on_the_second)
    with pytest.raises(merge.MergeError, match="stopped half-way") as e:
        merge.merge([p1, p2], tmp_path / "out")
    assert "written: chapX" in str(e.value) and "not written: chapY" in str(e.value)
    assert "No space left" in str(e.value) and str(calls[1]) in str(e.value)


# --- huge N (issue 31 item 8) -----------------------------------------------------------------

@pytest.mark.parametrize("argv", [["experiments.chap1", "--plan", "10000000"],
                                  ["experiments.chap6", "--part", "1/100000000"],
                                  ["experiments.cli", "reproduce", "--plan", "10000000"]])
def test_a_huge_number_of_parts_is_refused_at_once_naming_how_many_units_there_are(tmp_path, argv):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", *argv, "--out", str(tmp_path / "o")] if "reproduce" not in argv
                          else [sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "give N at most" in done.stderr, done.stderr[-2000:]
    assert len(done.stdout) < 1000 and "Traceback" not in done.stderr


def test_checked_plan_allows_n_up_to_the_most_units_and_no_more():
    units = [parts.Unit("chapX", "j", ("r",), 9.0, True, 0, (), (1, 2, 3), True),
             parts.Unit("chapX", "k", ("s",), 1.0, True, 1)]
    assert parts.most_units(units) == 4
    assert sum(len(p) for p in parts.checked_plan(units, 4, "x")) == 4    # j's three seeds apart, and k
    with pytest.raises(parts.PlanError, match="at most 4 units"):
        parts.checked_plan(units, 5, "x")


# --- the planner's numbers for the whole book (issue 30 item 2) ----------------------------

def test_the_books_plan_for_16_and_8_machines_from_the_recorded_seconds(tmp_path, monkeypatch):
    """--plan 16 at most 4 h 30 min, --plan 8 within 1.15 of the one-machine total / 8, from the
    recorded seconds alone (no probe file: benchmarks/probe_seconds.json's are tested in test_probe)."""
    monkeypatch.setattr(parts, "PROBE_FILE", tmp_path / "no-probe.json")
    args = argparse.Namespace(out=Path("unused"), quick=False, resume=False, restart=False, seeds=None,
                              data_dir=None, devices=None, part=None, only=list(reproduce.CHAPTERS))
    one = parts.expected_seconds(reproduce.book_plan(args, 1)[0])
    walls = {n: max(parts.expected_seconds(p) for p in reproduce.book_plan(args, n)) for n in (8, 16)}
    assert walls[16] <= 4.5 * 3600
    assert walls[8] <= 1.15 * one / 8


# --- the merged report's wall time (issue 33 item 5) ------------------------------------------

def test_the_wall_time_of_parts_is_the_longest_part_and_the_sum_is_compute_time():
    runs = [{"id": "2026-01-01T00:00:00+00:00 pid 1 #1", "wall_seconds": 3600.0, "part": {"part": "1/2"}},
            {"id": "2026-01-02T00:00:00+00:00 pid 2 #1", "wall_seconds": 1800.0, "part": {"part": "2/2"}}]
    assert report.wall_seconds(runs)[:2] == (3600.0, 5400.0)
    text = report.wall_text(runs)
    assert text.startswith("1 h") and "compute" in text and "1 h 30 min" in text
    assert report.wall_seconds([dict(r, part=None) for r in runs])[0] == 5400.0   # one machine, two sittings


# --- units at the end of a run ------------------------------------------------------------

def test_resume_trains_only_the_seeds_not_yet_recorded_and_composes_the_row(tmp_path, mnist_dir, capsys,
                                                                           monkeypatch):
    """1.1 with one seed, then with two under --resume: the recorded unit 1.1@12345678 is kept (its
    record unchanged), only 1.1@12345679 trains, and the row is composed from both."""
    from experiments import chap1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = ["--quick", "--only", "1.1", "--out", str(tmp_path / "o"), "--data-dir", str(mnist_dir)]
    chap1.main(base + ["--seeds", "1"])
    first = store.read_results(tmp_path / "o")["units"]["1.1@12345678"]
    capsys.readouterr()
    chap1.main(base + ["--seeds", "2", "--resume"])
    said = capsys.readouterr().out
    assert "1.1: seeds 12345678 already in" in said and "1 learning rate x 1 seed" in said
    results = store.read_results(tmp_path / "o")
    assert results["units"]["1.1@12345678"] == first
    row = results["rows"][0]
    assert row["seeds"] == [12345678, 12345679] and len(row["measured"]["runs"]) == 2
    assert row["curve"][0] == first["curve"] and row["curve"][1] == results["units"]["1.1@12345679"]["curve"]
    assert all(type(v) is int for curve in row["curve"] for v in curve)  # images correct, as the book counts them


def test_a_part_done_suggests_a_complete_merge_command():
    from experiments import driver
    hint = driver.merge_hint(argparse.Namespace(out=Path("/tmp/my part"), part_record={"part": "2/3", "plan": "p"}))
    assert "nndl-jax merge PART1_OUT '/tmp/my part' PART3_OUT --out merged" in hint and "..." not in hint


def _depth_part(tmp_path, seeds):
    """chap5's results of a part that trained seeds ``seeds`` of row 5.1 apart (its units only)."""
    run = {"id": "2026-01-01T00:00:00+00:00 pid 1 #1", "chapter": "chap5", "argv": ["--quick"], "quick": True,
           "x64": False, "seeds": [1, 2], "wall_seconds": 1.0, "complete": True, "environment": {},
           "part": {"part": "1/2", "plan": "p", "planned": {},
                    "composed": {"5.1": {"rows": ["5.1"], "units": ["5.1@1", "5.1@2"]}}}}
    curves = {1: [50.0, 60.0, 55.0], 2: [40.0, 70.0, 65.0]}
    units = {f"5.1@{s}": {"id": f"5.1@{s}", "row": "5.1", "seed": s, "seeds": [s], "per_epoch": curves[s],
                          "epochs": 3, "quick": True, "x64": False, "run": run["id"], "seconds": 1.0,
                          "trained_with": [s]} for s in seeds}
    results = {"chapter": "chap5", "quick": True, "rows": [], "runs": [run], "units": units}
    store.write_json(tmp_path / "chap5" / store.RESULTS, results)
    return results


def test_a_report_composes_the_rows_whose_units_all_met_in_its_results(tmp_path):
    """The report composes a row from its units (5.1's peak over both seeds) when all are there, and
    leaves it out while one is missing."""
    from experiments import compose
    results = _depth_part(tmp_path, [1, 2])
    assert compose.compose_rows("chap5", results) == [
        "chap5: composed 5.1 from 2 unit records of 5.1 trained in several parts"]
    row = results["rows"][0]
    assert row["measured"]["runs"] == [60.0, 70.0] and row["seeds"] == [1, 2] and row["peak_epoch"] == [1, 1]
    assert "| 5.1 " in reproduce.report_page(tmp_path)
    _depth_part(tmp_path, [1])
    assert "| 5.1 " not in reproduce.report_page(tmp_path)
