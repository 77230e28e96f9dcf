"""The book's work spread over N machines: ``--part I/N`` and ``--plan N``.

A *unit* of work is one job of a chapter's row driver (the rows trained
together as one program), or, for a job whose seeds train apart (chapter 6's
ensemble: each dropout net is recorded as its own row ``6.11@<seed>``), one
seed of it. ``plan`` gives the units to N parts by their expected seconds,
longest first, each onto the part with the least work so far (LPT), so the N
parts finish close together. Ties go by the units' order in the book and the
lowest part number: the same arguments give the same plan in every process,
on every machine.

Expected seconds come from the results recorded in the checkout's
``reproduced/chapN/results.json`` as committed (``git show HEAD:...``, so a
part writing into ``reproduced/`` never changes the plan of a part started
later; the files themselves where there is no git): a job's rows record
``seconds``; rows that do not are given an equal share of what remains of
their run's wall time; a row recorded with fewer seeds than planned is scaled
by the number of nets. A job with no record, and every job of a --quick run,
gets ``ESTIMATE_SECONDS``.

    python -m experiments.parts --plan 16 --all     # the whole book's wall time for N = 1, 2, 4, 8, 16
"""
import argparse
import hashlib
import json
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ESTIMATE_SECONDS = 60.0     # a job with no recorded time
QUICK_SECONDS = 10.0        # every job of a --quick run


@dataclass(frozen=True)
class Unit:
    """One job (or one seed of a job whose seeds train apart) of a chapter."""

    chapter: str
    job: str            # the driver's job id; "6.11@12345678" for one seed of the ensemble
    rows: tuple         # the table rows it records
    seconds: float      # expected wall time
    recorded: bool      # seconds from a recorded run (else an estimate)
    order: int          # its place in the book (the tie-break)
    composes: tuple = ()  # one seed of a job: the job's own rows, made once every seed is recorded

    @property
    def key(self):
        return f"{self.chapter}:{self.job}"


def part_arg(text):
    """An argparse type: "I/N" with 1 <= I <= N, as (I, N)."""
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the part as I/N, e.g. 2/4") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"{text}: the part I/N needs 1 <= I <= N")
    return i, n


# --- expected seconds ----------------------------------------------------------------------

def recorded_results(chapter, root=REPO):
    """The committed ``reproduced/<chapter>/results.json`` of the checkout at
    ``root`` (git HEAD), else the file itself, else {}."""
    rel = f"reproduced/{chapter}/results.json"
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"HEAD:{rel}"], capture_output=True,
                              text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        path = Path(root) / rel
        text = path.read_text() if path.is_file() else "{}"
    try:
        results = json.loads(text)
    except ValueError:
        return {}
    return results if isinstance(results, dict) else {}


def _seconds(row):
    s = row.get("seconds")
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 else None


def job_seconds(jobs, results):
    """{job id: (seconds, nets it was timed with)} for the ``jobs`` whose rows
    ``results`` records: the longest ``seconds`` of its rows (the rows of one
    job record the job's time); a job whose rows record none shares equally
    what its run's wall time leaves after the timed jobs of that run."""
    rows = {r.get("id"): r for r in results.get("rows", []) if isinstance(r, dict)}
    walls = {run.get("id"): run.get("wall_seconds", 0.0) for run in results.get("runs", []) if isinstance(run, dict)}
    timed, untimed, spent = {}, {}, {}
    for job in jobs:
        mine = [rows[i] for i in job.rows if i in rows]
        if not mine:
            continue
        nets = max(len(r.get("seeds") or [None]) for r in mine)
        seconds = [s for s in map(_seconds, mine) if s is not None]
        run = mine[0].get("run")
        if seconds:
            timed[job.id] = (max(seconds), nets)
            spent[run] = spent.get(run, 0.0) + max(seconds)
        elif run in walls:
            untimed.setdefault(run, []).append((job.id, nets))
    for run, shared in untimed.items():
        each = max(float(walls[run]) - spent.get(run, 0.0), 0.0) / len(shared)
        timed.update({job_id: (each, nets) for job_id, nets in shared})
    return timed


def seed_seconds(job, results):
    """{seed: seconds} for the seeds of a job whose seeds train apart, from
    their rows ``<job>@<seed>`` (a row trained beside others: its share)."""
    rows = {r.get("id"): r for r in results.get("rows", []) if isinstance(r, dict)}
    out = {}
    for seed in job.seeds:
        r = rows.get(f"{job.id}@{seed}")
        if r is not None and _seconds(r) is not None:
            out[seed] = _seconds(r) / max(len(r.get("trained_with") or [seed]), 1)
    return out


# --- units and the plan ----------------------------------------------------------------------

def chapter_units(chapter, args, all_jobs, jobs, results, start=0):
    """The units of ``jobs`` (the chapter's jobs asked for), timed from
    ``results`` through ``all_jobs`` (every job of the chapter, so a run's
    wall time is shared as it was spent)."""
    quick = bool(getattr(args, "quick", False))
    timed = {} if quick else job_seconds(all_jobs, results)
    units = []
    for job in jobs:
        seeds = list(job.seeds) if job.seeds is not None else [args.seed + k for k in range(args.seeds)]
        if job.seeds_apart:
            nets = getattr(args, "nets", None)
            mine = [seeds[i] for i in sorted(set(nets)) if 0 <= i < len(seeds)] if nets else seeds
            each = {} if quick else seed_seconds(job, results)
            mean = sum(each.values()) / len(each) if each else None
            for s in mine:
                seconds = QUICK_SECONDS if quick else each.get(s, mean)
                units.append(Unit(chapter, f"{job.id}@{s}", (f"{job.id}@{s}",),
                                  ESTIMATE_SECONDS if seconds is None else seconds, seconds is not None and not quick,
                                  start + len(units), tuple(job.rows)))
            continue
        if job.id in timed:
            seconds, timed_nets = timed[job.id]
            seconds *= len(seeds) / max(timed_nets, 1)
        else:
            seconds = QUICK_SECONDS if quick else ESTIMATE_SECONDS
        units.append(Unit(chapter, job.id, tuple(job.rows), seconds, job.id in timed, start + len(units)))
    return units


def plan(units, n):
    """The units given to ``n`` parts: longest first, each onto the part with
    the least expected seconds so far (ties: the lower part). A list of n
    lists of units, each in the book's order."""
    parts, loads = [[] for _ in range(n)], [0.0] * n
    for u in sorted(units, key=lambda u: (-u.seconds, u.order)):
        i = min(range(n), key=lambda k: (loads[k], k))
        parts[i].append(u)
        loads[i] += u.seconds
    return [sorted(p, key=lambda u: u.order) for p in parts]


def digest(parts):
    """A short fingerprint of a plan (which unit in which part), recorded by every part."""
    text = json.dumps([[u.key for u in p] for p in parts])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def expected_seconds(part):
    return sum(u.seconds for u in part)


def plan_text(parts, *, what):
    """The plan as lines: each part's expected wall time and its units."""
    from experiments.report import duration
    units = [u for p in parts for u in p]
    lines = [f"{what}: {len(units)} jobs over {len(parts)} parts, longest first onto the least-loaded part "
             f"(expected times from reproduced/*/results.json; ~ an estimate). Plan {digest(parts)}."]
    for i, p in enumerate(parts, 1):
        shown = ", ".join(f"{u.chapter} {u.job} ({'~' * (not u.recorded)}{duration(u.seconds)})" for u in p)
        lines.append(f"part {i}/{len(parts)}: {duration(expected_seconds(p))} — {shown or 'nothing'}")
    if units:
        longest = max(units, key=lambda u: (u.seconds, -u.order))
        wall = max(expected_seconds(p) for p in parts)
        lines.append(f"expected wall time {duration(wall)} (the longest part); the longest job, "
                     f"{longest.chapter} {longest.job} ({duration(longest.seconds)}), bounds it for any N")
    return "\n".join(lines)


# --- what a chapter's command runs -----------------------------------------------------------

def chapter_plan(chapter, args, planned_jobs, n):
    """The plan of one chapter's command (its jobs asked for) over ``n`` parts."""
    units = _units(chapter, args, planned_jobs, 0)
    return plan(units, n)


def _units(chapter, args, planned_jobs, start):
    """A chapter's units, listed as a fresh run lists them (no --resume: a
    resumed run's saved groups must not change the plan)."""
    fresh = argparse.Namespace(**{**vars(args), "resume": False})
    every = planned_jobs(argparse.Namespace(**{**vars(fresh), "only": None}))
    return chapter_units(chapter, fresh, every, planned_jobs(fresh), recorded_results(chapter), start=start)


def book_plan(chapter_args, planned, n):
    """The plan of several chapters together over ``n`` parts: ``chapter_args``
    {chapter: its parsed command line}, ``planned`` {chapter: its planned_jobs}."""
    units = []
    for chapter, args in chapter_args.items():
        units += _units(chapter, args, planned[chapter], len(units))
    return plan(units, n)


def part_record(parts, i, chapter):
    """What a part records in its run entry: which part, the plan's
    fingerprint, and every unit the plan gives this chapter with its rows (so
    ``nndl-jax merge`` can say which rows are missing) and its part."""
    mine = [(k, u) for k, p in enumerate(parts, 1) for u in p if u.chapter == chapter]
    return {"part": f"{i}/{len(parts)}", "plan": digest(parts),
            "planned": {u.job: {"rows": list(u.rows), "part": k} for k, u in mine},
            "composed": {u.job.split("@")[0]: list(u.composes) for _, u in mine if u.composes}}


def share(parts, i, chapter):
    """The job ids of ``chapter`` that part ``i`` (1-based) runs."""
    return {u.job for u in parts[i - 1] if u.chapter == chapter}


def job_in_share(args, job):
    """The job as this process runs it: the job itself when no --part is
    given or the part holds it; for a job whose seeds train apart, a job of
    just the part's seeds (handed to it as ``--nets``, indices into its
    seeds); None when the part holds none of it."""
    held = getattr(args, "share", None)
    if held is None or job.id in held:
        return job
    if not job.seeds_apart:
        return None
    mine = [s for s in job.seeds if f"{job.id}@{s}" in held]
    if not mine:
        return None
    nets = [list(job.seeds).index(s) for s in mine]

    def run(a):
        return job.run(argparse.Namespace(**{**vars(a), "nets": nets}))

    # its own rows skip themselves under --resume (the job records each seed as its row)
    return replace(job, id=f"{job.id}@" + "-".join(map(str, mine)), rows=[], run=run, seeds=mine, seeds_apart=False)


# --- the code a part ran ---------------------------------------------------------------------

def code_version(root=REPO):
    """{"version": the package's, "commit": git's ``describe --always --dirty``
    of the checkout or None}: recorded by every run, compared by ``merge``."""
    from nndl_jax import __version__
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                                capture_output=True, text=True, timeout=30, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": __version__, "commit": commit}


# --- the book's wall time for several N ------------------------------------------------------

def book_table(ns, quick=False, seeds=(None, 1)):
    """Markdown lines: the whole book's expected wall time with --part I/N
    for each N in ``ns`` (one column per ``--seeds`` in ``seeds``, None: each
    chapter's default), the longest part's jobs, from the recorded seconds."""
    from experiments import driver, reproduce
    from experiments.report import duration

    def plan_for(n, k):
        argv = ["--quick"] * quick + (["--seeds", str(k)] if k is not None else [])
        chapters = {f"chap{c}": driver.chapter_args(f"chap{c}", argv) for c in reproduce.CHAPTERS}
        return book_plan(chapters, {c: driver.planned_jobs_of(c) for c in chapters}, n)

    def jobs_text(part, shown=3):
        top = sorted(part, key=lambda u: (-u.seconds, u.order))
        more = len(top) - shown
        return ", ".join(f"{u.chapter} {u.job} ({duration(u.seconds)})" for u in top[:shown]) + (
            f" and {more} shorter" if more > 0 else "")

    names = ["default seeds" if k is None else f"--seeds {k}" for k in seeds]
    lines = ["| N | " + " | ".join(f"wall time, {name}" for name in names) + f" | longest part ({names[0]}) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for n in ns:
        plans = [plan_for(n, k) for k in seeds]
        walls = [duration(max(expected_seconds(p) for p in plan)) for plan in plans]
        lines.append(f"| {n} | " + " | ".join(walls) + f" | {jobs_text(max(plans[0], key=expected_seconds))} |")
    for k, name in zip(seeds, names):
        units = [u for p in plan_for(1, k) for u in p]
        top = sorted(units, key=lambda u: (-u.seconds, u.order))[:8]
        lines += ["", f"Longest jobs ({name}): " + ", ".join(
            f"{u.chapter} {u.job} {duration(u.seconds)}" + ("" if u.recorded else " (estimate)") for u in top)]
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.parts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=int, default=16, metavar="N", help="the largest N (default %(default)s)")
    p.add_argument("--all", action="store_true", help="the table for N = 1, 2, 4, ... up to --plan")
    p.add_argument("--quick", action="store_true", help="plan the --quick book")
    args = p.parse_args(argv)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.plan] if args.all else [args.plan]
    print("\n".join(book_table(ns, quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
