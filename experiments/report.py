"""What every chapter's experiment module shares: its command line, the table
of the book's number beside the measured one, the results JSON, the figures,
and the book's recorded curves.

A chapter module is a table of the book's rows at the top, then ``run(args)``
and ``main(argv=None)``; ``run`` hands each row to ``record`` as soon as it is
finished, ``main`` ends with ``finish``:

    def main(argv=None):
        args = report.parse_args("chap1", __doc__, argv, row_ids=[r["id"] for r in ROWS])
        report.finish(args, run(args))

``OUT/results.json`` holds rows keyed by row id, merged across runs: a run
with ``--only 6.3`` into a folder that holds 6.1 adds 6.3 and keeps 6.1, and
rerunning a row replaces that row alone. Every row records whether it came
from a ``--quick`` run, its seeds, when it finished and which run (command,
machine, wall time; ``"runs"``) made it. Quick and full rows never share a
folder: ``parse_args`` refuses such an ``--out`` before any training.
"""
import argparse
import contextlib
import datetime
import glob
import hashlib
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nndl_jax import data

REPO = Path(__file__).resolve().parent.parent
RESULTS = "results.json"
_RUNS = itertools.count(1)  # tells apart runs of one process (tests, nndl-jax reproduce)


def parse_args(chapter, description, argv=None, *, row_ids, default_seeds=3, add_arguments=None):
    """The command line every chapter takes; ``row_ids`` are the ids ``--only``
    accepts (the chapter's table); ``add_arguments(parser)``, when given, adds
    a chapter's own options (they appear in ``--help``).

    Fails (argparse's exit status 2, nothing written) on an unknown row id and
    on an ``--out`` that cannot take this run's results: not writable, holding
    a results.json that is not one, or holding rows of the other kind (quick
    or full)."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{chapter}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a short run for CI: few epochs on a small subset, through the real code")
    p.add_argument("--out", type=Path, default=Path("results") / chapter,
                   help=f"folder for results.json and the figures; rows already there are kept and a "
                        f"rerun row replaced (default: results/{chapter})")
    p.add_argument("--seeds", type=int, default=default_seeds,
                   help="runs per row, trained together as one vmapped program (default %(default)s)")
    p.add_argument("--seed", type=int, default=12345678,
                   help="first seed; run k uses seed + k (default: the book's fig/ seed %(default)s)")
    p.add_argument("--only", nargs="+", default=None, metavar="ROW",
                   help="run only these rows: " + " ".join(row_ids))
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder (default: $NNDL_JAX_DATA, then the user cache)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue every unfinished row of this command from its last checkpoint "
                            "(chapter 6 also skips rows already recorded in --out with the same settings)")
    again.add_argument("--restart", action="store_true",
                       help="discard this command's unfinished checkpoints and train its rows afresh")
    p.add_argument("--x64", action="store_true",
                   help="compute in float64 throughout (data, params, training), as the book's NumPy "
                        "code does; the default is float32. A seed draws other initial weights in "
                        "float64 than in float32 (the mini-batch order is the same)")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    unknown = [r for r in args.only or () if r not in row_ids]
    if unknown:
        p.error(f"unknown row id{'s' if len(unknown) > 1 else ''} {' '.join(unknown)} for --only; "
                f"the {chapter} rows are: {' '.join(row_ids)}")
    problem = out_problem(args.out, args.quick)
    if problem:
        p.error(problem)
    if args.x64:  # before any array is made: every default float becomes float64
        import jax
        jax.config.update("jax_enable_x64", True)
    args.chapter = chapter
    args.row_ids = list(row_ids)
    args.started = time.time()
    args.run_id = f"{_now()} pid {os.getpid()} #{next(_RUNS)}"
    args.argv = list(sys.argv[1:] if argv is None else argv)
    check_unfinished(args)
    return args


def out_problem(out, quick):
    """Why the folder ``out`` cannot take a run's results, or None when it can:
    it cannot be written (probed with a temporary file, so a run fails before
    any training, not after hours), its results.json is unreadable, or it
    holds rows of the other kind (quick or full), which must not mix."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as e:
        return (f"--out {out} cannot be written ({e.strerror or e}); "
                "give a folder you can write to")
    try:
        previous = read_results(out)
    except ValueError as e:
        return str(e)
    if previous is None:
        return None
    kinds = {bool(r.get("quick", previous.get("quick"))) for r in previous["rows"]}
    if kinds and kinds != {bool(quick)}:
        held, asked = ("full", "a --quick") if quick else ("--quick", "a full")
        return (f"{out / RESULTS} holds {held} results; {asked} run must not mix with them: "
                "give another --out")
    return None


def seeds(args):
    """The integer seeds of the runs of one row."""
    return [args.seed + k for k in range(args.seeds)]


def wanted(args, row_id):
    """Whether the row ``row_id`` was asked for (``--only``)."""
    return args.only is None or row_id in args.only


def checkpoint_dir(args, row_id):
    """The folder where row ``row_id`` of this command keeps its training
    checkpoint: ``<cache>/checkpoints/<first 12 hex of sha1(absolute --out)>/
    <chapter>/<row_id>/``, with ``<cache>`` the user cache
    (``$XDG_CACHE_HOME/nndl-jax``, normally ``~/.cache/nndl-jax``). Outside
    the work tree, one folder per output folder, so runs into different
    ``--out`` folders never share checkpoints. Not created here."""
    digest = hashlib.sha1(str(Path(args.out).resolve()).encode()).hexdigest()[:12]
    return data.cache_dir() / "checkpoints" / digest / args.chapter / str(row_id)


def summarize(values):
    """mean, spread (standard deviation over runs), best, runs: of a list of numbers."""
    v = np.asarray(values, dtype=float).ravel()
    return {"mean": float(v.mean()), "std": float(v.std()), "best": float(v.max()),
            "min": float(v.min()), "runs": [float(x) for x in v]}


def row(row_id, experiment, book, measured, *, unit="%", note="", **extra):
    """One line of a chapter's table: the book's figure beside the measured one.

    ``measured`` is a list of per-run values (summarized as mean ± spread and
    best) or a single number; ``book`` is a number, or None where the book
    gives none.
    """
    r = {"id": row_id, "experiment": experiment, "book": book, "unit": unit, "note": note}
    if measured is not None and np.ndim(measured) > 0:
        r["measured"] = summarize(measured)
    else:
        r["measured"] = None if measured is None else float(measured)
    r.update(extra)
    return r


def _fmt(x, unit):
    if x is None:
        return "—"
    if not isinstance(x, (int, float)):
        return str(x)
    if unit != "%" and float(x).is_integer() and abs(x) < 1e12:
        return f"{int(x)}{unit}"  # counts (6.13's parameters) in full
    return f"{x:.2f}{unit}" if unit == "%" else f"{x:.4g}{unit}"


def measured_text(r):
    """(measured, best-of-k) of a row as text: "95.02% ± 0.08", "95.10% (3)";
    a single number has no best-of-k."""
    m, u = r["measured"], r["unit"]
    if not isinstance(m, dict):
        return _fmt(m, u), ""
    sd = f"{m['std']:.2f}" if u == "%" else f"{m['std']:.2g}"
    return f"{_fmt(m['mean'], u)} ± {sd}", f"{_fmt(m['best'], u)} ({len(m['runs'])})"


def format_table(rows):
    """The table as text: id, experiment, book, measured mean ± spread, best-of-k."""
    lines = [f"{'id':<6} {'experiment':<58} {'book':>9} {'measured (mean ± sd)':>22} {'best-of-k':>10}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        meas, best = measured_text(r)
        lines.append(f"{r['id']:<6} {r['experiment'][:58]:<58} {_fmt(r['book'], r['unit']):>9} {meas:>22} {best:>10}")
        if r.get("note"):
            lines.append(f"{'':<6}   {r['note']}")
    return "\n".join(lines)


def markdown_table(rows, *, notes=True):
    """The table as Markdown (GitHub's): id, experiment, book, measured mean ±
    sd, best of k (runs), and the row's note."""
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    head = ["id", "experiment", "book", "measured (mean ± sd)", "best of k"] + (["note"] if notes else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        meas, best = measured_text(r)
        cells = [r["id"], r["experiment"], _fmt(r["book"], r["unit"]), meas, best] + (
            [r.get("note", "")] if notes else [])
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines)


def write_json(path, payload):
    """Write JSON atomically: a temporary file in the same folder, then a rename,
    so an interrupted run never leaves half a results file over a good one."""
    write_text(path, _numbers_on_one_line(json.dumps(payload, indent=1, default=_jsonable)))


def _numbers_on_one_line(text):
    """JSON text with every innermost list of numbers on one line (``indent``
    puts each number on its own). Only the line breaks between numbers go:
    JSON strings hold no line breaks, so no string is changed."""
    return re.sub(r"\[\n[-0-9.eE+,\s]*\]",
                  lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(0)[1:-1].strip()) + "]", text)


def significant(values, digits=4):
    """``values`` (nested lists or an array) as nested lists of floats rounded to
    ``digits`` significant digits: long per-epoch series stay small in results.json."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(np.asarray(values, float)).tolist()


def write_text(path, text):
    """Write a text file atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x)}")


def figure(args, name):
    """A new matplotlib figure and the path it will be saved to; None, None when
    matplotlib is not installed (the results JSON is still written)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib is not installed: skipping {name}.png; pip install 'nndl-jax[plots]')")
        return None, None
    fig = plt.figure(figsize=(7, 4.5))
    return fig, Path(args.out) / f"{name}.png"


def save(fig, path):
    """Save a figure atomically and close it."""
    if fig is None:
        return
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    print(f"wrote {path}")


def book_curve(name):
    """The book's recorded curve ``name`` (e.g. "overfitting") from the book's
    repository's fig/*.json, read from ``$NNDL_JAX_BOOK_CURVES`` or
    ``../shared/data/book-curves``; None when absent (the figure then shows
    the measured curve alone)."""
    root = os.environ.get("NNDL_JAX_BOOK_CURVES")
    folder = Path(root) if root else REPO.parent / "shared" / "data" / "book-curves"
    path = folder / f"{name}.json"
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def environment():
    """The machine and library versions, recorded in every results file."""
    import jax
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_results(out):
    """The results in ``out/results.json``, or None when there is none yet.
    A file that is not a results file raises ValueError; it is never touched."""
    path = Path(out) / RESULTS
    if not path.exists():
        return None
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as results ({e}); it is left as it is: "
                         "move it away or give another --out") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f"{path} is not a results file (no list of rows); it is left as it is: "
                         "move it away or give another --out")
    return results


def row_sort_key(row_id):
    """Natural order of row ids: 3.9 < 3.10 < 3.14@100 < 3.14@1000."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", row_id) if t]


@contextlib.contextmanager
def _locked(out):
    """Hold an exclusive lock on the folder ``out`` while its results are read,
    merged and written, so two runs into one folder (say --only 6.1 and --only
    6.2 side by side) never drop each other's rows. A no-op without fcntl."""
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


_RESERVED = {"chapter", "quick", "x64", "seeds", "wall_seconds", "complete", "environment", "rows", "runs"}


def merge_results(previous, rows, payload, run):
    """``previous`` results (or None) with ``rows`` and ``payload`` merged in.

    Rows are keyed by id: a new row replaces the row of the same id, every
    other row is kept; the list is in natural id order. Payload entries
    replace the same keys, except dicts, which are merged key by key (a
    chapter's per-row curves, ``{"6.1": ...}``, keep the other rows').
    ``run`` (this command: its id, argv, seeds, machine, wall time) replaces
    its own entry in ``"runs"``; runs that no row refers to any more are dropped.
    The top-level quick / x64 / seeds / wall_seconds / complete / environment are the run's.
    """
    clash = _RESERVED & set(payload)
    if clash:
        raise ValueError(f"payload keys {sorted(clash)} are reserved for the results file itself")
    out = dict(previous or {})
    by_id = {r["id"]: r for r in out.get("rows", [])}
    by_id.update({r["id"]: r for r in rows})
    out["rows"] = sorted(by_id.values(), key=lambda r: row_sort_key(r["id"]))
    for k, v in payload.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    used = {r.get("run") for r in out["rows"]} | {run["id"]}
    runs = [r for r in out.get("runs", []) if r.get("id") in used and r.get("id") != run["id"]]
    out["runs"] = runs + [run]
    out.update(chapter=run["chapter"], quick=run["quick"], x64=run.get("x64", False), seeds=run["seeds"],
               wall_seconds=run["wall_seconds"], complete=run["complete"], environment=run["environment"])
    return out


def _run_entry(args, complete):
    return {"id": args.run_id, "chapter": args.chapter, "argv": args.argv, "quick": args.quick,
            "x64": bool(args.x64), "seeds": seeds(args), "wall_seconds": time.time() - args.started,
            "complete": complete, "environment": environment()}


def record(args, rows, *, complete=False, **payload):
    """Merge finished ``rows`` (and their ``payload``) into ``OUT/results.json``
    at once, atomically, under a lock: a run cut off after hours keeps every
    row it finished. Each row is stamped with ``quick``, its ``seeds`` (the
    run's, unless the row names its own), ``finished`` and ``run``."""
    finished = _now()
    for r in rows:  # in place: a row recorded twice (here, then by finish) keeps its first stamp
        r.update(quick=args.quick, x64=bool(args.x64), run=args.run_id)
        r.setdefault("seeds", seeds(args))
        r.setdefault("finished", finished)
    with _locked(args.out):
        merged = merge_results(read_results(args.out), rows, payload, _run_entry(args, complete))
        write_json(Path(args.out) / RESULTS, merged)
    return merged


def record_divergence(args, run_id, diverged_at):
    """Mark in ``results.json`` (``"diverged"``: run id -> the epoch at which
    each of its nets stopped being finite, -1 for none) a run of which some net
    diverged; ``train.fit`` has stopped that net and printed which, when and η."""
    diverged_at = np.asarray(diverged_at)
    if np.any(diverged_at >= 0):
        record(args, [], diverged={run_id: diverged_at.tolist()})


def recorded_rows(args):
    """Every row now in ``OUT/results.json`` (this run's and earlier runs'),
    for figures that draw several rows."""
    results = read_results(args.out)
    return [] if results is None else results["rows"]


def recorded_row(args, row_id, **settings):
    """Row ``row_id`` as a run into ``--out`` recorded it, when its quick and
    x64 flags and every one of ``settings`` (seeds, epochs, ...) are this
    command's; else None."""
    for r in recorded_rows(args):
        if (r["id"] == row_id and r.get("quick") == bool(args.quick) and r.get("x64", False) == bool(args.x64)
                and all(r.get(k) == v for k, v in settings.items())):
            return r
    return None


def finished_row(args, row_id, **settings):
    """With ``--resume``: ``recorded_row(args, row_id, **settings)``; else None.
    A chapter then skips the row, so a queue of rows resumed after an
    interruption trains only what is left (without ``--resume`` a row asked
    for is trained again)."""
    return recorded_row(args, row_id, **settings) if args.resume else None


def finish(args, rows, **payload):
    """Record ``rows`` (this run's; rows ``record`` already wrote are written
    again, unchanged), mark the run complete, print this run's table and
    return the merged results (every row in ``OUT/results.json``)."""
    out = record(args, rows, complete=True, **payload)
    print()
    print(format_table(rows))
    kept = len(out["rows"]) - len({r["id"] for r in rows})
    print(f"\n{args.chapter}: {time.time() - args.started:.1f} s wall{' (quick mode)' if args.quick else ''}")
    print(f"wrote {Path(args.out) / RESULTS}" + (f" ({kept} rows of earlier runs kept)" if kept else ""))
    return out


def eta(t0, done, total):
    """"12.3 s, ETA 4 min 10 s": the time since ``t0`` and the time left if the
    ``total - done`` remaining steps take as long as the ``done`` so far."""
    elapsed = time.time() - t0
    left = elapsed / done * (total - done) if done else float("nan")
    return f"{elapsed:.1f} s" + ("" if done >= total or not done else f", ETA {duration(left)}")


def duration(seconds):
    """"1 h 6 min", "1 min 15 s", "12 s": a span of seconds for a progress line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def progress(label, total_epochs, key="evaluation_accuracy", of=None):
    """An ``on_epoch`` callback that prints one line per epoch for a long run:
    the label, the epoch, the monitored value of each of the K nets, the
    elapsed time and an estimate of the time left (from the epochs so far)."""
    t0, first = time.time(), []

    def on_epoch(e, record):
        first.append(e) if not first else None  # a resumed run starts later: time only its epochs
        vals = record.get(key)
        shown = "" if vals is None else " ".join(
            f"{v}" if of is None else f"{v}/{of}" for v in np.asarray(vals).tolist())
        print(f"  [{label}] epoch {e + 1}/{total_epochs}: {key} {shown}  "
              f"({eta(t0, e + 1 - first[0], total_epochs - first[0])})", flush=True)

    return on_epoch


# --- resumable rows: their checkpoints ---------------------------------------------

CHECKPOINT_FILE = "state.npz"


def row_checkpoint(args, row_id, meta):
    """The ``train.Checkpoint`` of one row (or sub-run ``<row>@...``), saved
    after every epoch in ``checkpoint_dir(args, row_id)`` and removed by
    ``remove_checkpoints`` once the row's results are written. ``--resume``
    continues from it; ``--restart`` discards it; without either, an existing
    one stops the command before any training (``check_unfinished``)."""
    from nndl_jax import train
    ckpt = train.Checkpoint(checkpoint_dir(args, row_id) / CHECKPOINT_FILE,
                            dict(meta, chapter=args.chapter, quick=bool(args.quick), x64=bool(args.x64)))
    if ckpt.exists() and args.restart:
        ckpt.remove()
    if not args.quick:
        print(f"  checkpoint after every epoch: {ckpt.path} (Ctrl-C stops at once; "
              "--resume continues from the last finished epoch)", flush=True)
    return ckpt


def unfinished_rows(args):
    """Row ids with a checkpoint left by an interrupted run of this command."""
    folder = checkpoint_dir(args, "_").parent
    return sorted(p.parent.name for p in folder.glob(f"*/{CHECKPOINT_FILE}")) if folder.is_dir() else []


def check_unfinished(args):
    """Before any training: an interrupted run's checkpoints need ``--resume``
    (continue them) or ``--restart`` (discard them); nothing saved is dropped silently."""
    def asked_for(run_id):  # "1.1+1.2" (a group of rows), "3.12@..." (a sub-run), "6.8a" (--only 6.8)
        return any(wanted(args, part) or wanted(args, part.rstrip("ab"))
                   for part in (p.split("@")[0] for p in run_id.split("+")))
    left = [r for r in unfinished_rows(args) if asked_for(r)]
    if left and not (args.resume or args.restart):
        raise SystemExit(
            f"{args.chapter}: rows {', '.join(left)} of an interrupted run into {args.out} are saved in "
            f"{checkpoint_dir(args, '_').parent}: add --resume to continue them from their last "
            "finished epoch, or --restart to discard them")


def remove_checkpoints(args, row_id):
    """Remove the checkpoints of row ``row_id`` and of its sub-runs (``<id>@...``)
    once the row's results are written."""
    folder = checkpoint_dir(args, "_").parent
    for path in [folder / row_id, *folder.glob(f"{glob.escape(row_id)}@*")]:
        (path / CHECKPOINT_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def stop_at_once_on_interrupt():
    """For a command-line run: Ctrl-C (SIGINT) ends the process at once, as
    SIGTERM does, even in the middle of a compiled epoch (Python would only see
    it when the epoch returns). Nothing is lost that was saved: checkpoints and
    results are written atomically, and ``--resume`` continues every row from
    its last finished epoch."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
