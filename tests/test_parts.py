"""--part I/N, --plan N and nndl-jax merge: the book's work spread over machines.

The planner (experiments.parts) is tested on units made by hand; the whole
path (two parts of chapter 1 --quick as two processes, merged) against one
process training the same rows and seeds; merge's refusals on results files
written by hand."""
import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import driver, merge, parts, store

REPO = Path(__file__).resolve().parent.parent


def units(seconds):
    return [parts.Unit("chapX", f"j{k}", (f"r{k}",), s, True, k) for k, s in enumerate(seconds)]


SECONDS = [7.0, 3.0, 3.0, 11.0, 5.0, 5.0, 2.0, 13.0, 1.0, 8.0, 8.0, 4.0]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_plan_gives_every_unit_to_exactly_one_part(n):
    plan = parts.plan(units(SECONDS), n)
    assert len(plan) == n
    keys = [u.key for p in plan for u in p]
    assert sorted(keys) == sorted(u.key for u in units(SECONDS))


def test_plan_is_deterministic_whatever_the_order_units_come_in():
    given = units(SECONDS)
    first = parts.plan(given, 4)
    assert parts.plan(list(reversed(given)), 4) == first
    assert parts.plan(given[5:] + given[:5], 4) == first
    assert parts.digest(first) == parts.digest(parts.plan(list(reversed(given)), 4))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_plan_is_balanced_longest_first(n):
    """LPT's bound: the longest part exceeds the shortest by at most the longest unit,
    and the longest part is within 4/3 of the perfect share or the longest unit."""
    plan = parts.plan(units(SECONDS), n)
    loads = [parts.expected_seconds(p) for p in plan]
    assert max(loads) - min(loads) <= max(SECONDS)
    assert max(loads) <= max(4 / 3 * sum(SECONDS) / n, max(SECONDS)) + 1e-9


def test_plan_puts_the_longest_units_on_separate_parts_first():
    plan = parts.plan(units([10.0, 9.0, 1.0, 1.0]), 2)
    assert [[u.job for u in p] for p in plan] == [["j0", "j3"], ["j1", "j2"]]   # 10+1, 9+1: a tie goes to part 1


def test_more_parts_than_units_leaves_parts_empty_and_each_unit_alone():
    plan = parts.plan(units([3.0, 1.0, 2.0]), 5)
    assert [len(p) for p in plan] == [1, 1, 1, 0, 0]
    assert [p[0].job for p in plan[:3]] == ["j0", "j2", "j1"]   # longest first


def test_part_argument_is_checked():
    assert parts.part_arg("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parts.part_arg(bad)


def test_job_seconds_from_recorded_rows_and_their_runs_wall_time():
    jobs = [driver.Job("a+b", ["a", "b"], None), driver.Job("c", ["c"], None), driver.Job("d", ["d"], None),
            driver.Job("e", ["e"], None)]
    results = {"rows": [{"id": "a", "run": "R", "seeds": [1, 2, 3]}, {"id": "b", "run": "R", "seeds": [1, 2, 3]},
                        {"id": "c", "run": "R", "seconds": 40.0, "seeds": [1]},
                        {"id": "d", "run": "R", "seeds": [1, 2, 3]}],
               "runs": [{"id": "R", "wall_seconds": 100.0}]}
    timed = parts.job_seconds(jobs, results)
    assert timed == {"c": (40.0, 1), "a+b": (30.0, 3), "d": (30.0, 3)}   # 100 - 40 shared by two jobs
    args = argparse.Namespace(quick=False, seed=1, seeds=3)
    got = {u.job: u.seconds for u in parts.chapter_units("chapX", args, jobs, jobs, results)}
    assert got == {"a+b": 30.0, "c": 120.0, "d": 30.0, "e": parts.ESTIMATE_SECONDS}   # c: 1 net timed, 3 planned


def test_a_job_whose_seeds_train_apart_is_planned_and_run_seed_by_seed():
    job = driver.Job("6.11", ["6.11", "6.12"], None, seeds=[5, 6, 7], seeds_apart=True, compose=lambda u, r: ([], {}),
                     unit_rows=["6.11"])
    results = {"rows": [{"id": "6.11@5", "seconds": 10.0, "trained_with": [5]},
                        {"id": "6.11@6", "seconds": 30.0, "trained_with": [6, 7]}]}
    args = argparse.Namespace(quick=False, seed=5, seeds=1)
    got = parts.chapter_units("chap6", args, [job], [job], results)
    assert [(u.job, u.rows, u.seconds, u.composes) for u in got] == [
        ("6.11@5", ("6.11@5",), 10.0, ("6.11", "6.12")), ("6.11@6", ("6.11@6",), 15.0, ("6.11", "6.12")),
        ("6.11@7", ("6.11@7",), 12.5, ("6.11", "6.12"))]   # 7: no row of its own, the mean of the others
    held = argparse.Namespace(share={"6.11@7", "6.11@5"}, nets=None)
    assert driver.held_seeds(held, job) == [5, 7]
    assert driver.held_seeds(argparse.Namespace(share={"6.11@7", "6.11@5"}, nets=[0, 1]), job) == [5]
    assert driver.held_seeds(argparse.Namespace(share={"1.5"}, nets=None), job) == []
    assert driver.held_seeds(argparse.Namespace(share=None, nets=None), job) == [5, 6, 7]


def test_a_long_job_of_units_is_split_seed_by_seed_only_when_it_exceeds_the_fair_share():
    """A job whose seeds train side by side stays whole while it fits the N parts' fair share, and is
    given out seed by seed (each its share of the time, composing the job's rows) when it alone would
    bound the wall time; part records say which units compose which rows."""
    long = parts.Unit("chapX", "a+b", ("a", "b"), 90.0, True, 0, (), (1, 2, 3), True)
    short = [parts.Unit("chapX", f"j{k}", (f"r{k}",), 10.0, True, k + 1) for k in range(3)]
    assert [u.job for p in parts.plan([long, *short], 1) for u in p] == ["a+b", "j0", "j1", "j2"]
    plan = parts.plan([long, *short], 4)   # fair share 30 s: a+b (90 s) goes seed by seed, 30 s each
    assert sorted(u.job for p in plan for u in p) == ["a+b@1", "a+b@2", "a+b@3", "j0", "j1", "j2"]
    assert max(parts.expected_seconds(p) for p in plan) == 30.0
    seed = next(u for p in plan for u in p if u.job == "a+b@2")
    assert seed.rows == ("a@2", "b@2") and seed.composes == ("a", "b") and seed.seconds == 30.0
    record = parts.part_record(plan, 1, "chapX")
    assert record["composed"] == {"a+b": {"rows": ["a", "b"], "units": ["a@1", "b@1", "a@2", "b@2", "a@3", "b@3"]}}
    assert set(parts.apart(plan)) == {("chapX", "a+b")}
    assert "its 3 seeds are held apart" in parts.plan_text(plan, what="x")


def test_plan_prints_without_training_and_is_the_same_in_every_process(tmp_path):
    """--plan N: the same text from two processes, no --out folder made, no JAX device started."""
    out = tmp_path / "never"
    cmd = [sys.executable, "-c",
           "import sys, jax; from experiments import chap6, session\n"
           "code = session.main_entry(chap6.main, sys.argv[1:])\n"
           "assert not jax._src.xla_bridge.backends_are_initialized(), 'JAX started a backend'\n"
           "sys.exit(code)", "--plan", "3", "--out", str(out)]
    texts = [run_bounded(cmd, timeout=120).stdout for _ in range(2)]
    assert texts[0] == texts[1]
    assert "part 1/3" in texts[0] and "part 3/3" in texts[0] and "6.11@12345682" in texts[0]
    assert not out.exists()


# --- two parts as two processes, merged, equal one process ----------------------------------

def run_bounded(cmd, timeout, env=None):
    """Run ``cmd`` to the end within ``timeout`` seconds; on a timeout or a
    failure its process group is killed by pid and the test fails with its output."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s:\n{stdout[-3000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-3000:]}"
    return subprocess.CompletedProcess(cmd, 0, stdout)


def run_parts(commands, env, timeout=300):
    """Run ``commands`` side by side, each bounded by ``timeout``; killed by pid on failure."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for cmd in commands]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a part ran past {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def two_parts_one_run_and_merge(command, mnist_dir, tmp_path):
    """``command --part 1/2`` and ``2/2`` as two processes into part1/ and part2/, the whole
    command into one/, and `nndl-jax merge` of the parts into merged/."""
    env = dict(os.environ, NNDL_JAX_DATA=str(mnist_dir), XDG_CACHE_HOME=str(tmp_path / "cache"),
               NNDL_JAX_COMPILATION_CACHE="0", MPLBACKEND="Agg")
    run_parts([command + ["--part", f"{i}/2", "--out", str(tmp_path / f"part{i}")] for i in (1, 2)], env)
    run_bounded(command + ["--out", str(tmp_path / "one")], timeout=300, env=env)
    run_bounded([sys.executable, "-m", "experiments.cli", "merge", str(tmp_path / "part1"), str(tmp_path / "part2"),
                 "--out", str(tmp_path / "merged")], timeout=120, env=env)


def test_reproduce_parts_of_the_book_merge_to_one_reproduce_run(mnist_dir, tmp_path):
    """nndl-jax reproduce --part 1/2 and 2/2 (chapters 1 and 4 --quick, planned together) as two
    processes, merged: every row of both chapters, measured as one reproduce run measures it."""
    two_parts_one_run_and_merge([sys.executable, "-m", "experiments.cli", "reproduce", "--quick", "--only", "1", "4",
                                 "--seeds", "2"], mnist_dir, tmp_path)
    for chapter in ("chap1", "chap4"):
        merged = store.read_results(tmp_path / "merged" / chapter)
        one = store.read_results(tmp_path / "one" / chapter)
        assert {r["id"]: r["measured"] for r in merged["rows"]} == {r["id"]: r["measured"] for r in one["rows"]}
        assert {run["part"]["plan"] for run in merged["runs"]} == {merged["runs"][0]["part"]["plan"]}


def test_two_parts_as_two_processes_merge_to_one_process_run(mnist_dir, tmp_path):
    two_parts_one_run_and_merge([sys.executable, "-m", "experiments.chap1", "--quick", "--seeds", "2", "--only",
                                 "1.1", "1.5", "1.8"], mnist_dir, tmp_path)

    part_rows = [{r["id"] for r in store.read_results(tmp_path / f"part{i}")["rows"]} for i in (1, 2)]
    assert part_rows[0] and part_rows[1] and not part_rows[0] & part_rows[1]   # each part did some, none twice
    merged = store.read_results(tmp_path / "merged" / "chap1")
    one = store.read_results(tmp_path / "one")
    assert {r["id"]: r["measured"] for r in merged["rows"]} == {r["id"]: r["measured"] for r in one["rows"]}
    assert sorted(r["id"] for r in merged["rows"]) == ["1.1", "1.5", "1.8"]
    assert {run["part"]["part"] for run in merged["runs"]} == {"1/2", "2/2"}
    assert (tmp_path / "merged" / "REPORT.md").is_file()


# --- merge's refusals -----------------------------------------------------------------------

def write_part(folder, rows, *, argv=("--quick",), commit="abc", part=None, quick=True, seeds=(1, 2)):
    run = {"id": f"run {folder.name}", "chapter": "chapX", "argv": list(argv) + ["--out", str(folder)],
           "quick": quick, "x64": False, "seeds": list(seeds), "wall_seconds": 1.0, "complete": True,
           "environment": {}, "code": {"version": "0.1.0", "commit": commit}}
    if part is not None:
        run["part"] = part
    results = {"chapter": "chapX", "quick": quick, "x64": False, "seeds": list(seeds), "wall_seconds": 1.0,
               "complete": True, "environment": {}, "runs": [run],
               "rows": [{"id": r, "experiment": r, "unit": "%", "book": None, "measured": v, "quick": quick,
                         "run": run["id"]} for r, v in rows.items()]}
    store.write_json(folder / store.RESULTS, results)
    return folder


PLAN = {"plan": "p1", "planned": {"a": {"rows": ["a"], "part": 1}, "b": {"rows": ["b"], "part": 2},
                                  "c": {"rows": ["c"], "part": 3}}, "composed": {}}


def test_merge_keeps_every_row_and_names_the_missing_part(tmp_path):
    p1 = write_part(tmp_path / "p1", {"a": 1.0}, part=dict(PLAN, part="1/3"))
    p2 = write_part(tmp_path / "p2", {"b": 2.0}, part=dict(PLAN, part="2/3"))
    lines = merge.merge([p1, p2], tmp_path / "out")
    merged = store.read_results(tmp_path / "out" / "chapX")
    assert {r["id"]: r["measured"] for r in merged["rows"]} == {"a": 1.0, "b": 2.0}
    assert any("rows missing from part 3/3 (not among the folders given): c" in line for line in lines)


@pytest.mark.parametrize("other, what", [
    (dict(argv=("--quick", "--seeds", "3")), "command"),
    (dict(argv=(), quick=False), "quick"),
    (dict(commit="def"), "commit"),
    (dict(part=dict(PLAN, part="2/3", plan="p2")), "plan"),
])
def test_merge_refuses_parts_made_with_other_settings_code_or_plans(tmp_path, other, what):
    p1 = write_part(tmp_path / "p1", {"a": 1.0}, part=dict(PLAN, part="1/3"))
    p2 = write_part(tmp_path / "p2", {"b": 2.0}, **{"part": dict(PLAN, part="2/3"), **other})
    with pytest.raises(merge.MergeError, match=what):
        merge.merge([p1, p2], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_refuses_a_row_with_other_values_in_two_parts(tmp_path, capsys):
    p1 = write_part(tmp_path / "p1", {"a": 1.0, "b": 2.0})
    p2 = write_part(tmp_path / "p2", {"b": 2.5})
    assert merge.main([str(p1), str(p2), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "row b:" in err and "measured" in err and "nothing was written" in err
    assert not (tmp_path / "out").exists()


def test_merge_accepts_the_same_row_twice_when_its_values_agree(tmp_path):
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    p2 = write_part(tmp_path / "p2", {"a": 1.0, "b": 2.0})
    merge.merge([p1, p2], tmp_path / "out")
    assert [r["id"] for r in store.read_results(tmp_path / "out" / "chapX")["rows"]] == ["a", "b"]


def test_settings_argv_drops_only_what_selects_rows_or_places():
    argv = ["--quick", "--only", "6.1", "6.2", "--part", "1/2", "--out", "x", "--seeds", "2", "--nets", "0", "1",
            "--resume", "--data-dir=d", "--epochs", "3"]
    assert merge.settings_argv(argv) == ["--quick", "--seeds", "2", "--epochs", "3"]



def test_the_whole_books_plan_gives_every_chapters_jobs_once_and_is_bounded_by_its_longest_job():
    """nndl-jax reproduce --part plans the book at once: every job of every chapter in one part;
    with more parts than long jobs the expected wall time is the longest job's."""
    from experiments import reproduce
    args = argparse.Namespace(out=Path("unused"), quick=False, resume=False, restart=False, seeds=None,
                              data_dir=None, devices=None, part=None, only=list(reproduce.CHAPTERS))
    one, many = reproduce.book_plan(args, 1), reproduce.book_plan(args, 64)

    def covered(plan):   # (chapter:job, seed) for every seed of every unit
        return sorted((f"{u.chapter}:{u.base}", s) for p in plan for u in p for s in (u.seeds or [None]))
    keys = [u.key for p in many for u in p]
    assert covered(many) == covered(one) and len(set(keys)) == len(keys)
    assert {u.chapter for u in one[0]} == {f"chap{c}" for c in reproduce.CHAPTERS}
    assert "chap6:6.11@12345682" in keys and "chap6:6.11" not in keys   # the ensemble net by net
    assert "chap6:6.8a@12345679" in keys and "chap6:6.8a" not in keys   # a long row seed by seed
    longest = max(u.seconds for p in many for u in p)
    assert max(parts.expected_seconds(p) for p in many) == longest
    assert parts.expected_seconds(one[0]) > 2 * longest   # so parts do shorten the book


def test_the_ensembles_nets_in_two_parts_merge_and_compose_to_one_process_run(mnist_dir, tmp_path):
    """Chapter 6's ensemble net by net: parts 1/2 and 2/2 of `--only 6.11 6.12` train 3 and 2 of its
    5 nets as two processes; merge composes 6.11 (the nets) and 6.12 (their vote) itself, and the
    rows, each net's test predictions, the curves and the redrawn errors figure equal one process
    training all 5."""
    env = dict(os.environ, NNDL_JAX_DATA=str(mnist_dir), XDG_CACHE_HOME=str(tmp_path / "cache"),
               NNDL_JAX_COMPILATION_CACHE="0", MPLBACKEND="Agg")
    chapter = [sys.executable, "-m", "experiments.chap6", "--quick", "--only", "6.11", "6.12", "--devices", "1"]
    run_parts([chapter + ["--part", f"{i}/2", "--out", str(tmp_path / f"part{i}")] for i in (1, 2)], env)
    for i in (1, 2):
        assert not {"6.11", "6.12"} & {r["id"] for r in store.read_results(tmp_path / f"part{i}")["rows"]}
    merged_out = tmp_path / "merged"
    said = run_bounded([sys.executable, "-m", "experiments.cli", "merge", str(tmp_path / "part1"),
                        str(tmp_path / "part2"), "--out", str(merged_out)], timeout=300, env=env).stdout
    assert "composed 6.11, 6.12 from 5 unit records" in said and "redrew ensemble_errors.png" in said
    assert "..." not in said
    run_bounded(chapter + ["--out", str(tmp_path / "one")], timeout=300, env=env)

    merged, one = store.read_results(merged_out / "chap6"), store.read_results(tmp_path / "one")
    ids = ["6.11", *(f"6.11@{12345678 + k}" for k in range(5)), "6.12"]
    assert sorted(r["id"] for r in merged["rows"]) == sorted(r["id"] for r in one["rows"]) == sorted(ids)
    for key in ("measured", "test_predictions", "errors", "best_epoch", "best_validation", "seeds", "nets"):
        assert {r["id"]: r.get(key) for r in merged["rows"]} == {r["id"]: r.get(key) for r in one["rows"]}
    assert merged["curves"] == one["curves"]
    assert (merged_out / "chap6" / "ensemble_errors.png").stat().st_size > 0


def test_a_late_part_merges_into_the_merged_folder_as_one_more_part(tmp_path):
    p1 = write_part(tmp_path / "p1", {"a": 1.0}, part=dict(PLAN, part="1/3"))
    p2 = write_part(tmp_path / "p2", {"b": 2.0}, part=dict(PLAN, part="2/3"))
    merge.merge([p1], tmp_path / "out")
    lines = merge.merge([p2], tmp_path / "out")
    assert [r["id"] for r in store.read_results(tmp_path / "out" / "chapX")["rows"]] == ["a", "b"]
    assert any("part 3/3" in line for line in lines) and not any("part 2/3" in line for line in lines)


def test_merge_refuses_a_folder_without_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert merge.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "holds no results.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def unusable_results(path, how):
    """Put an unusable results.json at ``path``: a folder, or a truncated copy
    of a good file (cut mid-row, as a copy interrupted half-way leaves it)."""
    if how == "folder":
        path.unlink(missing_ok=True)
        path.mkdir(parents=True)
        (path / "kept.txt").write_text("not touched")
    else:
        text = path.read_text() if path.exists() else '{"rows": [{"id": "a", "experiment": "a"}]}'
        path.write_text(text[: len(text) // 2])
    return "is a folder, not a results file" if how == "folder" else "cannot be read as results (JSONDecodeError"


def snapshot(folder):
    """Every file under ``folder`` with its bytes (a folder: its path and None)."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))}


@pytest.mark.parametrize("how", ["folder", "truncated"])
@pytest.mark.parametrize("where", ["a part", "a part's chapter", "the merged --out"])
def test_merge_refuses_an_unusable_results_file_in_one_line_touching_nothing(tmp_path, capsys, how, where):
    """A results.json that is a folder or a truncated file, in a part (its own
    results.json or chapX/results.json) or in the --out merged into: the one
    reader's one-line error (``store.read_results``) naming the file and what
    to do, no traceback; nothing written, nothing of the parts touched."""
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    folders, out = [p1], tmp_path / "out"
    if where == "a part":
        bad = write_part(tmp_path / "p2", {"b": 2.0}) / store.RESULTS
        folders.append(bad.parent)
    elif where == "a part's chapter":
        bad = write_part(tmp_path / "p2" / "chapX", {"b": 2.0}) / store.RESULTS
        folders.append(tmp_path / "p2")
    else:
        merge.merge([p1], out)
        bad = out / "chapX" / store.RESULTS
    said = unusable_results(bad, how)
    before = snapshot(tmp_path)
    assert merge.main([*map(str, folders), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nndl-jax merge: {bad} {said}") and len(err.splitlines()) == 1, err
    assert "move it away or give another folder" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before                           # nothing written, nothing removed


def test_merge_refuses_a_row_without_what_the_tables_need_naming_the_file_and_row(tmp_path, capsys):
    """A part's row without "book" (which the report's tables print): before,
    merge wrote the merged file and then failed in ``report.markdown_table``
    with a traceback; now the reader refuses the part, naming file and row."""
    p1 = write_part(tmp_path / "p1", {"a": 1.0})
    p2 = write_part(tmp_path / "p2", {"b": 2.0})
    results = store.read_results(p2)
    del results["rows"][0]["book"]
    (p2 / store.RESULTS).write_text(json.dumps(results))
    assert merge.main([str(p1), str(p2), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nndl-jax merge: {p2 / store.RESULTS} is not a valid results file: row 1 (id 'b') "
                          "has no 'book'") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_rows_seeds_in_three_parts_merge_to_the_unsplit_row(mnist_dir, tmp_path):
    """Row 1.1's three seeds, one per part (--part I/3), each part recording only its seed's unit
    (1.1@<seed>), merged: row 1.1 composed from the units equals one unsplit run's (the same three
    runs in seed order; mean and sd recomputed; curves, peaks, notes), and the figure is redrawn."""
    env = dict(os.environ, NNDL_JAX_DATA=str(mnist_dir), XDG_CACHE_HOME=str(tmp_path / "cache"),
               NNDL_JAX_COMPILATION_CACHE="0", MPLBACKEND="Agg")
    command = [sys.executable, "-m", "experiments.chap1", "--quick", "--only", "1.1", "--seeds", "3"]
    run_parts([command + ["--part", f"{i}/3", "--out", str(tmp_path / f"part{i}")] for i in (1, 2, 3)], env)
    for i in (1, 2, 3):
        part = store.read_results(tmp_path / f"part{i}")
        assert part["rows"] == [] and list(part["units"]) == [f"1.1@{12345678 + i - 1}"]   # its seed alone
    run_bounded(command + ["--out", str(tmp_path / "one")], timeout=300, env=env)
    said = run_bounded([sys.executable, "-m", "experiments.cli", "merge",
                        *(str(tmp_path / f"part{i}") for i in (1, 2, 3)),
                        "--out", str(tmp_path / "merged")], timeout=120, env=env).stdout
    assert "composed 1.1 from 3 unit records" in said and "redrew chap1_accuracy.png" in said
    merged = {r["id"]: r for r in store.read_results(tmp_path / "merged" / "chap1")["rows"]}
    one = {r["id"]: r for r in store.read_results(tmp_path / "one")["rows"]}
    assert list(merged) == list(one) == ["1.1"]
    assert len(merged["1.1"]["measured"]["runs"]) == 3
    same = {k: v for k, v in one["1.1"].items() if k not in store.VOLATILE}
    assert {k: v for k, v in merged["1.1"].items() if k not in store.VOLATILE} == same
    assert merged["1.1"]["seeds"] == [12345678, 12345679, 12345680]
