"""The time probe: every job of the book timed alone, briefly, and scaled to
the book's settings; the seconds the planner (``experiments.parts``) uses.

    python -m experiments.probe [--chapters 1 3 4 5 6 replays] [--only JOB ...]
                                [--seeds N] [--out benchmarks/probe_seconds.json]
    nndl-jax reproduce --probe [--only 1 3 ...]

Each job that ``--plan`` knows (every chapter's, and chapter 3's book-seed
replays, ``<row>@book``) runs through its chapter's own command, in this
process, one job at a time, into a scratch folder, with ``train.watch_fits``
watching every training (``nndl_jax.fit_watch``):

- each training runs until it has done at least 2 epochs and at least
  ``--steady`` seconds (default 1) of epochs after the first, then ends
  (the first epoch compiles; the later ones give the rate);
- the epochs after the first give the seconds an epoch: the training steps,
  each evaluation, and the rest (the checkpoint, the progress line), timed apart;
- chapter 6 trains on ``--train-size 500`` images (expanded rows: 2,500) and
  evaluates on ``--eval-size 1000`` (the chapter's own options): its steps are
  scaled by 50,000 / 500 and its evaluations by 10,000 / 1,000, the rest not;
  every other chapter trains on the book's data;
- an epoch's seconds times the book's epochs, plus the job's start-up (what
  the probed job took less its epochs after the first: data, compiling, the
  figures), is the job's expected time. A training that may stop early
  (3.20, 3.21) is expected for the epochs its recorded run took (else its limit);
- the SVM (1.6, 3.15@n) runs on at most 5,000 images, scaled by the SVM's
  model (``chap1.svm_seconds``: the fit as n², the prediction as n^0.8);
  the rows that train nothing run as they are.

The seeds are the plan's (3; ``--seeds``): a job's nets train side by side as
in its run; chapter 6's ensemble one net (its nets are planned one by one).
Compiling is a first run's: an empty compilation cache. Data loading (once per
chapter run, not per job) is shown beside each chapter, not added to its jobs.

The whole probe took 6 min 15 s on the project's quiet 2-core CPU
(benchmarks/README.md); it writes
``--out`` (JSON: the machine, and each job's expected seconds), prints one
line per job and a table. Probing some jobs keeps the file's other entries
when they come from the same machine (CPU, cores, jax). The planner uses a
job's probe entry, else its recorded seconds (``reproduced/*/results.json``,
runs side by side, which overstate), else an estimate (~).
"""
import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments import checkpoints, driver, parts, store
from experiments.report import duration
from nndl_jax import book_random, data, files, fit_watch

GROUPS = {"1": ("chap1", ()), "3": ("chap3", ()), "4": ("chap4", ()), "5": ("chap5", ()), "6": ("chap6", ()),
          "replays": ("chap3", ("--book-seed", str(book_random.BOOK_SEED)))}
"""What the probe can time: a chapter's jobs, or chapter 3's book-seed replays (last: they compute in float64)."""

STEADY_SECONDS = 1.0     # a training runs at least this long after its first epoch (and at least 2 epochs)
CHAP6_TRAIN, CHAP6_EVAL = 500, 1000
SVM_IMAGES = 5000        # the SVM's largest probed training set; larger ones are scaled from it


@dataclass
class Setting:
    """How one job is probed: ``argv`` added to the job's command, the ``--only``
    ids, the job run in its stead (``stand_in``: 3.15@50000 by 3.15@5000), the
    scales of its training steps and evaluations, and of the SVM's time."""

    only: list
    argv: list = field(default_factory=list)
    stand_in: str = None
    train_scale: float = 1.0
    eval_scale: float = 1.0
    svm_scale: float = None
    seeds: int = None
    how: str = "the book's data"


def svm_total(n_train, n_test=data.N_TEST):
    """The SVM's modelled seconds (fit and prediction) on ``n_train`` images (``chap1.svm_seconds``)."""
    from experiments import chap1
    return sum(chap1.svm_seconds(n_train, n_test))


def setting(chapter, job, args):
    """How ``job`` of ``chapter`` (its command line parsed: ``args``) is probed."""
    only = list(job.rows) or [job.id]
    seeds = len(job.seeds) if job.seeds is not None else args.seeds
    if chapter == "chap6":
        out = Setting(only, ["--train-size", str(CHAP6_TRAIN), "--eval-size", str(CHAP6_EVAL)],
                      train_scale=data.N_TRAIN / CHAP6_TRAIN, eval_scale=data.N_VALIDATION / CHAP6_EVAL,
                      seeds=seeds, how=f"{CHAP6_TRAIN:,} of 50,000 images, {CHAP6_EVAL:,} of 10,000 evaluated")
        if job.seeds_apart:   # the ensemble: one net (its nets are planned one by one)
            out.argv += ["--nets", "0"]
            out.seeds = 1
        return out
    if chapter == "chap1" and job.id == "1.6":
        n = min(SVM_IMAGES, args.svm_train_size)
        return Setting(only, ["--svm-train-size", str(n)], svm_scale=svm_total(args.svm_train_size) / svm_total(n),
                       seeds=seeds, how=f"SVM on {n:,} of {args.svm_train_size:,} images, scaled by its model")
    if chapter == "chap3" and job.id.startswith("3.15@"):
        n = int(job.id.split("@")[1])
        if n > SVM_IMAGES:
            return Setting([f"3.15@{SVM_IMAGES}"], stand_in=f"3.15@{SVM_IMAGES}", seeds=seeds,
                           svm_scale=svm_total(n) / svm_total(SVM_IMAGES),
                           how=f"SVM on {SVM_IMAGES:,} of {n:,} images, scaled by its model")
    return Setting(only, seeds=seeds)


# --- the arithmetic ---------------------------------------------------------------------

def epoch_rate(steady, train_scale=1.0, eval_scale=1.0):
    """Seconds an epoch at the book's data, from a probed training's ``steady``
    epoch (``WatchedFit.steady``): its steps times ``train_scale``, its
    evaluations times ``eval_scale``, the rest (checkpoint, progress) as it was."""
    return steady["train"] * train_scale + sum(steady["evaluate"].values()) * eval_scale + steady["rest"]


def scaled(job_seconds, fits, *, train_scale=1.0, eval_scale=1.0, stops=None):
    """A probed job's expected seconds at the book's settings.

    ``job_seconds``: what the probed job took; ``fits``: its trainings
    (``fit_watch.WatchedFit``, in order). A training ended by the probe is
    expected for the epochs it was asked for (one that rules may stop early,
    for ``stops`` epochs when given: its recorded run's); one that ended by
    itself for the epochs it ran; each at ``epoch_rate``. The start-up is
    ``job_seconds`` less each training's probed epochs at its steady rate (the
    first epoch's excess, compiling, stays in it): data, compiling, what the
    job does around its trainings. A training of one epoch stays in the
    start-up as measured.

    Returns {"startup", "epochs" (every training's, summed), "epoch_seconds"
    (their mean at the book's data), "expected", "upper_bound" (a training
    that may stop early was counted to its limit)}."""
    startup, epochs, seconds, upper = float(job_seconds), 0, 0.0, False
    for fit in fits:
        steady = fit.steady()
        if steady is None:
            continue
        expect = fit.epochs_run
        if fit.ended_early:
            expect = fit.epochs
            if fit.rules:
                upper = upper or stops is None
                expect = fit.epochs if stops is None else max(min(stops, fit.epochs), fit.epochs_run)
        startup -= fit.epochs_run * steady["total"]
        epochs += expect
        seconds += expect * epoch_rate(steady, train_scale, eval_scale)
    startup = max(startup, 0.0)
    return {"startup": startup, "epochs": epochs, "epoch_seconds": seconds / epochs if epochs else 0.0,
            "expected": startup + seconds, "upper_bound": upper}


def recorded_stops(job, results):
    """The most epochs a training of ``job`` ran in its recorded run (rows'
    ``stopped_after_epochs``: 3.20, 3.21), or None."""
    rows = {r.get("id"): r for r in results.get("rows", []) if isinstance(r, dict)}
    ran = [int(e) for rid in job.rows for e in (rows.get(rid, {}).get("stopped_after_epochs") or ())]
    return max(ran) if ran else None


# --- running a job ----------------------------------------------------------------------

def steady_enough(seconds):
    """``watch_fits``'s ``enough``: at least 2 epochs and ``seconds`` of epochs after the first."""
    return lambda fit: fit.epochs_run >= 2 and sum(fit.total[1:]) >= seconds


@contextlib.contextmanager
def _quiet(log):
    """Everything the job prints goes to ``log``."""
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


class ProbeFailed(Exception):
    """A probed job that failed: its message and the end of its output."""


def checked(chapter, argv, job_id):
    """``argv``, once it is sure to run the job ``job_id`` of ``chapter`` and no other (planned, not run)."""
    ids = [j.id for j in driver.planned_jobs_of(chapter)(driver.chapter_args(chapter, argv))]
    if ids != [job_id]:
        raise ProbeFailed(f"{' '.join(argv)} would run {' '.join(ids) or 'nothing'}, not {job_id} alone")
    return argv


def run_probe(chapter, argv, scratch, steady):
    """Run ``python -m experiments.<chapter> ARGV`` in this process into a fresh
    folder of ``scratch``, its output in a log there, its trainings watched:
    (the job's seconds as its run records them, the watched fits, the command's wall seconds)."""
    import jax

    out = Path(tempfile.mkdtemp(prefix=f"{chapter}-", dir=scratch))
    log, x64 = out / "probe.log", bool(jax.config.jax_enable_x64)
    t0 = time.perf_counter()
    try:
        with _quiet(log), fit_watch.watch_fits(enough=steady_enough(steady)) as fits:
            importlib.import_module(f"experiments.{chapter}").main([*argv, "--out", str(out)])
    except BaseException as e:  # noqa: BLE001  one job's failure is reported, the others still run
        if isinstance(e, KeyboardInterrupt):
            raise
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.exists() else []
        raise ProbeFailed(f"{type(e).__name__}: {e}\n    " + "\n    ".join(tail)) from None
    finally:
        jax.config.update("jax_enable_x64", x64)   # a replay's --book-seed turns float64 on for the process
        shutil.rmtree(checkpoints.checkpoint_root(argparse.Namespace(out=out, chapter=chapter)).parent,
                      ignore_errors=True)
    wall = time.perf_counter() - t0
    results = store.read_results(out)
    records = list(results.get("rows", [])) + list((results.get("units") or {}).values())
    seconds = [float(r["seconds"]) for r in records if isinstance(r.get("seconds"), (int, float))]
    return (max(seconds) if seconds else wall), fits, wall


# --- the probe --------------------------------------------------------------------------

def planned(groups, seeds, only=None):
    """[(group, chapter, base argv, parsed args, every job of the chapter, job)] of the
    jobs to probe, in the book's order (``only``: these job ids)."""
    todo = []
    for group in groups:
        chapter, base = GROUPS[group]
        argv = list(base) + (["--seeds", str(seeds)] if seeds is not None else [])
        args = driver.chapter_args(chapter, argv)
        every = driver.planned_jobs_of(chapter)(args)
        todo += [(group, chapter, argv, args, every, job) for job in every if only is None or job.id in only]
    return todo


def machine():
    """The machine the probe ran on: CPU model, cores, devices, jax and Python versions, platform, date."""
    import jax
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "devices": f"{len(jax.devices())} {jax.default_backend()}",
            "jax": jax.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def same_machine(a, b):
    return all((a or {}).get(k) == (b or {}).get(k) for k in ("cpu", "cores", "jax"))


def recorded_seconds(chapter, args, every, job, group):
    """What the planner expects of ``job`` without a probe: its recorded seconds
    (a net's, for a job whose nets are planned one by one), else None (an estimate).
    The replays' from ``reproduced/chap3-book-replay``."""
    results = parts.recorded_results("chap3-book-replay" if group == "replays" else chapter)
    units = parts.chapter_units(chapter, args, every, [job], results)
    if not all(u.recorded for u in units):
        return None
    return sum(u.seconds for u in units) / (len(units) if job.seeds_apart else 1)


def probe(groups, *, seeds=None, only=None, steady=STEADY_SECONDS, scratch=None, say=print):
    """Probe the jobs of ``groups`` (``GROUPS``' keys; ``only``: these job ids):
    {"machine", "settings", "jobs": {chapter: {job: entry}}, "loads": {group: seconds}, "seconds"},
    one line said per job."""
    todo = planned(groups, seeds, only)
    if only is not None:
        missing = sorted(set(only) - {t[-1].id for t in todo})
        if missing:
            raise SystemExit(f"probe: no job {' '.join(missing)} in {' '.join(groups)}; the jobs are: "
                             + " ".join(t[-1].id for t in planned(groups, seeds)))
    t0, found, done, loads = time.perf_counter(), {}, {}, {}
    for k, (group, chapter, argv, args, every, job) in enumerate(todo, 1):
        how = setting(chapter, job, args)
        say(f"[{k}/{len(todo)}] {chapter} {job.id}: {how.how} ...", end="", flush=True)
        command = [*argv, "--only", *how.only, *how.argv]
        try:
            if tuple(command) not in found:
                found[tuple(command)] = run_probe(chapter, checked(chapter, command, how.stand_in or job.id),
                                                  scratch, steady)
        except ProbeFailed as e:
            say(f" failed: {e}", flush=True)
            continue
        job_seconds, fits, wall = found[tuple(command)]
        loads.setdefault(group, []).append(max(wall - job_seconds, 0.0))
        if how.svm_scale is not None:
            got = {"startup": job_seconds * how.svm_scale, "epochs": 0, "epoch_seconds": 0.0,
                   "expected": job_seconds * how.svm_scale, "upper_bound": False}
        else:
            stops = recorded_stops(job, parts.recorded_results(chapter)) if any(f.rules for f in fits) else None
            got = scaled(job_seconds, fits, train_scale=how.train_scale, eval_scale=how.eval_scale, stops=stops)
        probed = sum(f.epochs_run for f in fits)
        entry = {"expected_seconds": round(got["expected"], 1), "seeds": how.seeds,
                 "startup_seconds": round(got["startup"], 1), "epochs": got["epochs"],
                 "epoch_seconds": round(got["epoch_seconds"], 3), "probed_seconds": round(job_seconds, 1),
                 "probed": f"{how.how}; {probed} epoch{'s' * (probed != 1)} in {len(fits)} training"
                           f"{'s' * (len(fits) != 1)}" if fits else how.how}
        if how.stand_in:
            entry["probed"] += f" (the job {how.stand_in})"
        if got["upper_bound"]:
            entry["upper_bound"] = True
        recorded = recorded_seconds(chapter, args, every, job, group)
        if recorded is not None:
            entry["recorded_seconds"] = round(recorded, 1)
        done.setdefault(chapter, {})[job.id] = entry
        say(f" {duration(job_seconds)}: start-up {entry['startup_seconds']} s"
            + (f", {entry['epoch_seconds']:.3g} s/epoch × {entry['epochs']}" if entry["epochs"] else "")
            + f" → {'at most ' * bool(got['upper_bound'])}{duration(got['expected'])}"
            + (f" (recorded {duration(recorded)})" if recorded is not None else ""), flush=True)
    return {"machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
            "settings": {"seeds": seeds or "the chapters' (3)", "steady_seconds": steady,
                         "chap6": f"--train-size {CHAP6_TRAIN} --eval-size {CHAP6_EVAL}",
                         "svm_images": SVM_IMAGES, "compiling": "a first run's (an empty compilation cache)"},
            "loads": {g: round(sorted(v)[len(v) // 2], 1) for g, v in loads.items()}, "jobs": done}


def table(found):
    """The probe's table: job, start-up s, s/epoch, epochs, expected, recorded."""
    lines = ["| job | start-up s | s/epoch | epochs | expected | recorded |", "|---|---|---|---|---|---|"]
    for chapter, jobs in found["jobs"].items():
        for job_id, e in jobs.items():
            rec = e.get("recorded_seconds")
            lines.append(f"| {chapter} {job_id} | {e['startup_seconds']:.1f} | "
                         + (f"{e['epoch_seconds']:.3g} | {e['epochs']}" if e["epochs"] else "— | —")
                         + f" | {'≤ ' * bool(e.get('upper_bound'))}{duration(e['expected_seconds'])} | "
                         + ("—" if rec is None else duration(rec)) + " |")
    total = sum(e["expected_seconds"] for jobs in found["jobs"].values() for e in jobs.values())
    count = sum(map(len, found["jobs"].values()))
    lines += ["", f"{count} job{'s' * (count != 1)}, expected {duration(total)} in all "
              f"(the seeds as probed); probed in {duration(found['seconds'])} on {found['machine']['cpu']}, "
              f"{found['machine']['cores']} cores; data loading per chapter run: "
              + ", ".join(f"{g} {s} s" for g, s in found["loads"].items())]
    return lines


def written(found, out, command):
    """The probe file at ``out``: ``found`` with the entries of jobs not probed now
    kept from the file already there, when it comes from the same machine."""
    old = None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(Path(out).read_text())
    jobs, loads = {}, {}
    if isinstance(old, dict) and same_machine(old.get("machine"), found["machine"]):
        jobs = {c: dict(j) for c, j in (old.get("jobs") or {}).items() if isinstance(j, dict)}
        loads = dict(old.get("loads") or {})
    for chapter, entries in found["jobs"].items():
        jobs.setdefault(chapter, {}).update(entries)
    return {"about": "Seconds each job of the book is expected to take alone on this machine: a short run of "
                     "each job, its epochs after the first scaled to the book's epochs and data, plus its "
                     "start-up. Written by `python -m experiments.probe`; read by the planner "
                     "(experiments.parts: --plan, --part). See benchmarks/README.md.",
            "command": command, "machine": found["machine"], "settings": found["settings"],
            "probe_seconds": found["seconds"], "loads": loads | found["loads"], "jobs": jobs}


def main(argv=None, run_session=None):
    """The probe's command line (``session.main_entry``'s protocol: ``run_session``
    is the command's session, which each probed job does not share: every job
    runs as its own chapter command, with a session of its own)."""
    p = argparse.ArgumentParser(prog="python -m experiments.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chapters", nargs="+", default=list(GROUPS), choices=list(GROUPS), metavar="CHAPTER",
                   help="the chapters to probe: %(choices)s (replays: chapter 3's --book-seed rows; default: all)")
    p.add_argument("--only", nargs="+", default=None, metavar="JOB",
                   help="only these jobs, by the ids --plan shows (6.8a, 1.1+1.4, 3.14@100, 3.7@book)")
    p.add_argument("--seeds", type=driver.positive_int, default=None,
                   help="runs per row as the plan's (default: each chapter's, 3)")
    p.add_argument("--steady", type=float, default=STEADY_SECONDS, metavar="SECONDS",
                   help="how long each training runs after its first epoch, at least (default %(default)s)")
    p.add_argument("--out", type=Path, default=parts.PROBE_FILE,
                   help=f"the probe file (default: {parts.shown_path(parts.PROBE_FILE)})")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default: $NNDL_JAX_DATA, "
                                                               "then the user cache)")
    args = p.parse_args(argv)
    groups = [g for g in GROUPS if g in args.chapters]
    if args.data_dir is not None:
        os.environ[data.ENV_VAR] = str(args.data_dir)
    from experiments import session
    session.use_devices(None, per_core="6" in groups, prog="probe")   # as `nndl-jax reproduce` runs them
    scratch = Path(tempfile.mkdtemp(prefix="nndl-jax-probe-"))
    os.environ["NNDL_JAX_COMPILATION_CACHE"] = str(scratch / "xla")   # compiling as a first run's: an empty cache
    try:
        found = probe(groups, seeds=args.seeds, only=args.only, steady=args.steady, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + "\n".join(table(found)))
    command = "python -m experiments.probe " + " ".join(argv if argv is not None else sys.argv[1:])
    files.atomic_write_text(args.out, json.dumps(written(found, args.out, command.strip()), indent=1,
                                                 ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}: the planner (--plan, --part) now expects these jobs' probed seconds")
    return 0


if __name__ == "__main__":
    from experiments import session
    raise SystemExit(session.main_entry(main))
