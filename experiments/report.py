"""What every chapter's experiment module shares: its command line, the table
of the book's number beside the measured one, the results JSON, the figures,
and the book's recorded curves.

A chapter module is a table of the book's rows at the top, then ``run(args)``
and ``main(argv=None)``:

    def main(argv=None):
        args = report.parse_args("chap1", __doc__, argv)
        report.finish(args, run(args))
"""
import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def parse_args(chapter, description, argv=None, *, default_seeds=3, add_arguments=None):
    """The command line every chapter takes; ``add_arguments(parser)``, when
    given, adds a chapter's own options (they appear in ``--help``)."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{chapter}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a short run for CI: few epochs on a small subset, through the real code")
    p.add_argument("--out", type=Path, default=Path("results") / chapter,
                   help="folder for the results JSON and the figures (default: results/%(prog)s)")
    p.add_argument("--seeds", type=int, default=default_seeds,
                   help="runs per row, trained together as one vmapped program (default %(default)s)")
    p.add_argument("--seed", type=int, default=12345678,
                   help="first seed; run k uses seed + k (default: the book's fig/ seed %(default)s)")
    p.add_argument("--only", nargs="*", default=None, metavar="ROW",
                   help="run only these rows (ids from the table)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST folder (default: $NNDL_JAX_DATA, then the user cache)")
    p.add_argument("--resume", action="store_true",
                   help="continue the rows an interrupted run left unfinished, from their last epoch")
    p.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of an interrupted run and start its rows afresh")
    p.add_argument("--x64", action="store_true",
                   help="compute in float64 throughout (data, params, training), as the book's NumPy "
                        "code does; the default is float32. A seed draws other initial weights in "
                        "float64 than in float32 (the mini-batch order is the same)")
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.resume and args.restart:
        p.error("--resume and --restart exclude each other")
    if args.x64:  # before any array is made: every default float becomes float64
        import jax
        jax.config.update("jax_enable_x64", True)
    args.chapter = chapter
    args.started = time.time()
    check_unfinished(args)
    return args


def seeds(args):
    """The integer seeds of the runs of one row."""
    return [args.seed + k for k in range(args.seeds)]


def wanted(args, row_id):
    """Whether the row ``row_id`` was asked for (``--only``)."""
    return args.only is None or row_id in args.only


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
    return f"{x:.2f}{unit}" if unit == "%" else f"{x:.4g}{unit}"


def format_table(rows):
    """The table as text: id, experiment, book, measured mean ± spread, best-of-k."""
    lines = [f"{'id':<6} {'experiment':<58} {'book':>9} {'measured (mean ± sd)':>22} {'best-of-k':>10}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        m, u = r["measured"], r["unit"]
        if isinstance(m, dict):
            sd = f"{m['std']:.2f}" if u == "%" else f"{m['std']:.2g}"
            meas = f"{_fmt(m['mean'], u)} ± {sd}"
            best = f"{_fmt(m['best'], u)} ({len(m['runs'])})"
        else:
            meas, best = _fmt(m, u), ""
        lines.append(f"{r['id']:<6} {r['experiment'][:58]:<58} {_fmt(r['book'], u):>9} {meas:>22} {best:>10}")
        if r.get("note"):
            lines.append(f"{'':<6}   {r['note']}")
    return "\n".join(lines)


def write_json(path, payload):
    """Write JSON atomically: a temporary file in the same folder, then a rename,
    so an interrupted run never leaves half a results file over a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=_jsonable)
    os.replace(tmp, path)


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
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()]}


PARTIAL = "results.partial.json"


def _results(args, rows, complete, payload):
    out = {"chapter": args.chapter, "quick": args.quick, "seeds": seeds(args), "x64": args.x64,
           "wall_seconds": time.time() - args.started, "complete": complete,
           "environment": environment(), "rows": rows}
    out.update(payload)
    return out


def checkpoint(args, rows, **payload):
    """After each row of a long run: the rows so far in ``results.partial.json``
    (``"complete": false``), so a run cut off after hours keeps its finished
    rows; ``results.json`` from an earlier run is left alone until ``finish``."""
    write_json(Path(args.out) / PARTIAL, _results(args, rows, False, payload))


def finish(args, rows, **payload):
    """Print the table, write ``results.json`` (rows, seeds, settings, machine)
    and remove this run's ``results.partial.json``."""
    out = _results(args, rows, True, payload)
    print()
    print(format_table(rows))
    print(f"\n{args.chapter}: {out['wall_seconds']:.1f} s wall{' (quick mode)' if args.quick else ''}")
    write_json(Path(args.out) / "results.json", out)
    (Path(args.out) / PARTIAL).unlink(missing_ok=True)
    print(f"wrote {Path(args.out) / 'results.json'}")
    return out


def progress(label, total_epochs, key="evaluation_accuracy", of=None):
    """An ``on_epoch`` callback that prints one line per epoch for a long run:
    the label, the epoch, the monitored value of each of the K nets, elapsed time."""
    t0 = time.time()

    def on_epoch(e, record):
        vals = record.get(key)
        shown = "" if vals is None else " ".join(
            f"{v}" if of is None else f"{v}/{of}" for v in np.asarray(vals).tolist())
        print(f"  [{label}] epoch {e + 1}/{total_epochs}: {key} {shown}  ({time.time() - t0:.1f} s)",
              flush=True)

    return on_epoch


# --- resumable rows: where each row's checkpoint lives ------------------------------

def checkpoint_dir(args):
    """The folder of this command's row checkpoints, outside the work tree:
    ``<user cache>/checkpoints/<chapter>-<sha1 of the absolute --out>[:12]``
    (the user cache is ``$XDG_CACHE_HOME/nndl-jax``, ``~/.cache/nndl-jax``)."""
    import hashlib

    from nndl_jax import data
    out = str(Path(args.out).resolve())
    return data.cache_dir() / "checkpoints" / f"{args.chapter}-{hashlib.sha1(out.encode()).hexdigest()[:12]}"


def row_checkpoint(args, row_id, meta):
    """The ``train.Checkpoint`` of one row (saved after every epoch, removed by
    ``row_finished`` once the row's results are written). ``--resume``
    continues from it; ``--restart`` discards it; without either an existing
    one is an error (nothing saved is thrown away silently)."""
    from nndl_jax import train
    ckpt = train.Checkpoint(checkpoint_dir(args) / f"{row_id}.npz",
                            dict(meta, chapter=args.chapter, quick=bool(args.quick),
                                 x64=bool(getattr(args, "x64", False))))
    if ckpt.exists() and getattr(args, "restart", False):
        ckpt.remove()
    if not args.quick:
        print(f"  checkpoint after every epoch: {ckpt.path} (Ctrl-C stops at once; "
              "--resume continues from the last finished epoch)", flush=True)
    return ckpt


def unfinished_rows(args):
    """Row ids with a checkpoint left by an interrupted run of this command."""
    folder = checkpoint_dir(args)
    return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []


def check_unfinished(args):
    """Before any training: an interrupted run's checkpoints need ``--resume``
    (continue them) or ``--restart`` (discard them)."""
    left = unfinished_rows(args)
    if left and not (getattr(args, "resume", False) or getattr(args, "restart", False)):
        raise SystemExit(
            f"{args.chapter}: rows {', '.join(left)} of an interrupted run into {args.out} are saved in "
            f"{checkpoint_dir(args)}: add --resume to continue them from their last finished epoch, "
            "or --restart to discard them")


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


def row_finished(ckpt):
    """Remove a row's checkpoint once its results are written."""
    if ckpt is not None:
        ckpt.remove()


def remove_checkpoints(args, row_id):
    """Remove the checkpoints of row ``row_id`` and of its sub-runs (``<id>@...``)
    once the row's results are written."""
    folder = checkpoint_dir(args)
    for path in [folder / f"{row_id}.npz", *folder.glob(f"{glob.escape(row_id)}@*.npz")]:
        path.unlink(missing_ok=True)
