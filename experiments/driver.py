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
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments import parts, report, store
from nndl_jax import data

_RUNS = itertools.count(1)  # tells apart runs of one process (tests, nndl-jax reproduce)
CHECKPOINT_FILE = "state.npz"
OWNER_FILE = "owner.json"   # in a row's checkpoint folder: the pid that trains it (locked), its rows


class Refusal(SystemExit):
    """A command refused before or while it trains: the message says why and
    what to do. A SystemExit, so even uncaught it prints no traceback (exit 1)."""


# --- the command line ----------------------------------------------------------------------

def parse_args(chapter, description, argv=None, *, row_ids, default_seeds=3, quick_seeds=None,
               add_arguments=None, devices_per_core=False):
    """The command line every chapter takes; ``row_ids`` are the ids ``--only``
    accepts; ``add_arguments(parser)`` adds a chapter's own options;
    ``quick_seeds``: the runs per row of --quick unless --seeds is given.

    ``--plan N`` prints how ``--part I/N`` would share the chapter's jobs
    (``experiments.parts``) and exits, training nothing and starting no JAX
    device; ``--part I/N`` keeps this part's jobs (``args.share``).

    Before anything trains: an unknown row id, a bad number, an ``--out`` that
    cannot take this run's results (not writable, an unusable results.json,
    another chapter's or the other kind's rows) are argparse errors (exit 2);
    a checkpoint folder that cannot be written, or unfinished rows of an
    earlier run without --resume / --restart, or a row being trained by a live
    process, are a ``Refusal``. ``--devices`` is applied here, before JAX runs anything."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{chapter}", description=description,
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
    p.add_argument("--only", nargs="+", default=None, metavar="ROW",
                   help="run only these rows: " + " ".join(row_ids))
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
    p.add_argument("--share-device", type=positive_int, default=None, metavar="N",
                   help="this process is one of N sharing one accelerator (e.g. N --part runs started at "
                        "once): JAX's memory preallocation off and at most 0.9/N of its memory each, set "
                        "before JAX starts (devices.share_device)")
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
    unknown = [r for r in args.only or () if r not in row_ids]
    if unknown:
        p.error(f"unknown row id{'s' if len(unknown) > 1 else ''} {' '.join(unknown)} for --only; "
                f"the {chapter} rows are: {' '.join(row_ids)}")
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
    if args.share_device is not None:
        from nndl_jax import devices
        devices.share_device(args.share_device)
    start_processes(args, prog=chapter)
    use_devices(args.devices, per_core=devices_per_core, prog=chapter)
    if args.x64:  # before any array is made: every default float becomes float64
        import jax
        jax.config.update("jax_enable_x64", True)
    args.row_ids = list(row_ids)
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
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="process 0's address, the same for every process")
    g.add_argument("--num-processes", type=positive_int, default=None, metavar="N", help="how many processes")
    g.add_argument("--process-id", type=int, default=None, metavar="I", help="this process: 0 .. N-1")
    g.add_argument("--coordinator-timeout", type=positive_int, default=distributed.DEFAULT_TIMEOUT,
                   metavar="SECONDS", help="how long to wait for the other processes, and for a silent one "
                                           "(default %(default)s)")
    g.add_argument("--cluster", action="store_true",
                   help="let JAX detect the processes of a cluster it knows (Slurm, TPU pods, Open MPI)")


def start_processes(args, prog="nndl-jax"):
    """Join the run's other processes (before JAX starts) when asked to; the
    processes other than 0 then print nothing and write nothing (process 0 does)."""
    from nndl_jax import distributed
    try:
        if not (args.cluster or distributed.wanted(args.coordinator, args.num_processes, args.process_id)):
            return
        index, count = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                              timeout=args.coordinator_timeout, auto=args.cluster)
    except distributed.DistributedError as e:
        raise Refusal(f"{prog}: {e}") from None
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
    so on stderr; the numbers do not depend on the device count."""
    if n is None and not per_core:
        return None
    from nndl_jax import devices
    want = devices.cpu_count() if n is None else n
    devices.use_cpu_devices_unless_started(want)
    import jax
    got = len(jax.devices("cpu"))
    if n is not None and got != n:
        print(f"{prog}: --devices {n} cannot apply: JAX already runs with {got} CPU devices in this "
              f"process (the count is fixed once JAX has run anything); run the command in a fresh "
              f"process to use {n}. The results do not depend on it.", file=sys.stderr, flush=True)
    return got


def seeds(args):
    """The integer seeds of the runs of one row."""
    return store.seeds(args)


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
    the command's); ``seeds_apart``: each seed is trained and recorded on its
    own (row ``<id>@<seed>``), so ``--part`` may share out the seeds, handed
    to ``run`` as ``args.nets`` (indices into ``seeds``)."""

    id: str
    rows: list
    run: Callable
    settings: dict = field(default_factory=dict)
    seeds: list = None
    seeds_apart: bool = False


_CURRENT = {"job": None}


def run_jobs(args, jobs):
    """Run ``jobs`` in order, each: left to other parts when ``--part`` gives
    it (or some of its seeds) to them; skipped under ``--resume`` when every
    row of it is recorded in ``--out`` with the same settings; else run, its
    rows recorded at once (with ``seconds``, the job's time, unless a row
    times itself), its checkpoints removed. Returns the rows of this run (the
    recorded rows of skipped jobs included, so the table shows them)."""
    rows = []
    for job in filter(None, (parts.job_in_share(args, j) for j in jobs)):
        kept = recorded_job(args, job) if args.resume else None
        if kept is not None:
            print(f"\n{job.id}: already in {Path(args.out) / store.RESULTS} (finished "
                  f"{kept[0].get('finished', '?')}); --resume skips it", flush=True)
            rows += kept
            continue
        if args.resume:
            _note_other_groupings(args, job)
        _CURRENT["job"] = job
        t0 = time.time()
        try:
            out = job.run(args)
        except BaseException:
            _drop_unsaved(args, job.id)  # a job stopped before its first checkpoint leaves no folder
            raise
        finally:
            _CURRENT["job"] = None
        done, payload = out if isinstance(out, tuple) else (out, {})
        for r in done:
            for k, v in job.settings.items():
                r.setdefault(k, v)
            if r.get("run", args.run_id) == args.run_id:
                r.setdefault("seconds", time.time() - t0)
            if job.seeds is not None:
                r.setdefault("seeds", list(job.seeds))
        store.record(args, done, **payload)
        _SESSION["recorded"] += [(args.out, r["id"]) for r in done]
        remove_checkpoints(args, job.id)
        rows += done
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
    this command's quick / x64 flags and seeds, and the job's settings (a row
    recorded before a setting was stamped into rows matches on it: the setting
    was then the book's, or --quick's, and the quick flag is checked); else None."""
    if not job.rows:
        return None
    seeds_wanted = list(job.seeds) if job.seeds is not None else seeds(args)
    recorded = {r["id"]: r for r in store.recorded_rows(args)}
    kept = [recorded.get(rid) for rid in job.rows]
    if all(r is not None and r.get("quick") == bool(args.quick) and r.get("x64", False) == bool(args.x64)
           and r.get("seeds") == seeds_wanted and all(r.get(k, v) == v for k, v in job.settings.items())
           for r in kept):
        return kept
    return None


def finish(args, rows, **payload):
    """Record ``rows`` once more (unchanged), mark the run complete, print this
    run's table and return the merged results (every row in ``OUT/results.json``)."""
    out = store.record(args, rows, complete=True, **payload)
    print()
    print(report.format_table(rows))
    kept = len(out["rows"]) - len({r["id"] for r in rows})
    print(f"\n{args.chapter}: {report.duration(time.time() - args.started)} wall"
          f"{' (quick mode)' if args.quick else ''}")
    print(f"wrote {Path(args.out) / store.RESULTS}" + (f" ({kept} rows of earlier runs kept)" if kept else ""))
    if getattr(args, "part_record", None):
        print(f"part {args.part_record['part']} (plan {args.part_record['plan']}) done: gather the parts' "
              "--out folders and combine them with `nndl-jax merge DIR... --out DIR`")
    return out


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
    job = _CURRENT["job"]
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
        return (f"net {event.get('net')} diverged in epoch {event.get('epoch')} (η = {event.get('eta'):g}): "
                "its parameters are no longer finite; it stops training here (try a smaller η)")
    return ", ".join(f"{k} {v}" for k, v in event.items())


def progress(label, epochs, show, *, every=1):
    """The one ``on_epoch`` printer of every chapter: fit's events, and every
    ``every``-th epoch (and the first and last) a line with ``show(record)``
    (the chapter's rounded numbers), the time so far and the time left.

    The estimate counts only epochs run in this process after the first
    finished (that one includes compiling; a resumed run starts later): after
    the first epoch it is an upper bound from that epoch's time, after that the
    mean time of the epochs since."""
    state = {"start": time.time()}

    def on_epoch(e, record):
        now = time.time()
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
            print(f"  [{label}] epoch {e + 1}/{epochs}{': ' + shown if shown else ''}  ({timing})", flush=True)

    return on_epoch


def numbers(values, fmt="{:.4g}"):
    """A list of numbers as text for a progress line, each rounded by ``fmt``."""
    import numpy as np
    return " ".join(fmt.format(v) for v in np.asarray(values).ravel().tolist())


# --- the command-line wrapper ---------------------------------------------------------------

_SESSION = {"runs": [], "recorded": [], "checkpoint": None, "resume": None}


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
    return f"python -m experiments.{args.chapter} " + shlex.join(argv)


def interrupted_note():
    """What Ctrl-C prints: the rows saved where, and the command that resumes."""
    lines = ["", "stopped (Ctrl-C)."]
    by_out = {}
    for out, rid in _SESSION["recorded"]:
        by_out.setdefault(str(out), []).append(rid)
    for out, ids in by_out.items():
        lines.append(f"rows recorded in {Path(out) / store.RESULTS}: {', '.join(ids)}")
    if _SESSION["checkpoint"] is not None and Path(_SESSION["checkpoint"], CHECKPOINT_FILE).exists():
        lines.append(f"the unfinished row's last finished epoch is saved in {_SESSION['checkpoint']}")
    if not by_out and _SESSION["checkpoint"] is None:
        lines.append("no row was finished yet.")
    command = resume_command()
    if command:
        lines.append(f"resume with: {command}")
    return "\n".join(lines)


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
            "devices": "--devices", "svm_train_size": "--svm-train-size", "x64": "--x64", "quick": "--quick"}


def _short(value, limit=60):
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return "(not set)"   # a setting one of the two runs does not have
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


@contextlib.contextmanager
def _stop_at_once_with_a_note():
    """Ctrl-C (SIGINT) ends the process at once, even in the middle of a
    compiled epoch (Python alone would only see it when the epoch returns),
    after printing which rows are saved where and the command that resumes
    (exit status 130). Nothing saved is lost: checkpoints and results are
    written atomically. The signal's byte reaches a helper thread through
    ``signal.set_wakeup_fd``, which needs no help from the busy main thread."""
    import signal
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_handler = signal.signal(signal.SIGINT, lambda *_: None)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                return
            if not got:
                return
            if signal.SIGINT in got:
                print(interrupted_note(), file=sys.stderr, flush=True)
                os._exit(130)

    thread = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        os.close(w)
        thread.join(timeout=1)
        os.close(r)


def main_entry(main, argv=None):
    """Run an experiment command's ``main(argv)`` for the command line; its exit
    status. Every refusal (bad arguments, a refused checkpoint, a bad results
    file, missing MNIST) prints its message without a Python traceback and
    gives a non-zero status; Ctrl-C stops at once and says what is saved and
    how to resume (130). Used by every ``__main__`` block and by ``nndl-jax``."""
    from nndl_jax.checkpoint import CheckpointError
    prog = Path(sys.argv[0]).stem if argv is None else "nndl-jax"
    _SESSION.update(runs=[], recorded=[], checkpoint=None, resume=None)
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
