"""How every chapter runs its rows: the command line, the row driver, the
checkpoints of unfinished rows, the progress lines and the command-line wrapper.

A chapter module is a table of the book's rows at the top, then ``jobs(args)``
(what to train, as ``Job``s) and ``main``:

    def main(argv=None):
        args = driver.parse_args("chap1", __doc__, argv, row_ids=[r["id"] for r in ROWS])
        return driver.finish(args, driver.run_jobs(args, jobs(args)))

    if __name__ == "__main__":
        raise SystemExit(driver.main_entry(main))

A chapter module's top (docstring, row table, ``add_arguments``, ``main``)
imports no JAX: it imports JAX and the parts of ``nndl_jax`` built on it
(``train``, ``layers``, ``costs``, ``activations``, ``network3``) inside the
functions that compute, so ``--help`` answers without starting JAX
(tests/test_cli.py checks every chapter).

``run_jobs`` does the same for every job of every chapter: skip it under
``--resume`` when all its rows are already recorded in ``--out`` with the same
settings, run it (its checkpoints live in the user cache, locked by the
running process), record its rows the moment they are finished, remove its
checkpoints. ``--resume`` therefore means the same everywhere, in
``nndl-jax reproduce`` too: continue unfinished rows, skip finished ones.
``--part I/N`` keeps the jobs that ``experiments.parts`` plans for part I
(before anything else: the same plan in every process); ``--plan N`` prints
that plan and exits.
"""
import argparse
import contextlib
import datetime
import glob
import hashlib
import importlib
import itertools
import json
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments import parts, report, store
from nndl_jax import data, files

_RUNS = itertools.count(1)  # tells apart runs of one process (tests, nndl-jax reproduce)
CHECKPOINT_FILE = "state.npz"
OWNER_FILE = "owner.json"   # in a row's checkpoint folder: the pid that trains it (locked), its rows


class Refusal(SystemExit):
    """A command refused before or while it trains: the message says why and
    what to do. A SystemExit, so even uncaught it prints no traceback (exit 1)."""


# --- the command line ----------------------------------------------------------------------

def parse_args(chapter, description, argv=None, *, row_ids, default_seeds=3, quick_seeds=None,
               add_arguments=None, devices_per_core=False, prog=None):
    """The command line every chapter takes; ``row_ids``: the chapter's rows,
    as a dict id -> title (or a list of ids), listed by ``--help`` in the
    book's order; ``--only`` accepts them and every id of the results table
    they make (`row_of`: ``3.10a``, ``3.14@100``), kept in ``args.asked``
    (``args.only`` holds their rows; `asked_jobs` keeps the jobs they need);
    ``add_arguments(parser)`` adds a chapter's own options; ``quick_seeds``:
    the runs per row of --quick unless --seeds is given; ``prog``: the
    command as the user typed it (default: ``nndl-jax chapN`` under
    `main_entry` with an argv, as the ``nndl-jax`` command runs it, else
    ``python -m experiments.chapN``).

    ``--plan N`` prints how ``--part I/N`` would share the chapter's jobs
    (``experiments.parts``) and exits, training nothing and starting no JAX
    device; ``--part I/N`` keeps this part's jobs (``args.share``).

    Before anything trains: an unknown row id, a bad number, an ``--out`` that
    cannot take this run's results (not writable, an unusable results.json,
    another chapter's or the other kind's rows) are argparse errors (exit 2);
    a checkpoint folder that cannot be written, or unfinished rows of an
    earlier run without --resume / --restart, or a row being trained by a live
    process, are a ``Refusal``. ``--devices`` is applied here, before JAX runs anything."""
    titles = row_ids if isinstance(row_ids, dict) else dict.fromkeys(row_ids, "")
    row_ids = list(titles)
    p = argparse.ArgumentParser(prog=prog or command_name(chapter), description=description,
                                epilog=rows_help(chapter, titles),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a short run for CI: few epochs on a small subset, through the real code")
    p.add_argument("--out", type=Path, default=Path("results") / chapter,
                   help=f"folder for results.json and the figures; rows already there are kept and a "
                        f"rerun row replaced (default: results/{chapter})")
    p.add_argument("--seeds", type=positive_int, default=default_seeds,
                   help="runs per row, trained together as one program (default %(default)s)")
    p.add_argument("--seed", type=int, default=12345678,
                   help="first seed; run k uses seed + k (default: the book's fig/ seed %(default)s)")
    p.add_argument("--only", nargs="+", default=None, metavar="ID",
                   help="run only these rows: their ids (listed below) or any id of the results table "
                        "(3.10a runs row 3.10, which makes 3.10a-d; 3.14@100 that size alone)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder (default: $NNDL_JAX_DATA, then the user cache)")
    add_again_arguments(p)
    p.add_argument("--x64", action="store_true",
                   help="compute in float64 throughout (data, params, training), as the book's NumPy "
                        "code does; the default is float32. A seed draws other initial weights in "
                        "float64 than in float32 (the mini-batch order is the same)")
    p.add_argument("--devices", type=positive_int, default=None, metavar="N",
                   help="CPU devices for JAX, set before JAX starts (default: "
                        + ("one per core" if devices_per_core else "JAX's own, one") + ")")
    add_process_arguments(p)
    p.add_argument("--part", type=parts.part_arg, default=None, metavar="I/N",
                   help="run part I of N: the jobs (rows trained together; the ensemble's nets one by one) "
                        "shared out over N parts by their recorded time, longest first, so the parts finish "
                        "close together; the same in every process. Give each part its own --out and "
                        "combine them with `nndl-jax merge`")
    p.add_argument("--plan", type=positive_int, default=None, metavar="N",
                   help="print which jobs each of N parts would run and its expected time, then exit")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if quick_seeds is not None and args.quick and not any(a.split("=")[0] == "--seeds" for a in given):
        args.seeds = quick_seeds
    if not 0 <= args.seed or args.seed + args.seeds > 2 ** 32:
        p.error(f"--seed {args.seed} with --seeds {args.seeds}: seeds must lie in 0 .. 2**32 - 1")
    args.asked = args.only
    if args.only is not None:
        unknown = [r for r in args.only if row_of(r, row_ids) is None]
        if unknown:
            p.error(f"unknown row id{'s' if len(unknown) > 1 else ''} {' '.join(unknown)} for --only; "
                    f"the {chapter} rows are: {' '.join(sorted(row_ids, key=store.row_sort_key))} "
                    "(or an id of the results a row makes, such as chapter 3's 3.10a or 3.14@100; "
                    "--help lists the rows with their titles)")
        args.only = list(dict.fromkeys(row_of(r, row_ids) for r in args.only))
    args.row_ids = list(row_ids)
    args.chapter = chapter
    if _LISTING["on"]:
        raise _Parsed(args)
    if args.plan is not None:
        print(parts.plan_text(parts.chapter_plan(chapter, args, planned_jobs_of(chapter), args.plan),
                              what=f"{chapter} --plan {args.plan}"))
        raise SystemExit(0)
    args.share, args.part_record = None, None
    if args.part is not None:
        i, n = args.part
        plan = _BOOK_PLAN.get(chapter) or parts.chapter_plan(chapter, args, planned_jobs_of(chapter), n)
        args.share, args.part_record = parts.share(plan, i, chapter), parts.part_record(plan, i, chapter)
    args.code = parts.code_version()
    problem = store.out_problem(args.out, args.quick, chapter)
    if problem:
        p.error(problem)
    start_processes(args, prog=chapter)
    use_devices(args.devices, per_core=devices_per_core, prog=chapter)
    if args.x64:  # before any array is made: every default float becomes float64
        import jax
        jax.config.update("jax_enable_x64", True)
    args.started = time.time()
    args.run_id = f"{store.now()} pid {os.getpid()} #{next(_RUNS)}"
    args.argv = given
    if is_main_process():  # the other processes of a multi-process run follow process 0's decisions
        probe_checkpoint_folder(args)
        check_unfinished(args)
    _SESSION["runs"].append(args)
    return args


def add_again_arguments(p):
    """``--resume`` / ``--restart``, the same in every chapter and in ``reproduce``."""
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="skip rows already recorded in --out with the same settings, and continue "
                            "unfinished rows from their last checkpoint")
    again.add_argument("--restart", action="store_true",
                       help="discard this command's unfinished checkpoints and train its rows afresh")


def add_process_arguments(p):
    """One run over several processes or hosts (``nndl_jax.distributed``): opt-in;
    also read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID."""
    from nndl_jax import distributed
    g = p.add_argument_group("one run over several processes or hosts (jax.distributed; all-or-nothing: "
                             "if one process fails, all stop, and --resume continues)")
    g.add_argument("--coordinator", type=coordinator_arg, metavar="HOST:PORT", default=None,
                   help="process 0's address, the same for every process")
    g.add_argument("--num-processes", type=positive_int, default=None, metavar="N", help="how many processes")
    g.add_argument("--process-id", type=int, default=None, metavar="I", help="this process: 0 .. N-1")
    g.add_argument("--coordinator-timeout", type=positive_int, default=distributed.DEFAULT_TIMEOUT,
                   metavar="SECONDS", help="how long the start-up waits for the other processes, and how long "
                                           "a silent one goes unnoticed (default %(default)s)")
    g.add_argument("--cluster", action="store_true",
                   help="let JAX detect the processes of a cluster it knows (Slurm, TPU pods, Open MPI)")
    g.add_argument("--debug", action="store_true",
                   help="when a process of the run stops on an error, print JAX's own traceback here "
                        "(by default it goes to a log file, which the message names)")


def coordinator_arg(text):
    """An argparse type: ``HOST:PORT`` with a port from 1 to 65535."""
    from nndl_jax import distributed
    try:
        distributed.parse_coordinator(text)
    except distributed.DistributedError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# What may differ between the processes of one run: each process's own place in it.
_PER_PROCESS = {"process_id", "coordinator", "coordinator_timeout", "cluster", "debug", "data_dir", "devices",
                "share", "part_record"}
_LABELS = {"chapter": "the command", "code": "the code version"}


def agreed_settings(args):
    """The settings every process of a run must share, as {"--epochs": 3, ...}:
    the parsed command line but each process's own place in it (``_PER_PROCESS``)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
    return {_LABELS.get(k, "--" + k.replace("_", "-")): plain(v)
            for k, v in sorted(vars(args).items()) if k not in _PER_PROCESS and not k.startswith("_")}


def start_processes(args, prog="nndl-jax"):
    """Join the run's other processes (before JAX starts) when asked to, after
    checking that every process was given the same arguments; the processes
    other than 0 then print nothing and write nothing (process 0 does). A stop
    of any process (Ctrl-C, SIGTERM) stops this one too, with its note."""
    from nndl_jax import distributed
    try:
        if not (args.cluster or distributed.wanted(args.coordinator, args.num_processes, args.process_id)):
            return
        index, count = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                              timeout=args.coordinator_timeout, auto=args.cluster,
                                              agree=agreed_settings(args), debug=getattr(args, "debug", False))
    except distributed.DistributedError as e:
        raise Refusal(f"{prog}: {e}") from None
    distributed.on_peer_stop(lambda peer, why, status: _stop_now(why if " in process " in why
                                                                 else f"{why} in process {peer}", status))
    if index != 0:  # stdout, its file descriptor too (the collectives' libraries print there)
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def is_main_process():
    """Whether this process prints and writes: process 0 of a multi-process run, or the only one."""
    from nndl_jax import distributed
    return distributed.is_main() if "jax" in sys.modules else True


def positive_int(text):
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def use_devices(n, *, per_core=False, prog="nndl-jax"):
    """Ask JAX for ``n`` CPU devices (None: one per core when ``per_core``,
    else leave JAX's default) before it runs anything. When JAX already runs
    (a test, or an earlier chapter of ``reproduce``) with another count, says
    so on stderr; the numbers do not depend on the device count. The count is
    this process's own (``--devices`` in a run over several processes); then
    the processes connect their collectives (``distributed.connect_collectives``)."""
    from nndl_jax import distributed
    if n is None and not per_core:
        if distributed.started():
            distributed.connect_collectives()
        return None
    from nndl_jax import devices
    want = devices.cpu_count() if n is None else n
    devices.use_cpu_devices_unless_started(want)
    import jax
    got = len(jax.local_devices(backend="cpu"))
    if n is not None and got != n:
        print(f"{prog}: --devices {n} cannot apply: JAX already runs with {got} CPU devices in this "
              f"process (the count is fixed once JAX has run anything); run the command in a fresh "
              f"process to use {n}. The results do not depend on it.", file=sys.stderr, flush=True)
    if distributed.started():
        distributed.connect_collectives()
    return got


def seeds(args):
    """The integer seeds of the runs of one row: the command's, or those the
    row driver hands a job of units (a part's share, the seeds not yet recorded)."""
    given = getattr(args, "unit_seeds", None)
    return list(given) if given is not None else store.seeds(args)


class _Parsed(Exception):
    """Carries a chapter's parsed command line out of its ``main`` (``chapter_args``)."""


_LISTING = {"on": False}
_BOOK_PLAN = {}   # chapter -> the plan of ``nndl-jax reproduce --part``, set for its chapters


def chapter_args(chapter, argv):
    """The command line ``argv`` of chapter ``chapter`` parsed as its ``main``
    parses it, with nothing checked on disk, trained or started: for planning."""
    module = importlib.import_module(f"experiments.{chapter}")
    _LISTING["on"] = True
    try:
        module.main(list(argv))
    except _Parsed as e:
        return e.args[0]
    finally:
        _LISTING["on"] = False
    raise RuntimeError(f"experiments.{chapter}.main did not parse its arguments with driver.parse_args")


def planned_jobs_of(chapter):
    """Chapter ``chapter``'s ``planned_jobs(args)``: its jobs asked for, listed
    without data (their ``run`` is never called)."""
    return importlib.import_module(f"experiments.{chapter}").planned_jobs


def set_book_plan(plan, chapters):
    """``nndl-jax reproduce --part``: the chapters' shares come from one plan of
    the whole book (None: each chapter plans its own jobs)."""
    _BOOK_PLAN.clear()
    if plan is not None:
        _BOOK_PLAN.update({c: plan for c in chapters})


def command_name(chapter):
    """How the user typed chapter ``chapter``'s command: ``nndl-jax chapN``
    when `main_entry` runs it for the ``nndl-jax`` command, else
    ``python -m experiments.chapN``."""
    base = _SESSION.get("prog")
    return f"{base} {chapter}" if base else f"python -m experiments.{chapter}"


def rows_help(chapter, titles):
    """``--help``'s list of the chapter's rows, in the book's order, with their titles."""
    ids = sorted(titles, key=store.row_sort_key)
    width = max(map(len, ids), default=0)
    lines = [f"rows of {chapter} (--only ID ...; an id of the results table, such as 3.10a or 3.14@100, "
             "runs what that id needs):"]
    lines += [f"  {i:<{width}}  {titles[i]}".rstrip() for i in ids]
    return "\n".join(lines)


def row_of(table_id, row_ids):
    """The row of ``row_ids`` that makes the results-table id ``table_id``:
    itself when it is a row id, else the longest row id it extends by a
    letter, "@", "." or "-" ("3.10a" -> 3.10, "3.10-100a" -> 3.10-100,
    "3.14@100" -> 3.14, "4.2w.5" -> 4.2w, "5.8.2.1" -> 5.8, but "3.10" is not
    3.1's); None when no row makes it."""
    if table_id in row_ids:
        return table_id
    makers = [r for r in row_ids if table_id.startswith(r) and len(table_id) > len(r)
              and (table_id[len(r)].isalpha() or table_id[len(r)] in "@.-")]
    return max(makers, key=len, default=None)


def asked_jobs(args, jobs):
    """The ``jobs`` that ``--only`` asks for. A row asked by its own id keeps
    all its jobs; a row asked by ids of its results table keeps the jobs that
    make one of them (``--only 3.14@100``: that size alone; ``3.10a``: the job
    of row 3.10, which makes 3.10a-d), or all its jobs when none names one
    (``6.11@<seed>``: the ensemble's job, whose nets ``--nets`` chooses)."""
    if args.only is None:   # every job (also the planner's view of the whole chapter)
        return list(jobs)
    asked, rows = list(getattr(args, "asked", None) or ()), getattr(args, "row_ids", None) or args.only
    whole = {a for a in asked if a in rows}
    finer = [a for a in asked if a not in whole]
    if not finer:
        return list(jobs)

    def names(job):
        return {job.id, *job.rows}

    def makes(job, ids):
        return bool(names(job) & set(ids)) or any(row_of(n, rows) in whole for n in names(job))

    kept = [j for j in jobs if makes(j, asked)]
    for a in finer:   # an id that no job names: every job of its row, if its nets go apart ("6.11@<seed>")
        row = row_of(a, rows)
        if any(a in names(j) for j in kept):
            continue
        of_row = [j for j in jobs if any(row_of(n, rows) == row for n in names(j))]
        if of_row and not any(j.seeds_apart for j in of_row):
            made = sorted({r for j in of_row for r in j.rows}, key=store.row_sort_key)
            raise Refusal(f"{args.chapter}: --only {a}: row {row} makes {' '.join(made)} here, not {a}")
        kept += [j for j in of_row if j not in kept]
    return [j for j in jobs if j in kept]


def wanted(args, row_id):
    """Whether the row ``row_id`` was asked for (``--only``)."""
    return args.only is None or row_id in args.only


# --- the row driver --------------------------------------------------------------------------

@dataclass
class Job:
    """Rows trained (or computed) together, recorded together.

    ``id``: the name of its checkpoint folder ("1.1+1.4" for two rows trained
    as one program); ``rows``: the ids of the table rows it writes; ``run(args)``
    returns those rows (``report.row`` dicts), or ``(rows, payload)`` for the
    results file's chapter payload; ``settings``: what, beside the seeds and
    the quick / x64 flags, a recorded row must match to be skipped by
    ``--resume`` (recorded in each row); ``seeds``: the rows' seeds (default:
    the command's).

    A job made of units (``compose`` given): each seed is a unit of work,
    ``<job>@<seed>``; ``run(args)`` trains the seeds ``seeds(args)`` gives it
    (all, or a part's share, or those --resume has not recorded yet) side by
    side as one program and returns one unit record per row of ``unit_rows``
    (default ``rows``) and seed (a dict with ``row`` and ``seed``: recorded as
    ``<row>@<seed>``), and a payload; ``compose({row: [its unit records, in
    seed order]}, results)`` makes the job's rows and payload from every
    seed's records wherever they were trained. ``units_are_rows``: the unit
    records are table rows too (the ensemble's nets, ``6.11@<seed>``);
    ``seeds_apart``: ``--nets`` picks which seeds this command trains."""

    id: str
    rows: list
    run: Callable
    settings: dict = field(default_factory=dict)
    seeds: list = None
    seeds_apart: bool = False
    compose: Callable = None
    unit_rows: list = None
    units_are_rows: bool = False
    noun: tuple = ("seeds", "its")   # what its units are called in messages: ("nets", "the ensemble's")


def job_seeds(args, job):
    """Every seed of ``job`` (its own, else the command's)."""
    return list(job.seeds) if job.seeds is not None else store.seeds(args)


def run_jobs(args, jobs):
    """Run ``jobs`` in order, each: left to other parts when ``--part`` gives
    it (or some of its seeds) to them; skipped under ``--resume`` when every
    row (or unit) of it is recorded in ``--out`` with the same settings; else
    run, its rows (units) recorded at once through ``store.record`` (with
    ``seconds``, the job's time, unless a row times itself), its checkpoints
    removed; a job of units then composes its rows once every seed is
    recorded. Returns the rows of this run (the recorded rows of skipped jobs
    included, so the table shows them)."""
    rows = []
    for job in jobs:
        if job.compose is not None:
            rows += run_unit_job(args, job)
            continue
        if parts.holds(args, job.id):
            rows += run_whole_job(args, job)
    return rows


def run_whole_job(args, job):
    """A job of rows (no units): skipped under --resume when recorded, else run and recorded."""
    kept = recorded_job(args, job) if args.resume else None
    if kept is not None:
        print(f"\n{job.id}: already in {Path(args.out) / store.RESULTS} (finished "
              f"{kept[0].get('finished', '?')}); --resume skips it", flush=True)
        return kept
    if args.resume:
        _note_other_groupings(args, job)
    done, payload, seconds = _run(args, job, job.id)
    for r in done:
        for k, v in job.settings.items():
            r.setdefault(k, v)
        if r.get("run", args.run_id) == args.run_id:
            r.setdefault("seconds", seconds)
        if job.seeds is not None:
            r.setdefault("seeds", list(job.seeds))
    _record(args, done, payload)
    remove_checkpoints(args, job.id)
    return done


def _run(args, job, checkpoint_id, unit_seeds=None):
    """``job.run`` on a copy of ``args`` that names the job (``args.job``, read
    by `row_checkpoint`), its checkpoint and seeds: (its records, its payload, its seconds)."""
    t0 = time.time()
    given = argparse.Namespace(**{**vars(args), "job": job, "checkpoint_id": checkpoint_id,
                                  "unit_seeds": unit_seeds, "extra_payload": {}})
    try:
        out = job.run(given)
    except BaseException:
        _drop_unsaved(args, checkpoint_id)  # a job stopped before its first checkpoint leaves no folder
        raise
    done, payload = out if isinstance(out, tuple) else (out, {})
    return done, merged_payload(payload, given.extra_payload), time.time() - t0


def add_payload(args, payload):
    """Add ``payload`` (e.g. ``store.divergence(...)``) to what the running job
    records with its rows: a job's sub-runs return nothing to the driver but
    what they measure, and only the driver writes results."""
    args.extra_payload = merged_payload(getattr(args, "extra_payload", {}), payload)


def merged_payload(a, b):
    """Two chapter payloads as one: dict entries merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _record(args, rows, payload, units=()):
    """Every write of a chapter run's results goes through here (``store.record``)."""
    store.record(args, rows, units=units, **payload)
    _SESSION["recorded"] += [(args.out, r["id"]) for r in rows]


def held_seeds(args, job):
    """The seeds of ``job`` this command trains: the part's share (``--part``),
    then ``--nets`` (indices into the seeds) for a job whose seeds train apart."""
    every = job_seeds(args, job)
    nets = getattr(args, "nets", None) if job.seeds_apart else None
    if nets:
        bad = [i for i in nets if not 0 <= i < len(every)]
        if bad:
            raise Refusal(f"{args.chapter}: --nets {' '.join(map(str, bad))}: {job.id} has nets 0 to "
                          f"{len(every) - 1} (seeds {every[0]}–{every[-1]}; more with --seeds)")
        every = [every[i] for i in sorted(set(nets))]
    return parts.held_seeds(args, job, every)


def unit_record(results, row_id, seed):
    """The record of unit ``<row_id>@<seed>`` in ``results``: in ``"units"``, or a row of that id."""
    uid = f"{row_id}@{seed}"
    found = (results or {}).get("units", {}).get(uid)
    return found if found is not None else next((r for r in (results or {}).get("rows", []) if r["id"] == uid), None)


def recorded_unit(args, job, results, seed):
    """Whether every row's record of ``job``'s seed ``seed`` is in ``results`` with this command's settings."""
    return all(store.matches(unit_record(results, row, seed), quick=args.quick, x64=args.x64, seeds=[seed],
                             settings=job.settings) for row in job.unit_rows or job.rows)


def run_unit_job(args, job):
    """A job of units: its held seeds not yet recorded trained side by side, each
    seed's records recorded, then the rows composed when every seed is recorded."""
    held = held_seeds(args, job)
    if not held:
        return []
    if args.resume and held == job_seeds(args, job):
        kept = recorded_job(args, job)
        if kept is not None:
            print(f"\n{job.id}: already in {Path(args.out) / store.RESULTS} (finished "
                  f"{kept[0].get('finished', '?')}); --resume skips it", flush=True)
            return kept
    results = store.read_results(args.out)
    todo = [s for s in held if not (args.resume and recorded_unit(args, job, results, s))]
    if len(todo) < len(held):
        skipped = ", ".join(str(s) for s in held if s not in todo)
        print(f"\n{job.id}: {'' if job.noun[0] == 'seeds' else job.noun[0] + ' of '}seeds {skipped} already in "
              f"{Path(args.out) / store.RESULTS}; --resume skips them", flush=True)
    rows = []
    if todo:
        ckpt = job.id if todo == job_seeds(args, job) else f"{job.id}@" + "-".join(map(str, todo))
        units, payload, seconds = _run(args, job, ckpt, todo)
        for u in units:
            u.update({k: v for k, v in job.settings.items() if k not in u}, id=f"{u['row']}@{u['seed']}",
                     seeds=[u["seed"]])
            u.setdefault("trained_with", todo)
            u.setdefault("seconds", seconds)
        shown = [u for u in units if job.units_are_rows]
        _record(args, shown, payload, () if job.units_are_rows else units)
        remove_checkpoints(args, ckpt)
        rows += shown
    return rows + composed_rows(args, job)


def composed_seconds(units):
    """The training time of a row composed from ``units``: each run that trained
    some of its seeds (side by side) counted once."""
    groups = {(u.get("run"), tuple(u.get("trained_with") or [u.get("seed")])): u.get("seconds", 0.0)
              for u in units}
    return sum(groups.values())


def composed_rows(args, job):
    """``job``'s rows composed from every seed's records in ``--out`` and
    recorded, or [] (with a line saying so) while some seed is not recorded."""
    results = store.read_results(args.out)
    every = job_seeds(args, job)
    missing = [s for s in every if not recorded_unit(args, job, results, s)]
    if missing:
        print(f"\n{job.id}: {len(every) - len(missing)} of {job.noun[1]} {len(every)} {job.noun[0]} are recorded in "
              f"{Path(args.out) / store.RESULTS}; its rows {', '.join(job.rows)} are composed once the others "
              f"are ({', '.join(f'{job.id}@{s}' for s in missing)}: another part, then `nndl-jax merge`)",
              flush=True)
        return []
    units = {row: [unit_record(results, row, s) for s in every] for row in job.unit_rows or job.rows}
    rows, payload = job.compose(units, results)
    flat = [u for us in units.values() for u in us]
    for r in rows:
        r.update({k: v for k, v in job.settings.items() if k not in r})
        r.setdefault("seeds", every)
        r.setdefault("seconds", composed_seconds(flat))
    _record(args, rows, payload)
    return rows


def _note_other_groupings(args, job):
    """Under --resume: say so when rows of ``job`` are also saved in a checkpoint
    of another grouping (another --only or --nets), which this job does not continue."""
    mine = {job.id} | {j for j in saved_checkpoints(args) if j.startswith(job.id + "@")}
    for other, rows in saved_checkpoints(args).items():
        shared = sorted(set(rows) & set(job.rows))
        if other not in mine and shared:
            print(f"\n{job.id}: note: {', '.join(shared)} also saved as part of {other} (rows {', '.join(rows)}), "
                  f"which this command does not continue: run the command that made it with --resume to "
                  "continue that, or --restart to discard it", flush=True)


def recorded_job(args, job):
    """The recorded rows of ``job`` when every one of them is in ``--out`` with
    this command's quick / x64 flags, seeds and the job's settings
    (``store.matches``, the one policy); else None."""
    if not job.rows:
        return None
    recorded = {r["id"]: r for r in store.recorded_rows(args)}
    kept = [recorded.get(rid) for rid in job.rows]
    if all(store.matches(r, quick=args.quick, x64=args.x64, seeds=job_seeds(args, job), settings=job.settings)
           for r in kept):
        return kept
    return None


def finish(args, rows, **payload):
    """Record ``rows`` once more (unchanged), mark the run complete, print this
    run's table (less the rows `show_table` printed already) and return the
    merged results (every row in ``OUT/results.json``)."""
    out = store.record(args, rows, complete=True, **payload)
    unshown = [r for r in rows if r["id"] not in getattr(args, "shown", ())]
    if unshown or not rows:
        print()
        print(report.format_table(unshown))
    kept = len(out["rows"]) - len({r["id"] for r in rows})
    print(f"\n{args.chapter}: {report.duration(time.time() - args.started)} wall"
          f"{' (quick mode)' if args.quick else ''}")
    print(f"wrote {Path(args.out) / store.RESULTS}" + (f" ({kept} rows of earlier runs kept)" if kept else ""))
    if getattr(args, "part_record", None):
        print(merge_hint(args))
    return out


def merge_hint(args):
    """What a part says when it is done: the whole merge command, with this
    part's folder in its place and the other parts' folders named by their part."""
    i, n = (int(t) for t in args.part_record["part"].split("/"))
    folders = [shlex.quote(str(args.out)) if k == i else f"PART{k}_OUT" for k in range(1, n + 1)]
    return (f"part {i}/{n} (plan {args.part_record['plan']}) done. Once every part is, with PARTk_OUT the --out "
            f"of part k/{n}: nndl-jax merge {' '.join(folders)} --out merged")


# --- checkpoints of unfinished rows ------------------------------------------------------------

def checkpoint_root(args):
    """``<cache>/checkpoints/<first 12 hex of sha1(absolute --out)>/<chapter>``, with
    ``<cache>`` the user cache (``$XDG_CACHE_HOME/nndl-jax``): one folder per
    output folder, so runs into different ``--out`` folders never share checkpoints."""
    digest = hashlib.sha1(str(Path(args.out).resolve()).encode()).hexdigest()[:12]
    return data.cache_dir() / "checkpoints" / digest / args.chapter


def checkpoint_dir(args, job_id):
    """The folder where job ``job_id`` keeps its checkpoint. Not created here."""
    return checkpoint_root(args) / str(job_id)


def probe_checkpoint_folder(args):
    """Before any training: the checkpoint folder can be written (a folder made
    for the probe is removed again), else a one-line ``Refusal``."""
    folder = checkpoint_root(args)
    try:
        with store.probed_folder(folder):
            pass
    except OSError as e:
        raise Refusal(f"{args.chapter}: the checkpoint folder {folder} cannot be written "
                      f"({e.strerror or e}); set XDG_CACHE_HOME to a folder you can write to "
                      "(checkpoints go to $XDG_CACHE_HOME/nndl-jax/checkpoints)") from None


_LOCKS = {}  # checkpoint folder -> the open, locked owner file of a job this process trains


def live_owner(folder):
    """The pid of the live process that trains the job of ``folder`` (it holds
    the lock of its owner file), or None."""
    path = Path(folder) / OWNER_FILE
    if Path(folder) in _LOCKS or not path.exists():
        return None
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _owner(folder).get("pid", "?")
    finally:
        os.close(fd)
    return None


def _owner(folder):
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def claim(args, job_id, rows):
    """Make the folder of ``job_id`` this process's: a lock held until its rows
    are recorded (``remove_checkpoints``) or the process ends, so a second
    command on the same rows is told who trains them."""
    folder = checkpoint_dir(args, job_id)
    if not is_main_process():  # process 0 holds the lock and writes the checkpoints
        return folder
    pid = live_owner(folder)
    if pid is not None:
        raise Refusal(f"{args.chapter}: row {job_id} is being trained by pid {pid} (into {args.out}); "
                      "wait for it to finish, or give another --out")
    if folder in _LOCKS:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except OSError:
        os.close(fd)
        raise Refusal(f"{args.chapter}: row {job_id} is being trained by pid "
                      f"{_owner(folder).get('pid', '?')}; wait for it to finish, or give another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "rows": list(rows), "out": str(args.out)}).encode())
    _LOCKS[folder] = fd
    return folder


def row_checkpoint(args, job_id, meta, rows=None):
    """The ``train.Checkpoint`` of job ``job_id`` (or one of its sub-runs,
    ``<id>@...``), saved after every epoch in ``checkpoint_dir(args, job_id)``
    and removed by ``remove_checkpoints`` once its rows are recorded.
    ``--resume`` continues from it; ``--restart`` discards it. ``rows``: the
    table rows it makes (default: the running job's)."""
    from nndl_jax import train
    job_id = getattr(args, "checkpoint_id", None) or job_id   # a job of units: the seeds it trains
    job = getattr(args, "job", None)   # set by the row driver on the args it hands a job's run
    rows = rows or (job.rows if job is not None else [job_id])
    folder = claim(args, job_id, rows)
    ckpt = train.Checkpoint(folder / CHECKPOINT_FILE,
                            dict(meta, chapter=args.chapter, quick=bool(args.quick), x64=bool(args.x64)))
    if ckpt.exists() and args.restart:
        ckpt.remove()
    _SESSION["checkpoint"] = folder
    if not args.quick:
        print(f"  checkpoint after every epoch: {ckpt.path} (Ctrl-C stops at once; "
              "--resume continues from the last finished epoch)", flush=True)
    return ckpt


def saved_checkpoints(args):
    """{job id: the table rows it makes} for every job of this command's
    chapter and --out with a saved checkpoint."""
    root = checkpoint_root(args)
    if not root.is_dir():
        return {}
    return {p.parent.name: _owner(p.parent).get("rows", [p.parent.name])
            for p in sorted(root.glob(f"*/{CHECKPOINT_FILE}"))}


def _asked_for(args, job_id):
    """"1.1+1.2" (a group of rows), "3.12@..." (a sub-run), "6.8a" (--only 6.8)."""
    share = getattr(args, "share", None)
    if share is not None and not any(job_id.split("@")[0] == s.split("@")[0] for s in share):
        return False   # another part's job
    return any(wanted(args, part) or wanted(args, part.rstrip("ab"))
               for part in (p.split("@")[0] for p in job_id.split("+")))


def _stale(args, folder, rows):
    """Whether every row of a saved checkpoint has been recorded since it was written."""
    try:
        written = datetime.datetime.fromtimestamp((folder / CHECKPOINT_FILE).stat().st_mtime,
                                                  datetime.timezone.utc).isoformat(timespec="seconds")
        recorded = {r["id"]: r for r in store.recorded_rows(args)}
    except OSError:
        return False
    return bool(rows) and all(rid in recorded and recorded[rid].get("finished", "") >= written for rid in rows)


def check_unfinished(args):
    """Before any training, for each checkpoint folder of the rows asked for:
    a live process training it is named (its checkpoint is never discarded);
    a saved checkpoint whose rows have all been recorded since is stale and
    removed; others need ``--resume`` (continue) or ``--restart`` (discard):
    nothing saved is dropped silently. Leftovers of a run that saved nothing are cleared."""
    root, left = checkpoint_root(args), []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        job_id = folder.name
        if not _asked_for(args, job_id):
            continue
        pid = live_owner(folder)
        if pid is not None:
            raise Refusal(f"{args.chapter}: row {job_id} is being trained by pid {pid} (into {args.out}); "
                          "wait for it to finish, or give another --out")
        rows = _owner(folder).get("rows", [job_id])
        if not (folder / CHECKPOINT_FILE).exists() or args.restart:
            remove_checkpoints(args, job_id)
        elif _stale(args, folder, rows):
            print(f"{args.chapter}: removed the checkpoint of {job_id}, whose rows were recorded since",
                  flush=True)
            remove_checkpoints(args, job_id)
        else:
            left.append(job_id)
    if left and not args.resume:
        raise Refusal(
            f"{args.chapter}: rows {', '.join(left)} of an interrupted run into {args.out} are saved in "
            f"{root}: add --resume to continue them from their last finished epoch, "
            "or --restart to discard them")


def remove_checkpoints(args, job_id):
    """Remove the checkpoints of job ``job_id`` and of its sub-runs
    (``<id>@...``), with any temporary file an interrupted write left there,
    then every folder this leaves empty up to the cache's checkpoints folder
    (process 0's work in a multi-process run)."""
    if not is_main_process():
        return
    root = checkpoint_root(args)
    for folder in [root / job_id, *root.glob(f"{glob.escape(job_id)}@*")]:
        if not folder.is_dir():
            continue
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        for p in [*folder.glob(".*.tmp"), *folder.glob(".*.part")]:  # interrupted writes; the job is over
            p.unlink(missing_ok=True)
        (folder / OWNER_FILE).unlink(missing_ok=True)
        fd = _LOCKS.pop(folder, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            folder.rmdir()
    remove_empty_folders(root, data.cache_dir())


def _drop_unsaved(args, job_id):
    """Remove the checkpoint folders of ``job_id`` (and its sub-runs) that hold no saved state."""
    root = checkpoint_root(args)
    for folder in [root / job_id, *root.glob(f"{glob.escape(job_id)}@*")]:
        if folder.is_dir() and not (folder / CHECKPOINT_FILE).exists():
            remove_checkpoints(args, folder.name)


def remove_empty_folders(folder, stop):
    """Remove ``folder`` and its parents while they are empty, below ``stop``."""
    folder, stop = Path(folder), Path(stop)
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# --- progress ------------------------------------------------------------------------------

def event_text(event):
    """One line for an event of ``fit``'s records (resumed, diverged)."""
    kind = event.get("event")
    if kind == "resumed":
        return (f"resumed from {event.get('path')}: {event.get('epochs_done')} of {event.get('epochs')} "
                "epochs done")
    if kind == "diverged":
        return (f"net {event.get('net')} diverged in Epoch {event.get('epoch')} (η = {event.get('eta'):g}): "
                "its parameters are no longer finite; it stops training here (try a smaller η)")
    return ", ".join(f"{k} {v}" for k, v in event.items())


def epoch_text(e, epochs):
    """Epoch ``e`` (from 0) of ``epochs`` as the progress lines name it: the
    book's number, as its programs print it ("Epoch 0" is the first), then how
    many of the run's epochs are done: "Epoch 9 (10 of 30)"."""
    return f"Epoch {e} ({e + 1} of {epochs})"


def progress(label, epochs, show, *, every=1, log=None):
    """The one ``on_epoch`` printer of every chapter: a line saying what the
    wait before the first epoch is (compiling), fit's events, and every
    ``every``-th epoch (and the first and last) a line (`epoch_text`) with ``show(record)``
    (the chapter's rounded numbers), the time so far and the time left; with
    ``log`` (a path: `metrics_log`), every epoch's numbers of every net
    appended to that JSON-lines file as the epoch ends (`MetricsLog`).

    The estimate counts only epochs run in this process after the first
    finished (that one includes compiling; a resumed run starts later): after
    the first epoch it is an upper bound from that epoch's time, after that the
    mean time of the epochs since."""
    state = {"start": time.time()}
    metrics = MetricsLog(log) if log is not None else None
    print(f"  [{label}] compiling (first run only: the user cache keeps compiled programs), "
          f"then {plural(epochs, 'epoch')} ...", flush=True)

    def on_epoch(e, record):
        now = time.time()
        if metrics is not None:
            metrics.write(e, record, seconds=round(now - state["start"], 3))
        for event in record.get("events", ()):
            print(f"  [{label}] {event_text(event)}", flush=True)
        if "first" not in state:
            state.update(first=e, first_done=now)
            took = now - state["start"]
            left = epochs - e - 1
            timing = f"{report.duration(took)} with compiling" + (
                f"; at most about {report.duration(took * left)} left" if left else "")
        else:
            done = e - state["first"]
            left = (now - state["first_done"]) / done * (epochs - e - 1)
            timing = f"{report.duration(now - state['start'])}" + (
                f", ETA {report.duration(left)}" if e + 1 < epochs else "")
        if e == state["first"] or (e + 1) % every == 0 or e + 1 == epochs:
            shown = show(record)
            print(f"  [{label}] {epoch_text(e, epochs)}{': ' + shown if shown else ''}  ({timing})", flush=True)

    return on_epoch


METRICS = "metrics"   # OUT/metrics/<job>.jsonl: the per-epoch log of each job being trained


def metrics_log(args, label):
    """Where job ``label``'s per-epoch numbers stream while it trains:
    ``OUT/metrics/<label>.jsonl`` (characters other than letters, digits and
    ``. @ + -`` replaced by ``_``). None in the processes of a multi-process
    run other than process 0, which alone writes."""
    if not is_main_process():
        return None
    name = re.sub(r"[^\w.@+-]+", "_", label).strip("_")
    return Path(args.out) / METRICS / f"{name}.jsonl"


def metrics_lines(e, record, **extra):
    """Epoch ``e``'s record as JSON lines, one per net: ``{"epoch": e (from 0,
    as the book counts), "net": k, **extra, <name>: value, ...}`` for every
    per-net value of the record (accuracies as counts, costs, η, active, finite)."""
    import numpy as np
    per_net = {name: np.asarray(v) for name, v in record.items()
               if name not in ("params", "events", "epoch") and np.ndim(v) == 1}
    k = len(next(iter(per_net.values()))) if per_net else 0
    return [json.dumps({"epoch": int(e), "net": i, **extra, **{name: v[i].item() for name, v in per_net.items()}})
            for i in range(k)]


class MetricsLog:
    """A job's per-epoch JSON-lines log, appended and flushed at every epoch, so
    that it can be followed (``tail -f``) or plotted while a long row trains.
    At its first epoch in this process it keeps the lines of the epochs before
    it (a resumed run continues its log) and drops the later ones (a rerun
    starts a fresh log)."""

    def __init__(self, path):
        self.path, self.started = Path(path), False

    def write(self, e, record, **extra):
        if not self.started:
            self._keep_epochs_before(e)
            self.started = True
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in metrics_lines(e, record, **extra)))
            f.flush()

    def _keep_epochs_before(self, e):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    if json.loads(line).get("epoch", e) < e:
                        kept.append(line + "\n")
        files.atomic_write(self.path, lambda f: f.write("".join(kept)), mode="w")


def show_table(args, rows):
    """Print ``rows``' table now (before a long wait), once: `finish`'s table
    leaves them out."""
    print("\n" + report.format_table(rows) + "\n", flush=True)
    args.shown = set(getattr(args, "shown", ())) | {r["id"] for r in rows}


def plural(n, word):
    """"1 epoch", "30 epochs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def say_start(args, loading="MNIST"):
    """A chapter run's first line, before its first wait: the devices JAX
    computes on, and what is loaded (``loading``: "MNIST"; None: nothing).
    Starting JAX and reading MNIST take seconds to a minute on a busy machine,
    and a run should not start with a silence."""
    from nndl_jax import devices
    if is_main_process():
        what = f"; loading {loading} ..." if loading else ""
        print(f"{args.chapter}: computing on {devices.describe()}{what}", flush=True)


def numbers(values, fmt="{:.4g}"):
    """A list of numbers as text for a progress line, each rounded by ``fmt``."""
    import numpy as np
    return " ".join(fmt.format(v) for v in np.asarray(values).ravel().tolist())


# --- the command-line wrapper ---------------------------------------------------------------

_SESSION = {"runs": [], "recorded": [], "checkpoint": None, "resume": None, "prog": None}


def set_resume_command(command):
    """The command that Ctrl-C's note offers (``nndl-jax reproduce`` sets its own)."""
    _SESSION["resume"] = command


def resume_command():
    if _SESSION["resume"]:
        return _SESSION["resume"]
    if not _SESSION["runs"]:
        return None
    args = _SESSION["runs"][-1]
    argv = [a for a in args.argv if a not in ("--restart", "--resume")] + ["--resume"]
    return f"{command_name(args.chapter)} " + shlex.join(argv)


def interrupted_note(why="Ctrl-C"):
    """What Ctrl-C (or SIGTERM: ``why``) prints: the rows saved where, and the
    command that resumes. In a process other than 0 of a run over several,
    which saves nothing itself: that process 0 keeps what is saved."""
    from nndl_jax import distributed
    lines = ["", f"stopped ({why})."]
    place = distributed.started()
    if place is not None and place[0] != 0:
        lines.append(f"process {place[0]} of {place[1]}: process 0 records the finished rows and keeps the "
                     "unfinished row's checkpoint; its note says what is saved.")
    else:
        lines += _saved_lines()
    command = resume_command()
    if command:
        lines.append(f"resume with: {command}" + (" (and every other process with its own --process-id)"
                                                  if place is not None else ""))
    return "\n".join(lines)


def _saved_lines():
    """Where the finished rows and the unfinished row's last epoch are saved."""
    lines, by_out = [], {}
    for out, rid in _SESSION["recorded"]:
        by_out.setdefault(str(out), []).append(rid)
    for out, ids in by_out.items():
        lines.append(f"rows recorded in {Path(out) / store.RESULTS}: {', '.join(ids)}")
    if _SESSION["checkpoint"] is not None and Path(_SESSION["checkpoint"], CHECKPOINT_FILE).exists():
        lines.append(f"the unfinished row's last finished epoch is saved in {_SESSION['checkpoint']}")
    if not by_out and _SESSION["checkpoint"] is None:
        lines.append("no row was finished yet.")
    return lines


def checkpoint_refusal(e):
    """A refused checkpoint as lines: one per differing setting, then what to do."""
    differences = getattr(e, "differences", None) or []
    path = getattr(e, "path", None)
    if not differences:
        return f"{e}" + ("" if "--restart" in str(e) else "\n--restart discards the saved checkpoint")
    lines = [f"the saved checkpoint {path or ''} is of another run of this row:".replace("  ", " ")]
    for setting, saved, now in differences:
        option = _OPTIONS.get(str(setting).rsplit(".", 1)[-1])
        scalar = isinstance(saved, (str, int, float, bool))
        hint = f" (pass {option} {_short(saved)} to continue it)" if option and scalar else ""
        lines.append(f"  {setting}: saved {_short(saved)}, this run {_short(now)}{hint}")
    lines.append("Pass the saved settings back to continue it, or add --restart to discard it and train afresh.")
    return "\n".join(lines)


_OPTIONS = {"epochs": "--epochs", "train_size": "--train-size", "n_train": "--train-size", "seed": "--seed",
            "devices": "--devices", "svm_train_size": "--svm-train-size", "x64": "--x64", "quick": "--quick",
            "book_seed": "--book-seed"}


def _short(value, limit=60):
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return "(not set)"   # a setting one of the two runs does not have
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


_STOPS = {"SIGINT": ("Ctrl-C", 130), "SIGTERM": ("SIGTERM", 143)}   # signal: what the note says, exit status
_STOPPING = threading.Lock()


def _stop_now(why, status):
    """End this process at once (from any thread): tell the run's other
    processes, print the note, exit with ``status``. Only the first caller
    gets through; a second one waits for the exit."""
    _STOPPING.acquire()
    from nndl_jax import distributed
    distributed.tell_peers_stopping(why, status)
    print(interrupted_note(why), file=sys.stderr, flush=True)
    os._exit(status)


@contextlib.contextmanager
def _stop_at_once_with_a_note():
    """Ctrl-C (SIGINT) and SIGTERM (what Slurm sends before it kills a job)
    end the process at once, even in the middle of a compiled epoch (Python
    alone would only see it when the epoch returns), after printing which rows
    are saved where and the command that resumes (exit status 130, 143); in a
    run over several processes every process stops so. Nothing saved is lost:
    checkpoints and results are written atomically. The signal's byte reaches
    a helper thread through ``signal.set_wakeup_fd``, which needs no help
    from the busy main thread."""
    import signal
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
        yield
        return
    caught = {getattr(signal, name): stop for name, stop in _STOPS.items()}
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_handlers = {sig: signal.signal(sig, lambda *_: None) for sig in caught}
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                return
            if not got:
                return
            for sig, (why, status) in caught.items():
                if sig in got:
                    _stop_now(why, status)

    thread = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        os.close(w)
        thread.join(timeout=1)
        os.close(r)


def main_entry(main, argv=None, prog=None):
    """Run an experiment command's ``main(argv)`` for the command line; its exit
    status. Every refusal (bad arguments, a refused checkpoint, a bad results
    file, missing MNIST) prints its message without a Python traceback and
    gives a non-zero status; Ctrl-C stops at once and says what is saved and
    how to resume (130; SIGTERM likewise, 143). Used by every ``__main__`` block and by ``nndl-jax``;
    ``prog``: the command's name for its messages, usage line and resume
    command (default, given an ``argv``: ``nndl-jax``; a chapter adds its name)."""
    from nndl_jax.checkpoint import CheckpointError
    prog = Path(sys.argv[0]).stem if argv is None else (prog or "nndl-jax")
    _SESSION.update(runs=[], recorded=[], checkpoint=None, resume=None, prog=None if argv is None else prog)
    with _stop_at_once_with_a_note():
        try:
            result = main(argv)
        except KeyboardInterrupt:
            print(interrupted_note(), file=sys.stderr, flush=True)
            return 130
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                return e.code or 0
            print(e.code, file=sys.stderr, flush=True)
            return 1
        except CheckpointError as e:
            print(checkpoint_refusal(e), file=sys.stderr, flush=True)
            return 1
        except (store.ResultsError, data.MNISTError) as e:
            print(f"{_chapter_or(prog)}: {e}", file=sys.stderr, flush=True)
            return 1
    return result if isinstance(result, int) else 0


def _chapter_or(prog):
    return _SESSION["runs"][-1].chapter if _SESSION["runs"] else prog
