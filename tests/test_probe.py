"""The time probe (experiments.probe) and the planner's use of it (issue 33 item 2).

The probe runs each job briefly, watched by ``train.watch_fits``, and scales
its epochs after the first to the book's epochs and data; the planner takes a
job's probed seconds before its recorded ones, and those before an estimate.
No test here asserts how fast anything runs."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import driver, parts, probe, reproduce
from nndl_jax import costs, layers, train
from nndl_jax.activations import sigmoid
from nndl_jax.fit_watch import WatchedFit

REPO = Path(__file__).resolve().parent.parent


def watched(epochs, total, train_s, evaluate, *, ended_early=True, rules=(), examples=500):
    """A fit as the watch saw it, made by hand."""
    return WatchedFit(epochs=epochs, nets=3, examples=examples, evaluation=dict.fromkeys(evaluate[0], examples),
                      rules=list(rules), started=0.0, train=list(train_s), evaluate=list(evaluate),
                      total=list(total), ended_early=ended_early)


# --- the arithmetic --------------------------------------------------------------------------

def test_a_job_probed_at_n_images_for_e_epochs_scales_linearly_to_the_books():
    """Steps scale with the training images, evaluations with the evaluated
    images, the rest of an epoch not at all; the epochs after the first give
    the rate, the job's time less them is its start-up."""
    fit = watched(60, total=[5.0, 1.0, 1.0], train_s=[4.0, 0.8, 0.8], evaluate=[{"test": 0.1}] * 3)
    got = probe.scaled(10.0, [fit], train_scale=100.0, eval_scale=10.0)
    assert got["startup"] == pytest.approx(10.0 - 3 * 1.0)            # the probed epochs after the first, out
    rate = 0.8 * 100 + 0.1 * 10 + (1.0 - 0.8 - 0.1)                   # steps, evaluation, the rest
    assert got["epoch_seconds"] == pytest.approx(rate)
    assert got["expected"] == pytest.approx(7.0 + 60 * rate) and got["epochs"] == 60
    # linear: twice the epochs, twice the epochs' part; twice the images, twice the steps' part
    twice = probe.scaled(10.0, [watched(120, [5.0, 1.0, 1.0], [4.0, 0.8, 0.8], [{"test": 0.1}] * 3)],
                         train_scale=100.0, eval_scale=10.0)
    assert twice["expected"] - got["startup"] == pytest.approx(2 * (got["expected"] - got["startup"]))
    more = probe.scaled(10.0, [fit], train_scale=200.0, eval_scale=10.0)
    assert more["epoch_seconds"] - got["epoch_seconds"] == pytest.approx(0.8 * 100)
    assert probe.epoch_rate(fit.steady()) == pytest.approx(1.0)       # unscaled: the probed epoch itself


def test_trainings_that_ran_their_course_rules_and_one_epoch_are_counted_as_they_ran():
    done = watched(300, [2.0] + [0.01] * 299, [0.005] * 300, [{}] * 300, ended_early=False)
    got = probe.scaled(5.0, [done])                      # ran every epoch: the probe's time is the job's
    assert got["expected"] == pytest.approx(5.0) and got["epochs"] == 300
    stopping = watched(400, [3.0, 1.0], [0.5, 0.5], [{"validation": 0.5}] * 2,
                       rules=[{"rule": "early_stopping"}])
    assert probe.scaled(5.0, [stopping], stops=36)["epochs"] == 36      # as long as its recorded run
    limit = probe.scaled(5.0, [stopping])
    assert limit["epochs"] == 400 and limit["upper_bound"]              # no record: its limit, said so
    one = watched(1, [4.0], [3.0], [{}], ended_early=False)
    assert probe.scaled(4.0, [one]) == {"startup": 4.0, "epochs": 0, "epoch_seconds": 0.0, "expected": 4.0,
                                        "upper_bound": False}
    # several trainings of one job (a sweep, a replay's sizes): each its own epochs and rate
    two = probe.scaled(20.0, [watched(30, [5.0, 1.0], [0.9, 0.9], [{}] * 2),
                              watched(10, [5.0, 2.0], [1.9, 1.9], [{}] * 2)])
    assert two["epochs"] == 40 and two["expected"] == pytest.approx(20.0 - 2 * 1.0 - 2 * 2.0 + 30 * 1.0 + 10 * 2.0)


def test_recorded_stops_are_the_most_epochs_any_seed_ran():
    job = driver.Job("3.20@10", ["3.20@10"], None)
    results = {"rows": [{"id": "3.20@10", "stopped_after_epochs": [22, 36, 21]}]}
    assert probe.recorded_stops(job, results) == 36
    assert probe.recorded_stops(job, {"rows": []}) is None


def test_chapter_6_is_probed_on_its_own_options_and_the_svm_by_its_model():
    args6 = driver.chapter_args("chap6", [])
    jobs6 = {j.id: j for j in driver.planned_jobs_of("chap6")(args6)}
    how = probe.setting("chap6", jobs6["6.8a"], args6)
    assert how.argv == ["--train-size", "500", "--eval-size", "1000"] and how.train_scale == 100.0
    assert how.eval_scale == 10.0 and how.seeds == 3
    ensemble = probe.setting("chap6", jobs6["6.11"], args6)
    assert "--nets" in ensemble.argv and ensemble.seeds == 1            # one net: its nets are planned apart
    args3 = driver.chapter_args("chap3", [])
    jobs3 = {j.id: j for j in driver.planned_jobs_of("chap3")(args3)}
    big = probe.setting("chap3", jobs3["3.15@50000"], args3)
    assert big.stand_in == "3.15@5000" and big.svm_scale == pytest.approx(probe.svm_total(50000) /
                                                                          probe.svm_total(5000))
    assert probe.setting("chap3", jobs3["3.15@1000"], args3).svm_scale is None   # small: run as it is


# --- the watch ---------------------------------------------------------------------------------

def _fit(epochs):
    net = layers.mlp_net([4, 3, 2], sigmoid)
    params = train.init_many(net.init, jax.random.split(jax.random.key(0), 2), (4,))
    x = np.random.default_rng(0).random((40, 4), np.float32)
    y = np.arange(40) % 2
    return train.fit(train.trainer_for(net, costs.quadratic, 10), params, (x, y), epochs, key=jax.random.key(1),
                     eta=0.5, evaluation={"test": (x, y)})


def test_a_watch_times_every_fit_and_ends_it_when_it_has_enough():
    assert len(_fit(5).history["test_accuracy"]) == 5                    # unwatched: every epoch
    with train.watch_fits(enough=lambda fit: fit.epochs_run >= 3) as fits:
        fitted = _fit(50)
    assert len(fitted.history["test_accuracy"]) == 3
    (fit,) = fits
    assert (fit.epochs, fit.epochs_run, fit.nets, fit.examples, fit.evaluation) == (50, 3, 2, 40, {"test": 40})
    assert fit.ended_early and len(fit.train) == len(fit.evaluate) == 3 and set(fit.evaluate[0]) == {"test"}
    steady = fit.steady()
    assert steady["total"] >= steady["train"] + sum(steady["evaluate"].values()) - 1e-9
    with train.watch_fits() as fits:                                    # no enough: watched to the end
        _fit(4)
    assert fits[0].epochs_run == 4 and not fits[0].ended_early
    assert len(_fit(4).history["test_accuracy"]) == 4                    # the watch is gone with its block


# --- the planner -------------------------------------------------------------------------------

def test_the_planner_takes_the_probe_then_the_recorded_seconds_then_an_estimate():
    jobs = [driver.Job("a", ["a"], None), driver.Job("b", ["b"], None), driver.Job("c", ["c"], None),
            driver.Job("e", ["e"], None, seeds=[5, 6, 7], seeds_apart=True)]
    results = {"rows": [{"id": "a", "seconds": 500.0, "seeds": [1, 2, 3]},
                        {"id": "b", "seconds": 400.0, "seeds": [1, 2, 3]}]}
    probed = {"a": (30.0, 1), "e": (20.0, 1)}                           # a: one net probed, 3 planned
    args = argparse.Namespace(quick=False, seed=1, seeds=3, nets=None)
    got = {u.job: (u.seconds, u.how, u.recorded) for u in parts.chapter_units("chapX", args, jobs, jobs, results,
                                                                            probed=probed)}
    assert got == {"a": (90.0, "probe", True), "b": (400.0, "recorded", True),
                   "c": (parts.ESTIMATE_SECONDS, "estimate", False),
                   "e@5": (20.0, "probe", True), "e@6": (20.0, "probe", True), "e@7": (20.0, "probe", True)}
    quick = argparse.Namespace(quick=True, seed=1, seeds=3, nets=None)
    assert {u.how for u in parts.chapter_units("chapX", quick, jobs, jobs, results, probed=probed)} == {"estimate"}
    plan = parts.plan(parts.chapter_units("chapX", args, jobs, jobs, results, probed=probed), 1)
    text = parts.plan_text(plan, what="x")
    assert "measured alone by the probe" in text and "from recorded runs" in text and "chapX b" in text
    assert "(~1 min 0 s)" in text and "(1 min 30 s)" in text           # "~" still marks the estimate


def test_a_missing_probe_file_falls_back_and_a_corrupt_one_is_refused_with_what_to_do(tmp_path, monkeypatch):
    missing = tmp_path / "none.json"
    assert parts.read_probe(missing) is None and parts.probed_seconds("chap1", missing) == {}
    for text, says in [("{not json", "cannot be read as JSON"), ("[1, 2]", 'no "jobs"'),
                       ('{"jobs": {"chap1": {"1.5": {"expected_seconds": -1, "seeds": 3}}}}', "chap1 1.5"),
                       ('{"jobs": {"chap1": {"1.5": {"expected_seconds": "1", "seeds": 3}}}}', "chap1 1.5"),
                       ('{"jobs": {"chap1": {"1.5": {"expected_seconds": 1, "seeds": 0}}}}', "chap1 1.5")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(parts.ProbeFileError) as refused:
            parts.probed_seconds("chap1", bad)
        message = str(refused.value)
        assert str(bad) in message and says in message and "python -m experiments.probe" in message
    # through the command: one message, no traceback
    monkeypatch.setattr(parts, "PROBE_FILE", bad)
    args = argparse.Namespace(out=Path("unused"), quick=False, resume=False, restart=False, seeds=None,
                              data_dir=None, devices=None, part=None, only=["4"])
    with pytest.raises(SystemExit, match="not a probe file"):
        reproduce.book_plan(args, 1)
    monkeypatch.setattr(parts, "PROBE_FILE", missing)
    assert {u.how for p in reproduce.book_plan(args, 1) for u in p} == {"recorded"}   # chapter 4's, recorded


# --- one tiny real probe -----------------------------------------------------------------------

def test_a_real_probe_of_a_chapter_4_job_writes_what_the_planner_reads(tmp_path, monkeypatch, capsys):
    """4.3 (1,000 epochs of SGD) through its chapter's command, watched for a few epochs,
    scaled to its 1,000; the file written is what the planner then plans with."""
    found = probe.probe(["4"], only=["4.3"], steady=0.05, scratch=tmp_path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("[1/1] chap4 4.3: ")   # one line a job
    entry = found["jobs"]["chap4"]["4.3"]
    assert entry["epochs"] == 1000 and entry["seeds"] == 3 and entry["expected_seconds"] > 0
    assert entry["expected_seconds"] >= entry["startup_seconds"] and "epochs in 1 training" in entry["probed"]
    assert list(tmp_path.glob("chap4-*/results.json"))                  # it ran the chapter's command
    assert jax.config.jax_enable_x64 is False
    lines = probe.table(found)
    assert lines[0].startswith("| job | start-up s | s/epoch |") and "| chap4 4.3 |" in lines[2]
    path = tmp_path / "probe_seconds.json"
    path.write_text(json.dumps(probe.written(found, path, "python -m experiments.probe --only 4.3")))
    monkeypatch.setattr(parts, "PROBE_FILE", path)
    args = argparse.Namespace(out=Path("unused"), quick=False, resume=False, restart=False, seeds=None,
                              data_dir=None, devices=None, part=None, only=["4"])
    units = {u.job: u for p in reproduce.book_plan(args, 1) for u in p}
    assert units["4.3"].how == "probe" and units["4.3"].seconds == pytest.approx(entry["expected_seconds"])
    assert units["4.1"].how == "recorded"                                # not probed: its recorded seconds
    text = parts.plan_text(reproduce.book_plan(args, 1), what="x")
    assert f"by the probe ({path}: " in text and found["machine"]["cpu"] in text
    # probing again on the same machine keeps the other jobs' entries
    again = dict(found, jobs={"chap4": {"4.1": dict(entry, expected_seconds=1.0)}})
    assert set(probe.written(again, path, "x")["jobs"]["chap4"]) == {"4.1", "4.3"}


def test_the_probe_command_answers_help_without_starting_jax_and_refuses_unknown_jobs():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.probe", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--chapters" in done.stdout, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "numpy" in imported and not [m for m in imported if m == "jax" or m.startswith("jax.")]
    with pytest.raises(SystemExit, match="no job 9.9 in 4; the jobs are: 4.1 4.2 4.3"):
        probe.probe(["4"], only=["9.9"])


def test_reproduce_probe_hands_its_chapters_and_seeds_to_the_probe(monkeypatch):
    got = []
    monkeypatch.setattr(probe, "main", lambda argv: got.append(argv) or 0)
    with pytest.raises(SystemExit) as done:
        reproduce.parse_args(["--probe", "--only", "6", "4", "--seeds", "1"])
    assert done.value.code == 0 and got == [["--chapters", "4", "6", "--seeds", "1"]]
