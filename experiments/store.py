"""The results store: ``OUT/results.json``, read, validated, merged and written.

``OUT/results.json`` holds rows keyed by row id, merged across runs: a run
with ``--only 6.3`` into a folder that holds 6.1 adds 6.3 and keeps 6.1, and
rerunning a row replaces that row alone. Every row records whether it came
from a ``--quick`` run, its seeds, when it finished and which run (command,
machine, wall time; ``"runs"``) made it. ``read_results`` is the one reader
of results files (a chapter run's --out, merge, the report): only a regular
file is opened (``unreadable``), and it is validated (``results_problems``);
a folder, a FIFO, a truncated, damaged or hand-edited file is refused in one
line with the file, the row and what to do, never half-used nor touched.
Quick and full rows, and two chapters' rows, never share a folder (``out_problem``).

Every file the experiments write goes through ``atomic_write`` (a temporary
file beside the target, then a rename), so an interrupted run never leaves
half a file over a good one.
"""
import contextlib
import datetime
import json
import os
import platform
import re
import stat
import sys
import time
from pathlib import Path

import numpy as np

from nndl_jax import files

RESULTS = "results.json"
DIRECTIONS = ("higher", "lower", "none")


class ResultsError(ValueError):
    """A results file that cannot be used: unreadable, damaged or of another run."""


# --- the one atomic writer ------------------------------------------------------------------

def atomic_write(path, write, mode="wb"):
    """Write ``path`` by ``write(f)`` on a temporary file beside it, then a rename
    (folders created): every experiments file (results, REPORT.md, README's
    table, figures) goes through the project's one writer, ``files.atomic_write``.
    In a run over several processes only process 0 writes (the others return)."""
    if "jax" in sys.modules:
        from nndl_jax import distributed
        if not distributed.is_main():
            return Path(path)
    return files.atomic_write(path, write, mode, parents=True)


def write_text(path, text):
    """Write a text file atomically."""
    return atomic_write(path, lambda f: f.write(text), "w")


def write_json(path, payload):
    """Write JSON atomically, with every innermost list of numbers on one line."""
    write_text(path, _numbers_on_one_line(json.dumps(payload, indent=1, default=files.json_default)))


def _numbers_on_one_line(text):
    """JSON text with every innermost list of numbers on one line (``indent``
    puts each number on its own). Only the line breaks between numbers go:
    JSON strings hold no line breaks, so no string is changed."""
    return re.sub(r"\[\n[-0-9.eE+,\s]*\]",
                  lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(0)[1:-1].strip()) + "]", text)


# --- reading and validating -------------------------------------------------------------------

def results_problems(results):
    """What is wrong with ``results`` (a parsed results.json) as a list of
    ``(where, what)``; empty for a good file. Checked: a dict with a list of
    rows; every row (`row_problems`) what the tables (``report.format_table``,
    ``report.markdown_table``) read of it; ``runs`` (when present) a list of
    dicts with a string id; ``units`` a map of unit records; ``chapter`` a string."""
    if not isinstance(results, dict):
        return [("the file", "is not a JSON object")]
    if not isinstance(results.get("rows"), list):
        return [("the file", "has no list of rows")]
    problems, seen = [], set()
    for i, r in enumerate(results["rows"]):
        problems += row_problems(r, i, seen)
    runs = results.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(x, dict) and isinstance(x.get("id"), str) for x in runs):
        problems.append(("'runs'", "is not a list of runs with string ids"))
    units = results.get("units", {})
    if not isinstance(units, dict) or not all(
            isinstance(u, dict) and u.get("id") == uid and isinstance(u.get("row"), str)
            and isinstance(u.get("seed"), int) for uid, u in units.items()):
        problems.append(("'units'", "is not a map of unit records (id, row, seed)"))
    if "chapter" in results and not isinstance(results["chapter"], str):
        problems.append(("'chapter'", "is not a string"))
    return problems


def row_problems(r, i, seen):
    """What is wrong with row ``r``, the ``i``-th (from 0) of its file, as
    ``(where, what)``; ``seen``: the ids of the rows before it (this one's is
    added). A row is a dict with a non-empty string ``id`` (unique), a string
    ``experiment`` and ``unit``, a ``book`` that is null or a number, a
    ``measured`` that is null, a number or a summary with ``mean``, ``std``
    and a list of ``runs``, a string ``note`` and a ``direction`` of
    higher/lower/none when given."""
    if not isinstance(r, dict):
        return [(f"row {i + 1}", f"is {type(r).__name__}, not an object")]
    problems, rid = [], r.get("id")
    where = f"row {i + 1} (id {rid!r})" if rid is not None else f"row {i + 1}"
    if not isinstance(rid, str) or not rid:
        problems.append((where, "has no string id"))
    elif rid in seen:
        problems.append((where, "repeats an id"))
    else:
        seen.add(rid)
    for key in ("experiment", "unit"):
        if not isinstance(r.get(key), str):
            problems.append((where, f"has no string {key!r}"))
    if "book" not in r:
        problems.append((where, "has no 'book' (the book's figure, null where the book gives none)"))
    elif not _number_or_null(r["book"]):
        problems.append((where, f"has a 'book' of type {type(r['book']).__name__}, not a number or null"))
    if "measured" not in r:
        problems.append((where, "has no 'measured'"))
    else:
        problems += [(where, p) for p in _measured_problems(r["measured"])]
    if not isinstance(r.get("note", ""), str):
        problems.append((where, f"has a 'note' of type {type(r['note']).__name__}, not a string"))
    if r.get("direction", "higher") not in DIRECTIONS:
        problems.append((where, f"has direction {r['direction']!r}, not one of {', '.join(DIRECTIONS)}"))
    return problems


def _number_or_null(x):
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _measured_problems(m):
    if _number_or_null(m):
        return []
    if not isinstance(m, dict):
        return [f"has a 'measured' of type {type(m).__name__}"]
    runs = m.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(v, (int, float)) for v in runs):
        return ["has a 'measured' summary without a list of numbers in 'runs'"]
    missing = [k for k in ("mean", "std") if not isinstance(m.get(k), (int, float))]
    return [f"has a 'measured' summary without {' and '.join(missing)}"] if missing else []


def unreadable(path):
    """Why the results file ``path`` is not opened, or None for a regular file
    (a link to one counts): a results.json that is a folder, a FIFO (opening
    it would wait for a writer for ever) or a link to /dev/zero (reading would
    never end) is refused before it is opened. A stat reads nothing."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a results file"
    return None if stat.S_ISREG(mode) else "is not a regular file"


LEFT_AS_IT_IS = "it is left as it is: move it away or give another folder"


def read_results(out):
    """The results in ``out/results.json``, validated, or None when there is
    none yet. The one reader of results files (a chapter run's --out, merge's
    parts and --out, the report): a file that cannot be used (not a regular
    file, unreadable, not JSON, truncated, or not valid results) raises
    ResultsError, one line naming the file, the row and what to do; it is never touched."""
    path = Path(out) / RESULTS
    if not os.path.lexists(path):
        return None
    problem = unreadable(path)
    if problem:
        raise ResultsError(f"{path} {problem}; {LEFT_AS_IT_IS}")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())   # one line
        raise ResultsError(f"{path} cannot be read as results ({type(e).__name__}: {reason}); "
                           f"{LEFT_AS_IT_IS}") from None
    problems = results_problems(results)
    if problems:
        shown = "; ".join(f"{where} {what}" for where, what in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ResultsError(f"{path} is not a valid results file: {shown}{more}. It is left as it is: "
                           "fix or remove those rows (or restore the file, e.g. `git checkout` it), "
                           "or move it away or give another folder")
    return results


def out_problem(out, quick, chapter=None):
    """Why the folder ``out`` cannot take a run's results, or None when it can:
    it cannot be written (probed with a temporary file, so a run fails before
    any training, not after hours; a folder made for the probe is removed
    again), its results.json is unusable, holds another chapter's rows, or
    holds rows of the other kind (quick or full), which must not mix."""
    out = Path(out)
    try:
        with probed_folder(out):
            pass
    except OSError as e:
        return (f"--out {out} cannot be written ({e.strerror or e}); "
                "give a folder you can write to")
    try:
        previous = read_results(out)
    except ResultsError as e:
        return str(e)
    if previous is None:
        return None
    held = previous.get("chapter")
    if chapter is not None and held is not None and held != chapter:
        return (f"{out / RESULTS} holds {held}'s results, not {chapter}'s: give this chapter its own "
                f"--out (e.g. results/{chapter})")
    kinds = {bool(r.get("quick", previous.get("quick"))) for r in previous["rows"]}
    if kinds and kinds != {bool(quick)}:
        held, asked = ("full", "a --quick") if quick else ("--quick", "a full")
        return (f"{out / RESULTS} holds {held} results; {asked} run must not mix with them: "
                "give another --out")
    return None


@contextlib.contextmanager
def probed_folder(folder):
    """Check that ``folder`` can take files (made if missing, a file written and
    removed); the folders made for the check are removed again afterwards
    unless something was written into them meanwhile. Raises OSError."""
    folder = Path(folder)
    made, f = [], folder
    while not f.exists():
        made.append(f)
        f = f.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        yield folder
    finally:
        for d in made:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()


# --- merging and recording -------------------------------------------------------------------

def row_sort_key(row_id):
    """Natural order of row ids: 3.9 < 3.10 < 3.14@100 < 3.14@1000."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", row_id) if t]


@contextlib.contextmanager
def locked(out):
    """Hold an exclusive lock on the folder ``out`` while its results are read,
    merged and written, so two runs into one folder never drop each other's
    rows. A no-op without fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_RESERVED = {"chapter", "quick", "x64", "seeds", "wall_seconds", "complete", "environment", "rows", "runs",
             "units"}

# --- what identifies a measurement, and the one merge of records ------------------------------
# The keys of a row or unit record that say when, where or how fast it was made, not what it
# measured: two records equal in everything else are the same measurement. --resume, the store
# and `nndl-jax merge` all compare records through ``identity``.
VOLATILE = frozenset({"run", "finished", "seconds", "earlier_seconds", "untimed_epochs", "devices", "note",
                      "trained_with"})


def identity(record):
    """A record less its ``VOLATILE`` keys, as canonical JSON text: equal texts, one measurement."""
    kept = {k: v for k, v in record.items() if k not in VOLATILE}
    return json.dumps(kept, sort_keys=True, default=files.json_default)


def differing_keys(a, b):
    """The non-volatile keys in which records ``a`` and ``b`` differ."""
    def text(v):
        return json.dumps(v, sort_keys=True, default=files.json_default)
    return sorted(k for k in (set(a) | set(b)) - VOLATILE if text(a.get(k)) != text(b.get(k)))


def merge_records(held, incoming, *, refuse=False):
    """The one merge of records keyed by id (rows, units): ``held`` {id: record}
    with the ``incoming`` records added; a record of an id already held replaces
    it (the store: a rerun row replaces the old one), or with ``refuse`` (merge:
    parts must agree) is kept and a differing one listed as a conflict.
    Returns ({id: record}, [(id, differing keys)])."""
    out, conflicts = dict(held), []
    for r in incoming:
        old = out.get(r["id"])
        if refuse and old is not None and identity(old) != identity(r):
            conflicts.append((r["id"], differing_keys(old, r)))
            continue
        if not (refuse and old is not None):
            out[r["id"]] = r
    return out, conflicts


def matches(record, *, quick, x64, seeds, settings):
    """The one policy for "is this row or unit already recorded with these
    settings" (``--resume`` skips it, a composed row uses it): its quick and
    x64 flags and seeds are these, and every one of ``settings`` is its own (a
    record made before a setting was stamped matches on it: it was then the
    book's, or --quick's, and the quick flag is checked)."""
    return (record is not None and record.get("quick") == bool(quick) and record.get("x64", False) == bool(x64)
            and list(record.get("seeds") or ()) == list(seeds)
            and all(record.get(k, v) == v for k, v in settings.items()))


def merge_results(previous, rows, payload, run, units=()):
    """``previous`` results (or None) with ``rows`` and ``payload`` merged in.

    Rows are keyed by id: a new row replaces the row of the same id, every
    other row is kept; the list is in natural id order. Payload entries
    replace the same keys, except dicts, which are merged key by key (a
    chapter's per-row curves, ``{"6.1": ...}``, keep the other rows').
    ``run`` (this command: its id, argv, seeds, machine, wall time) replaces
    its own entry in ``"runs"``; runs that no row or unit refers to any more are dropped.
    ``units``: unit records (one seed of a row, ``<row>@<seed>``), merged by id into ``"units"``.
    The top-level quick / x64 / seeds / wall_seconds / complete / environment are the run's.
    """
    clash = _RESERVED & set(payload)
    if clash:
        raise ValueError(f"payload keys {sorted(clash)} are reserved for the results file itself")
    out = dict(previous or {})
    by_id, _ = merge_records({r["id"]: r for r in out.get("rows", [])}, rows)
    out["rows"] = sorted(by_id.values(), key=lambda r: row_sort_key(r["id"]))
    if units:
        merged_units, _ = merge_records(out.get("units", {}), units)
        out["units"] = dict(sorted(merged_units.items(), key=lambda kv: row_sort_key(kv[0])))
    for k, v in payload.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    used = {r.get("run") for r in [*out["rows"], *out.get("units", {}).values()]} | {run["id"]}
    runs = [r for r in out.get("runs", []) if r.get("id") in used and r.get("id") != run["id"]]
    out["runs"] = runs + [run]
    out.update(chapter=run["chapter"], quick=run["quick"], x64=run.get("x64", False), seeds=run["seeds"],
               wall_seconds=run["wall_seconds"], complete=run["complete"], environment=run["environment"])
    return out


def environment():
    """The machine and library versions, recorded in every results file."""
    import jax
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "jaxlib": _version_of("jaxlib"), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def _version_of(package):
    """An installed package's version, or None."""
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def seeds(args):
    """The integer seeds of the runs of one row."""
    return [args.seed + k for k in range(args.seeds)]


def _run_entry(args, complete):
    """This command's entry in ``"runs"``: its command line, settings, machine,
    the code it ran (package version, git commit) and, for ``--part``, which part of which plan."""
    entry = {"id": args.run_id, "chapter": args.chapter, "argv": list(args.argv), "quick": args.quick,
             "x64": bool(args.x64), "seeds": seeds(args), "wall_seconds": time.time() - args.started,
             "complete": complete, "environment": environment()}
    if getattr(args, "code", None) is not None:
        entry["code"] = args.code
    if getattr(args, "part_record", None) is not None:
        entry["part"] = args.part_record
    return entry


SHORTENED = "SHORTENED (--quick: a small subset, few epochs)"


def stamp(args, records, finished):
    """Stamp this run's ``records`` (rows or units) in place with ``quick``,
    ``x64``, ``run``, their ``seeds`` (the run's unless they name their own) and
    ``finished`` (kept from a first recording); a --quick row's note says
    SHORTENED. Records of earlier runs (shown again: --resume skipped them) are left as they were."""
    for r in records:
        if r.get("run", args.run_id) != args.run_id:
            continue
        r.update(quick=args.quick, x64=bool(args.x64), run=args.run_id)
        r.setdefault("seeds", seeds(args))
        r.setdefault("finished", finished)
        if args.quick and "row" not in r and not r.get("exact") and "SHORTENED" not in r.get("note", ""):  # not units
            r["note"] = SHORTENED + ("; " + r["note"] if r.get("note") else "")


def record(args, rows, *, complete=False, units=(), **payload):
    """The one writer of a chapter run's results: merge finished ``rows``, unit
    records ``units`` (one seed of a row each, ``<row>@<seed>``) and their
    ``payload`` into ``OUT/results.json`` at once, validated, atomically, under
    the folder's lock: a run cut off after hours keeps every row it finished.
    Only the row driver (``experiments.driver``) calls it."""
    stamp(args, [*rows, *units], now())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        files.remove_stale_parts(out, RESULTS)  # interrupted writes of results.json by processes now gone
        merged = merge_results(read_results(out), rows, payload, _run_entry(args, complete), units)
        problems = results_problems(merged)
        if problems:
            raise ResultsError(f"refused to write {out / RESULTS}: " + "; ".join(f"{w} {p}" for w, p in problems[:5]))
        write_json(out / RESULTS, merged)
    return merged


def divergence(run_id, diverged_at):
    """The payload that marks in ``results.json`` (``"diverged"``: run id -> the
    epoch at which each of its nets stopped being finite, -1 for none) a run of
    which some net diverged; {} when none did. Recorded with the job's rows."""
    diverged_at = np.asarray(diverged_at)
    return {"diverged": {run_id: diverged_at.tolist()}} if np.any(diverged_at >= 0) else {}


def recorded_rows(args):
    """Every row now in ``OUT/results.json`` (this run's and earlier runs')."""
    results = read_results(args.out)
    return [] if results is None else results["rows"]


def recorded_row(args, row_id, **settings):
    """Row ``row_id`` as a run into ``--out`` recorded it, when it ``matches``
    this command's flags, ``settings["seeds"]`` (default the command's) and the
    other ``settings``; else None."""
    want = dict(settings)
    row_seeds = want.pop("seeds", None)
    for r in recorded_rows(args):
        if r["id"] == row_id and matches(r, quick=args.quick, x64=args.x64,
                                         seeds=seeds(args) if row_seeds is None else row_seeds, settings=want):
            return r
    return None


def recorded_units(args):
    """Every unit record now in ``OUT/results.json`` ({id: record})."""
    results = read_results(args.out)
    return {} if results is None else dict(results.get("units", {}))
