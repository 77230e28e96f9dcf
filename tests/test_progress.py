"""The chapters' progress lines and the per-epoch metrics log they stream
(experiments.progress.progress): epochs named as the book counts them, one JSON
line per epoch and net appended as each epoch ends."""
import json
import re

import numpy as np

from experiments import chap4, driver, progress


def test_epochs_are_named_as_the_book_prints_them_then_counted():
    assert progress.epoch_text(0, 30) == "Epoch 0 (1 of 30)"
    assert progress.epoch_text(29, 30) == "Epoch 29 (30 of 30)"


def record(e, k=2):
    return {"epoch": e, "eta": np.full(k, 0.5, np.float32), "test_accuracy": np.arange(k) + 10 * e,
            "test_cost": np.linspace(1, 2, k) / (e + 1), "active": np.ones(k, bool),
            "finite": np.ones(k, bool), "events": [{"event": "diverged", "net": 1, "epoch": e, "eta": 0.5}]}


def lines_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_epoch_is_in_the_log_as_it_ends_one_line_per_net(tmp_path, capsys):
    log = tmp_path / "metrics" / "3.8.jsonl"
    on_epoch = progress.progress("3.8", 3, lambda r: "", log=log)
    on_epoch(0, record(0))
    assert [(x["epoch"], x["net"], x["test_accuracy"]) for x in lines_of(log)] == [(0, 0, 0), (0, 1, 1)]
    on_epoch(1, record(1))   # the first epoch is already on disk before the second ends
    got = lines_of(log)
    assert [(x["epoch"], x["net"]) for x in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert got[3]["test_accuracy"] == 11 and got[3]["test_cost"] == 1.0 and got[3]["eta"] == 0.5
    assert got[3]["active"] is True and "events" not in got[3] and "seconds" in got[3]
    assert "Epoch 1 (2 of 3)" in capsys.readouterr().out


def test_a_resumed_run_continues_its_log_and_a_rerun_starts_a_fresh_one(tmp_path):
    log = tmp_path / "3.8.jsonl"
    first = progress.progress("3.8", 4, lambda r: "", log=log)
    for e in range(3):
        first(e, record(e))
    progress.progress("3.8", 4, lambda r: "", log=log)(2, record(2))   # resumed after epoch 1 was saved
    assert [x["epoch"] for x in lines_of(log)] == [0, 0, 1, 1, 2, 2]
    progress.progress("3.8", 4, lambda r: "", log=log)(0, record(0))   # trained afresh
    assert [x["epoch"] for x in lines_of(log)] == [0, 0]


def test_a_chapter_streams_each_trained_rows_log_into_out_metrics(tmp_path):
    chap4.main(["--quick", "--only", "4.3", "--seeds", "2", "--out", str(tmp_path)])
    got = lines_of(tmp_path / progress.METRICS / "4.3.jsonl")
    epochs = json.loads((tmp_path / "results.json").read_text())["rows"][0]["hyperparameters"]["epochs"]
    assert [(x["epoch"], x["net"]) for x in got] == [(e, k) for e in range(epochs) for k in range(2)]
    assert all(x["finite"] and x["eta"] > 0 for x in got)


def test_a_chapter_run_says_its_devices_and_what_it_loads_at_every_start(capsys):
    """The chapters' first line, made by the façades' ``waits.say`` (their
    once-per-process lines are tested with the book's sessions); every run says it."""
    import argparse
    args = argparse.Namespace(chapter="chap3")
    progress.say_start(args)
    progress.say_start(args)
    progress.say_start(argparse.Namespace(chapter="chap4"), loading=None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0] == lines[1]
    assert re.fullmatch(r"chap3: computing on \d+ CPU devices?; loading MNIST \.\.\.", lines[0]), lines[0]
    assert re.fullmatch(r"chap4: computing on \d+ CPU devices?", lines[2]), lines[2]


def test_a_test_worker_process_finds_the_users_cache_not_the_controllers():
    """pytest -n 2: a worker starts with the controller's temporary XDG_CACHE_HOME;
    it resolves MNIST from the user's own, then makes a temporary cache of its own."""
    from conftest import USER_CACHE_VAR, restore_users_cache_home
    controller = {"XDG_CACHE_HOME": "/home/u/.cache"}
    restore_users_cache_home(controller)
    assert controller[USER_CACHE_VAR] == "/home/u/.cache"
    worker = dict(controller, XDG_CACHE_HOME="/tmp/controllers-cache")
    restore_users_cache_home(worker)
    assert worker["XDG_CACHE_HOME"] == "/home/u/.cache"
    unset = {"XDG_CACHE_HOME": "/tmp/controllers-cache", USER_CACHE_VAR: ""}
    restore_users_cache_home(unset)
    assert "XDG_CACHE_HOME" not in unset


def test_rows_whose_table_was_shown_before_a_long_wait_are_not_printed_again(monkeypatch, capsys, tmp_path):
    from experiments import context, report, store
    rows = [report.row("1.1", "networks", 95.0, 94.0), report.row("1.6", "the SVM", 94.35, 94.3)]
    monkeypatch.setattr(store, "record", lambda args, rows, **kw: {"rows": rows})
    args = context.RunContext(chapter="chap1", started=0.0, out=tmp_path, run_id="a run")
    progress.show_table(args, rows[:1])
    driver.finish(args, rows)
    out = capsys.readouterr().out
    assert out.count("networks") == 1 and out.count("the SVM") == 1
