"""How every chapter runs its rows: the command line and the row driver.
The rest of the runner has its own modules: ``context`` (the run's context,
``RunContext``: what ``parse_args`` returns, immutable, handed to every job as
``args``), ``session`` (processes, devices, Ctrl-C, ``main_entry``, and the
``Session`` that holds what a command changes while it runs), ``checkpoints``
(the folders of unfinished rows and their locks) and ``progress`` (the
progress lines and the metrics log).

A chapter module is a table of the book's rows at the top, then ``jobs(args)``
(what to train, as ``Job``s) and ``main``:

    def main(argv=None, book_plan=None, run_session=None):
        args = driver.parse_args("chap1", __doc__, argv, row_ids=[r["id"] for r in ROWS],
                                 book_plan=book_plan, run_session=run_session)
        return driver.finish(args, driver.run_jobs(args, jobs(args)))

    if __name__ == "__main__":
        raise SystemExit(session.main_entry(main))

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
import importlib
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments import checkpoints, context, parts, report, session, store


def parse_args(chapter, description, argv=None, *, row_ids, default_seeds=3, quick_seeds=None,
               add_arguments=None, devices_per_core=False, prog=None, plan_only=False, book_plan=None,
               run_session=None, derive=None):
    """The command line every chapter takes, as the run's context
    (``context.RunContext``: immutable, handed to every job); ``row_ids``: the
    chapter's rows, as a dict id -> title (or a list of ids), listed by
    ``--help`` in the book's order; ``--only`` accepts them and every id of the
    results table they make (`row_of`: ``3.10a``, ``3.14@100``), kept in
    ``args.asked`` (``args.only`` holds their rows; `asked_jobs` keeps the jobs
    they need); ``add_arguments(parser)`` adds a chapter's own options (read
    as ``args.epochs``, kept in ``args.options``); ``derive(args)``: the
    context as the chapter's options imply it (``--book-seed`` implies
    ``--x64``), before anything starts; ``quick_seeds``: the runs per row of
    --quick unless --seeds is given; ``prog``: the command as the user typed it
    (default: ``nndl-jax chapN`` under `session.main_entry` with an argv, as the
    ``nndl-jax`` command runs it, else ``python -m experiments.chapN``);
    ``run_session``: the command's ``session.Session`` (default: a new one).

    ``--plan N`` prints how ``--part I/N`` would share the chapter's jobs
    (``experiments.parts``) and exits, training nothing and starting no JAX
    device; ``--part I/N`` keeps this part's jobs (``args.share``).

    Before anything trains: an unknown row id, a bad number, an ``--out`` that
    cannot take this run's results (not writable, an unusable results.json,
    another chapter's or the other kind's rows) are argparse errors (exit 2);
    a checkpoint folder that cannot be written, or unfinished rows of an
    earlier run without --resume / --restart, or a row being trained by a live
    process, are a ``session.Refusal``. ``--devices`` is applied here, before JAX runs anything.

    ``plan_only``: the command line parsed and its row ids checked, nothing
    else (no --plan printed, nothing on disk checked, nothing started): what
    the planner reads of a chapter (`chapter_args`). ``book_plan``: the plan
    of ``nndl-jax reproduce --part`` that this chapter's share comes from
    (None: the chapter plans its own jobs)."""
    run_session = run_session or session.Session()
    titles = row_ids if isinstance(row_ids, dict) else dict.fromkeys(row_ids, "")
    p = parser(chapter, description, titles, default_seeds=default_seeds, add_arguments=add_arguments,
               devices_per_core=devices_per_core, prog=prog or run_session.command_name(chapter))
    given = list(sys.argv[1:] if argv is None else argv)
    parsed = p.parse_args(argv)
    args = context.from_namespace(parsed, **checked_ids(p, chapter, list(titles), parsed, given, quick_seeds),
                                  prog=p.prog, argv=given, session=run_session)
    args = derive(args) if derive is not None else args
    if plan_only:
        return args
    if args.plan is not None:
        print(parts.plan_text(parts.chapter_plan(chapter, args, planned_jobs_of(chapter), args.plan),
                              what=f"{chapter} --plan {args.plan}"))
        raise SystemExit(0)
    args = with_share(args, book_plan).replace(code=parts.code_version())
    problem = store.out_problem(args.out, args.quick, chapter)
    if problem:
        p.error(problem)
    return start_run(args, devices_per_core)


def parser(chapter, description, titles, *, default_seeds=3, add_arguments=None, devices_per_core=False,
           prog=None):
    """The argparse parser of chapter ``chapter``'s command (``titles``: its rows, id -> title)."""
    p = argparse.ArgumentParser(prog=prog or f"python -m experiments.{chapter}", description=description,
                                epilog=rows_help(chapter, titles),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, chapter, default_seeds)
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
    add_part_arguments(p)
    if add_arguments is not None:
        add_arguments(p)
    return p


def add_run_arguments(p, chapter, default_seeds):
    """What to run and where: --quick, --out, --seeds, --seed, --only, --data-dir."""
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


def add_part_arguments(p):
    """--part I/N and --plan N (``experiments.parts``)."""
    p.add_argument("--part", type=parts.part_arg, default=None, metavar="I/N",
                   help="run part I of N: the jobs (rows trained together; the ensemble's nets one by one) "
                        "shared out over N parts by their expected time (probed, else recorded), longest first, "
                        "so the parts finish close together; the same in every process. Give each part its own "
                        "--out and combine them with `nndl-jax merge`")
    p.add_argument("--plan", type=positive_int, default=None, metavar="N",
                   help="print which jobs each of N parts would run and its expected time, then exit")


def checked_ids(p, chapter, row_ids, parsed, given, quick_seeds):
    """What the context takes from the command line ``given`` (parsed by ``p``
    into ``parsed``) beyond its options: ``seeds`` (--quick's unless --seeds is
    given), checked; ``asked`` (``--only``'s ids, checked) and ``only`` (their
    rows); ``row_ids`` and ``chapter``. Bad ones are ``p.error``s."""
    seeds = parsed.seeds
    if quick_seeds is not None and parsed.quick and not any(a.split("=")[0] == "--seeds" for a in given):
        seeds = quick_seeds
    if not 0 <= parsed.seed or parsed.seed + seeds > 2 ** 32:
        p.error(f"--seed {parsed.seed} with --seeds {seeds}: seeds must lie in 0 .. 2**32 - 1")
    only = parsed.only
    if only is not None:
        unknown = [r for r in only if row_of(r, row_ids) is None]
        if unknown:
            p.error(f"unknown row id{'s' if len(unknown) > 1 else ''} {' '.join(unknown)} for --only; "
                    f"the {chapter} rows are: {' '.join(sorted(row_ids, key=store.row_sort_key))} "
                    "(or an id of the results a row makes, such as chapter 3's 3.10a or 3.14@100; "
                    "--help lists the rows with their titles)")
        only = list(dict.fromkeys(row_of(r, row_ids) for r in only))
    return dict(seeds=seeds, asked=parsed.only, only=only, row_ids=list(row_ids), chapter=chapter)


def with_share(args, book_plan=None):
    """``args`` with ``share`` (the jobs and units of this part, ``--part I/N``)
    and ``part_record`` (what the results record of the part), from
    ``book_plan`` (``nndl-jax reproduce --part``) or the chapter's own plan; None without --part."""
    if args.part is None:
        return args
    i, n = args.part
    plan = book_plan or parts.chapter_plan(args.chapter, args, planned_jobs_of(args.chapter), n)
    return args.replace(share=frozenset(parts.share(plan, i, args.chapter)),
                        part_record=parts.part_record(plan, i, args.chapter))


def run_id():
    """A new run's id: "<start time> pid <pid> #<8 random hex>". The time and
    pid tell runs apart across processes and machines, the random part runs of
    one process (tests, ``nndl-jax reproduce``) in the same second, with no
    counter kept between them; ``report`` reads the start time back from it."""
    return f"{store.now()} pid {os.getpid()} #{secrets.token_hex(4)}"


def start_run(args, devices_per_core=False):
    """Start the run of ``args``: join its other processes, choose its devices
    and precision (before JAX makes any array), name it, and, in process 0,
    check its checkpoint folder and the unfinished rows of earlier runs. The
    context of the started run (``started``, ``run_id``), noted in its session."""
    if args.share_device is not None:
        from nndl_jax import devices
        devices.share_device(args.share_device)
    session.start_processes(args, prog=args.chapter)
    session.use_devices(args.devices, per_core=devices_per_core, prog=args.chapter)
    if args.x64:  # before any array is made: every default float becomes float64
        import jax
        jax.config.update("jax_enable_x64", True)
    args = args.replace(started=time.time(), run_id=run_id())
    if session.is_main_process():  # the other processes of a multi-process run follow process 0's decisions
        checkpoints.probe_checkpoint_folder(args)
        checkpoints.check_unfinished(args)
    args.session.note_run(args)
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


def positive_int(text):
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def seeds(args):
    """The integer seeds of the runs of one row: the command's, or those the
    row driver hands a job of units (a part's share, the seeds not yet recorded)."""
    return list(args.unit_seeds) if args.unit_seeds is not None else store.seeds(args)


def chapter_args(chapter, argv):
    """The command line ``argv`` of chapter ``chapter`` parsed as its ``main``
    parses it (its ``command_line``), with nothing checked on disk, trained or
    started: for planning."""
    module = importlib.import_module(f"experiments.{chapter}")
    return module.command_line(list(argv), plan_only=True)


def planned_jobs_of(chapter):
    """Chapter ``chapter``'s ``planned_jobs(args)``: its jobs asked for, listed
    without data (their ``run`` is never called)."""
    return importlib.import_module(f"experiments.{chapter}").planned_jobs


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
            raise session.Refusal(f"{args.chapter}: --only {a}: row {row} makes {' '.join(made)} here, not {a}")
        kept += [j for j in of_row if j not in kept]
    return [j for j in jobs if j in kept]


def wanted(args, row_id):
    """Whether the row ``row_id`` was asked for (``--only``)."""
    return args.only is None or row_id in args.only


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
    checkpoints.remove_checkpoints(args, job.id)
    return done


def _run(args, job, checkpoint_id, unit_seeds=None):
    """``job.run`` on the job's view of ``args`` (``args.job``, read by
    `checkpoints.row_checkpoint`, its checkpoint and seeds): (its records, its
    payload with what it added through `add_payload`, its seconds). A job that
    stops on an error gives up its checkpoint folders' locks (it trains them no more)."""
    t0 = time.time()
    given = args.replace(job=job, checkpoint_id=checkpoint_id,
                         unit_seeds=None if unit_seeds is None else tuple(unit_seeds))
    args.session.take_payload()   # nothing left over from a job that stopped
    try:
        out = job.run(given)
    except BaseException:
        checkpoints.drop_unsaved(args, checkpoint_id)  # a job stopped before its first checkpoint leaves no folder
        args.session.release_locks()
        raise
    done, payload = out if isinstance(out, tuple) else (out, {})
    return done, session.merged_payload(payload, args.session.take_payload()), time.time() - t0


def add_payload(args, payload):
    """Add ``payload`` (e.g. ``store.divergence(...)``) to what the running job
    records with its rows: a job's sub-runs return nothing to the driver but
    what they measure, and only the driver writes results."""
    args.session.add_payload(payload)


def _record(args, rows, payload, units=()):
    """Every write of a chapter run's results goes through here (``store.record``)."""
    store.record(args, rows, units=units, **payload)
    args.session.note_recorded(args.out, [r["id"] for r in rows])


def held_seeds(args, job):
    """The seeds of ``job`` this command trains: the part's share (``--part``),
    then ``--nets`` (indices into the seeds) for a job whose seeds train apart."""
    every = job_seeds(args, job)
    nets = getattr(args, "nets", None) if job.seeds_apart else None
    if nets:
        bad = [i for i in nets if not 0 <= i < len(every)]
        if bad:
            raise session.Refusal(f"{args.chapter}: --nets {' '.join(map(str, bad))}: {job.id} has nets 0 to "
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
        checkpoints.remove_checkpoints(args, ckpt)
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
    mine = {job.id} | {j for j in checkpoints.saved_checkpoints(args) if j.startswith(job.id + "@")}
    for other, rows in checkpoints.saved_checkpoints(args).items():
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
    run's table (less the rows `progress.show_table` printed already) and return the
    merged results (every row in ``OUT/results.json``)."""
    out = store.record(args, rows, complete=True, **payload)
    unshown = [r for r in rows if r["id"] not in args.session.shown.get(args.run_id, ())]
    if unshown or not rows:
        print()
        print(report.format_table(unshown))
    kept = len(out["rows"]) - len({r["id"] for r in rows})
    print(f"\n{args.chapter}: {report.duration(time.time() - args.started)} wall"
          f"{' (quick mode)' if args.quick else ''}")
    print(f"wrote {Path(args.out) / store.RESULTS}" + (f" ({kept} rows of earlier runs kept)" if kept else ""))
    if args.part_record:
        print(merge_hint(args))
    return out


def merge_hint(args):
    """What a part says when it is done: the whole merge command, with this
    part's folder in its place and the other parts' folders named by their part."""
    i, n = (int(t) for t in args.part_record["part"].split("/"))
    folders = [shlex.quote(str(args.out)) if k == i else f"PART{k}_OUT" for k in range(1, n + 1)]
    return (f"part {i}/{n} (plan {args.part_record['plan']}) done. Once every part is, with PARTk_OUT the --out "
            f"of part k/{n}: nndl-jax merge {' '.join(folders)} --out merged")
