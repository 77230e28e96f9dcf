"""The book's work spread over N machines: ``--part I/N`` and ``--plan N``.

A *unit* of work is one seed of a job of a chapter's row driver (``<job>@<seed>``:
``6.8a@12345679``); the units of one job that run in one process train together
as one program. ``plan`` first keeps each job whole (its seeds side by side),
and gives a job's seeds out one by one when the job alone is longer than the
N parts' fair share (chapter 6's ensemble always goes net by net); then it
gives the units to N parts by their expected seconds,
longest first, each onto the part with the least work so far (LPT), so the N
parts finish close together. Ties go by the units' order in the book and the
lowest part number: the same arguments give the same plan in every process,
on every machine.

Expected seconds come, for each job, from the first of:

1. the time probe, ``benchmarks/probe_seconds.json`` (``experiments.probe``:
   each job run alone for a few epochs, scaled to the book's epochs and data,
   on the machine the file names), read as it is in the checkout (no part
   writes it; a machine just probed plans with its own figures at once: give
   every part the same file); a file that cannot be read as one is refused
   (``ProbeFileError``), a missing file is skipped;
2. the results recorded in the checkout's ``reproduced/chapN/results.json`` as
   committed (``git show HEAD:...``, so a part writing into ``reproduced/``
   never changes the plan of a part started later; the files themselves where
   there is no git): a job's rows record ``seconds``; rows that do not are
   given an equal share of what remains of their run's wall time. These runs
   trained several jobs side by side, so they overstate a job's time alone;
3. ``ESTIMATE_SECONDS`` (shown with "~").

A figure timed with fewer seeds than planned is scaled by the number of nets.
Every job of a --quick run gets ``QUICK_SECONDS``.

    python -m experiments.parts --plan 16 --all     # the whole book's wall time for N = 1, 2, 4, 8, 16

A job's seeds planned apart train alone, not side by side: each part loads
the data and compiles the net on its own, and the nets lose the side-by-side
speed-up (two conv nets on a 2-core CPU run at 1.3-1.6x the throughput of
one, benchmarks/README.md), so a seed's planned time, its share of the
side-by-side run, can be short by that factor; ``plan_text`` says which
rows are held apart where.
"""
import argparse
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE_FILE = REPO / "benchmarks" / "probe_seconds.json"   # experiments.probe's: jobs timed alone
ESTIMATE_SECONDS = 60.0     # a job with neither a probed nor a recorded time
QUICK_SECONDS = 10.0        # every job of a --quick run


@dataclass(frozen=True)
class Unit:
    """Work planned as one piece: a job (its seeds side by side) or one seed of it."""

    chapter: str
    job: str            # the driver's job id; "6.8a@12345679" for one seed of a job
    rows: tuple         # the table rows it records (one seed: the unit records "<row>@<seed>")
    seconds: float      # expected wall time
    recorded: bool      # seconds measured (probed or recorded), else an estimate
    order: float        # its place in the book (the tie-break)
    composes: tuple = ()  # one seed of a job: the job's own rows, composed once every seed is recorded
    seeds: tuple = ()     # the seeds it trains
    splits: bool = False  # a whole job whose seeds may be planned apart
    unit_rows: tuple = ()  # a whole job: the rows of its unit records, when not its table rows (3.10 for 3.10a-d)
    source: str = None    # where ``seconds`` come from: "probe", "recorded" or "estimate" (None: by ``recorded``)

    @property
    def key(self):
        return f"{self.chapter}:{self.job}"

    @property
    def how(self):
        """"probe", "recorded" or "estimate"."""
        return self.source or ("recorded" if self.recorded else "estimate")

    @property
    def base(self):
        """The job this unit belongs to."""
        return self.job.split("@")[0]


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

class ProbeFileError(SystemExit):
    """A probe file that cannot be read as one: the message names it and what to do."""


def read_probe(path=None):
    """The probe file (``PROBE_FILE``; ``experiments.probe`` writes it) as a
    dict, checked: its ``jobs`` {chapter: {job id: {"expected_seconds": s >= 0,
    "seeds": n >= 1, ...}}} and ``machine``. None when there is no file; a file
    that is not one (bad JSON, a wrong shape, a bad number) is a ``ProbeFileError``."""
    path = Path(PROBE_FILE if path is None else path)
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        problem = _probe_problem(found)
    except (OSError, ValueError) as e:
        problem = f"cannot be read as JSON ({e})"
    if problem:
        raise ProbeFileError(f"{path}: not a probe file: {problem}. Probe again (python -m experiments.probe), "
                             f"or remove it to plan from the recorded seconds")
    return found


def _probe_problem(found):
    if not isinstance(found, dict) or not isinstance(found.get("jobs"), dict):
        return 'no "jobs"'
    for chapter, jobs in found["jobs"].items():
        if not isinstance(jobs, dict):
            return f"jobs of {chapter} are not a mapping"
        for job, entry in jobs.items():
            seconds = entry.get("expected_seconds") if isinstance(entry, dict) else None
            seeds = entry.get("seeds") if isinstance(entry, dict) else None
            if (not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0
                    or not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
                return f"{chapter} {job}: expected_seconds must be a number >= 0 and seeds a whole number >= 1"
    return None


def probed_seconds(chapter, path=None):
    """{job id: (seconds, nets it was timed with)} of ``chapter`` in the probe file ({} without one)."""
    found = read_probe(path)
    jobs = (found or {}).get("jobs", {}).get(chapter, {})
    return {job: (float(e["expected_seconds"]), int(e["seeds"])) for job, e in jobs.items()}


def shown_path(path):
    """``path`` relative to the checkout when it lies in it ("benchmarks/probe_seconds.json")."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def probe_machine(path=None):
    """"AMD EPYC, 2 cores, jax 0.10.2, 2026-12-07 10:00 UTC": where the probe file was measured."""
    m = (read_probe(path) or {}).get("machine") or {}
    return ", ".join(str(t) for t in (m.get("cpu"), m.get("cores") and f"{m['cores']} cores",
                                      m.get("jax") and f"jax {m['jax']}", m.get("date")) if t) or "an unnamed machine"


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

def _job_seeds(args, job):
    return list(job.seeds) if job.seeds is not None else [args.seed + k for k in range(args.seeds)]


def _seed_units(chapter, job, seeds, seconds, recorded, order, source=None):
    """One unit per seed of ``job``, each ``seconds[s]`` long."""
    return [Unit(chapter, f"{job.id}@{s}", tuple(f"{r}@{s}" for r in (job.unit_rows or job.rows)), seconds[s],
                 recorded, order + k / (len(seeds) + 1), tuple(job.rows), (s,), source=source)
            for k, s in enumerate(seeds)]


def chapter_units(chapter, args, all_jobs, jobs, results, start=0, probed=None):
    """The units of ``jobs`` (the chapter's jobs asked for), timed from
    ``probed`` ({job id: (seconds, nets)}: the probe file's, `probed_seconds`)
    where it has the job, else from ``results`` through ``all_jobs`` (every
    job of the chapter, so a run's wall time is shared as it was spent), else
    estimated: a job whose seeds train apart (the ensemble) seed by seed,
    every other job whole (``split`` gives out the seeds of those that are too
    long for N parts)."""
    quick = bool(getattr(args, "quick", False))
    timed = {} if quick else job_seconds(all_jobs, results)
    probed = {} if quick or probed is None else probed
    units = []
    for job in jobs:
        seeds, order = _job_seeds(args, job), start + len(units)
        if job.seeds_apart:
            nets = getattr(args, "nets", None)
            mine = [seeds[i] for i in sorted(set(nets)) if 0 <= i < len(seeds)] if nets else seeds
            if job.id in probed:   # a net alone
                seconds, timed_nets = probed[job.id]
                units += _seed_units(chapter, job, mine, dict.fromkeys(mine, seconds / max(timed_nets, 1)), True,
                                     order, "probe")
                continue
            each = {} if quick else seed_seconds(job, results)
            mean = sum(each.values()) / len(each) if each else None
            got = {s: QUICK_SECONDS if quick else each.get(s, mean) for s in mine}
            units += _seed_units(chapter, job, mine, {s: ESTIMATE_SECONDS if v is None else v for s, v in got.items()},
                                 bool(each) and not quick, order)
            continue
        source = "probe" if job.id in probed else "recorded" if job.id in timed else "estimate"
        if source != "estimate":
            seconds, timed_nets = (probed if source == "probe" else timed)[job.id]
            seconds *= len(seeds) / max(timed_nets, 1)
        else:
            seconds = QUICK_SECONDS if quick else ESTIMATE_SECONDS
        units.append(Unit(chapter, job.id, tuple(job.rows), seconds, source != "estimate", order, (), tuple(seeds),
                          job.compose is not None and len(seeds) > 1, tuple(job.unit_rows or ()), source))
    return units


def split(units, n):
    """``units`` with each job that is longer than the fair share (total / n)
    and whose seeds may train apart given out seed by seed, each seed its
    share of the job's time: side by side when they fit, apart only where
    the job alone would bound the wall time."""
    fair = sum(u.seconds for u in units) / max(n, 1)
    out = []
    for u in units:
        if u.splits and u.seconds > fair:
            each = {s: u.seconds / len(u.seeds) for s in u.seeds}
            out += _seed_units(u.chapter, _AsJob(u.job, list(u.rows), list(u.unit_rows) or None), list(u.seeds), each,
                               u.recorded, u.order, u.source)
        else:
            out.append(u)
    return out


@dataclass
class _AsJob:
    """The little of a driver Job that ``_seed_units`` reads."""

    id: str
    rows: list
    unit_rows: list = None


def most_units(units):
    """How many units ``units`` make at most (every job that may be split, seed by seed)."""
    return sum(len(u.seeds) if u.splits else 1 for u in units)


def plan(units, n):
    """The units given to ``n`` parts (``split`` first): longest first, each
    onto the part with the least expected seconds so far (ties: the lower
    part). A list of n lists of units, each in the book's order."""
    parts, loads = [[] for _ in range(n)], [0.0] * n
    for u in sorted(split(units, n), key=lambda u: (-u.seconds, u.order)):
        i = min(range(n), key=lambda k: (loads[k], k))
        parts[i].append(u)
        loads[i] += u.seconds
    return [sorted(p, key=lambda u: u.order) for p in parts]


def apart(parts):
    """{(chapter, job): sorted parts} for every job whose seeds the plan puts in more than one part."""
    where = {}
    for i, p in enumerate(parts, 1):
        for u in p:
            if u.composes:
                where.setdefault((u.chapter, u.base), set()).add(i)
    return {k: sorted(v) for k, v in where.items() if len(v) > 1}


def digest(parts):
    """A short fingerprint of a plan (which unit in which part), recorded by every part."""
    text = json.dumps([[u.key for u in p] for p in parts])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def expected_seconds(part):
    return sum(u.seconds for u in part)


def sources_text(units, shown=6):
    """Where the units' expected times come from, in a few words: the probe
    (its machine), recorded runs (naming them when few), "~": estimates."""
    probe = [u for u in units if u.how == "probe"]
    recorded = [u for u in units if u.how == "recorded"]
    said = []
    if probe:
        said.append(f"{'' if len(probe) == len(units) else f'{len(probe)} '}measured alone by the probe "
                    f"({shown_path(PROBE_FILE)}: {probe_machine()})")
    if recorded:
        names = ", ".join(f"{u.chapter} {u.job}" for u in recorded[:shown]) + (
            f" and {len(recorded) - shown} more" if len(recorded) > shown else "")
        said.append(f"{'' if len(recorded) == len(units) else f'{len(recorded)} '}from recorded runs "
                    f"(reproduced/*/results.json, jobs side by side: they overstate)"
                    + (f": {names}" if probe else ""))
    return "expected times " + "; ".join(said or ["estimated"]) + "; ~ an estimate"


def plan_text(parts, *, what):
    """The plan as lines: each part's expected wall time and its units."""
    from experiments.report import duration
    units = [u for p in parts for u in p]
    lines = [f"{what}: {len(units)} units over {len(parts)} parts, longest first onto the least-loaded part "
             f"({sources_text(units)}). Plan {digest(parts)}."]
    for i, p in enumerate(parts, 1):
        shown = ", ".join(f"{u.chapter} {u.job} ({'~' * (not u.recorded)}{duration(u.seconds)})" for u in p)
        lines.append(f"part {i}/{len(parts)}: {duration(expected_seconds(p))} — {shown or 'nothing'}")
    if units:
        longest = max(units, key=lambda u: (u.seconds, -u.order))
        wall = max(expected_seconds(p) for p in parts)
        lines.append(f"expected wall time {duration(wall)} (the longest part); the longest unit, "
                     f"{longest.chapter} {longest.job} ({duration(longest.seconds)}), bounds it for any N")
    for (chapter, job), where in apart(parts).items():
        seeds = [u for p in parts for u in p if u.chapter == chapter and u.base == job]
        counts = [sum(u.chapter == chapter and u.base == job for u in parts[k - 1]) for k in where]
        held = ", ".join(f"{k} ({c} seed{'s' * (c > 1)})" for k, c in zip(where, counts))
        lines.append(f"{chapter} {job}: its {len(seeds)} seeds are held apart, in parts {held}: {len(where)} "
                     f"programs instead of one, each part loading the data and compiling on its own; a seed is "
                     f"planned at its share of the side-by-side run, or at its own time where the probe timed "
                     f"a net alone ({duration(seeds[0].seconds)}), and a share trained alone may take up to 1.6x "
                     f"that (it loses the side-by-side speed-up); merge "
                     f"composes {', '.join(seeds[0].composes)} from the parts' seeds")
    return "\n".join(lines)


# --- what a chapter's command runs -----------------------------------------------------------

class PlanError(SystemExit):
    """A plan that cannot be made (more parts than units of work): the message says what to give."""


def checked_plan(units, n, what):
    """``plan(units, n)``, refused at once (``PlanError``) when ``n`` exceeds the
    most units the work splits into: parts beyond them would have nothing to run."""
    most = most_units(units)
    if n > most:
        raise PlanError(f"{what}: {n} parts, but this work splits into at most {most} unit{'s' * (most != 1)} "
                        f"(a job's seeds one by one): give N at most {most}")
    return plan(units, n)


def chapter_plan(chapter, args, planned_jobs, n):
    """The plan of one chapter's command (its jobs asked for) over ``n`` parts."""
    units = _units(chapter, args, planned_jobs, 0)
    return checked_plan(units, n, chapter)


def _units(chapter, args, planned_jobs, start):
    """A chapter's units, listed as a fresh run lists them (no --resume: a
    resumed run's saved groups must not change the plan), timed by the probe
    file, else the recorded results."""
    fresh = args.replace(resume=False)   # the run context (``context.RunContext``) as a fresh run sees it
    every = planned_jobs(fresh.replace(only=None))
    return chapter_units(chapter, fresh, every, planned_jobs(fresh), recorded_results(chapter), start=start,
                         probed=probed_seconds(chapter))


def book_plan(chapter_args, planned, n):
    """The plan of several chapters together over ``n`` parts: ``chapter_args``
    {chapter: its parsed command line}, ``planned`` {chapter: its planned_jobs}."""
    units = []
    for chapter, args in chapter_args.items():
        units += _units(chapter, args, planned[chapter], len(units))
    return checked_plan(units, n, "nndl-jax reproduce")


def part_record(parts, i, chapter):
    """What a part records in its run entry: which part, the plan's
    fingerprint, every unit the plan gives this chapter with its rows (so
    ``nndl-jax merge`` can say which rows are missing) and its part, and for
    each job held apart the rows it composes from which unit records."""
    mine = [(k, u) for k, p in enumerate(parts, 1) for u in p if u.chapter == chapter]
    composed = {}
    for _, u in mine:
        if u.composes:
            entry = composed.setdefault(u.base, {"rows": list(u.composes), "units": []})
            entry["units"] += list(u.rows)
    return {"part": f"{i}/{len(parts)}", "plan": digest(parts),
            "planned": {u.job: {"rows": list(u.rows), "part": k} for k, u in mine}, "composed": composed}


def share(parts, i, chapter):
    """The unit ids (a job's, or ``<job>@<seed>``) of ``chapter`` that part ``i`` (1-based) runs."""
    return {u.job for u in parts[i - 1] if u.chapter == chapter}


def holds(args, job_id):
    """Whether this process runs the whole job ``job_id``: no --part, or the part holds it."""
    held = getattr(args, "share", None)
    return held is None or job_id in held


def held_seeds(args, job, seeds):
    """The seeds of ``job`` (of ``seeds``, all of it) that this process trains:
    all of them when no --part is given or the part holds the whole job;
    those whose unit ``<job>@<seed>`` the part holds; [] when it holds none."""
    if holds(args, job.id):
        return list(seeds)
    return [s for s in seeds if f"{job.id}@{s}" in args.share]


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


def main(argv=None, book_table=None):
    """``python -m experiments.parts``: the table of ``book_table(ns, quick=...)``
    (``reproduce.book_table``, handed in by the ``__main__`` block below, so
    that this module, which ``driver`` and ``reproduce`` import, imports neither)."""
    p = argparse.ArgumentParser(prog="python -m experiments.parts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=int, default=16, metavar="N", help="the largest N (default %(default)s)")
    p.add_argument("--all", action="store_true", help="the table for N = 1, 2, 4, ... up to --plan")
    p.add_argument("--quick", action="store_true", help="plan the --quick book")
    args = p.parse_args(argv)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.plan] if args.all else [args.plan]
    print("\n".join(book_table(ns, quick=args.quick)))
    return 0


if __name__ == "__main__":   # the command's entry only: as a module, parts imports no chapter and no command
    from experiments import reproduce
    raise SystemExit(main(book_table=reproduce.book_table))
