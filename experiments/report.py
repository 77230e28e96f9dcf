"""What every chapter's table and figures share: a row (the book's number
beside the measured one), the table as text and as Markdown, the figures and
the book's recorded curves.

The results store (results.json) is ``experiments.store``; the command line,
the row driver and the progress lines are ``experiments.driver``.
"""
import json
import os
import textwrap
from pathlib import Path

import numpy as np

from experiments import store

REPO = Path(__file__).resolve().parent.parent


def direction(r):
    """Which way a row's runs are better: "higher", "lower" or "none" (no
    "best" at all, e.g. gradient norms). Rows that do not say: percentages
    are "higher", other units "none"."""
    return r.get("direction") or ("higher" if r.get("unit") == "%" else "none")


def summarize(values, direction="higher"):
    """mean, spread (standard deviation over runs), best (by ``direction``;
    None when "none"), min, runs: of a list of numbers."""
    v = np.asarray(values, dtype=float).ravel()
    best = {"higher": v.max(), "lower": v.min()}.get(direction)
    return {"mean": float(v.mean()), "std": float(v.std()), "best": None if best is None else float(best),
            "min": float(v.min()), "runs": [float(x) for x in v]}


def row(row_id, experiment, book, measured, *, unit="%", note="", direction=None, **extra):
    """One line of a chapter's table: the book's figure beside the measured one.

    ``measured`` is a list of per-run values (summarized as mean ± spread and
    best) or a single number; ``book`` is a number, or None where the book
    gives none. ``direction``: which way is better ("higher", "lower",
    "none"); by default "higher" for percentages and "none" otherwise.
    """
    r = {"id": row_id, "experiment": experiment, "book": book, "unit": unit, "note": note}
    r["direction"] = direction or ("higher" if unit == "%" else "none")
    if measured is not None and np.ndim(measured) > 0:
        r["measured"] = summarize(measured, r["direction"])
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
    """(measured, best-of-k) of a row as text: "95.02% ± 0.08", "95.10% (3)".
    A single number, and a row whose direction is "none", have no best-of-k;
    the best is taken from the runs by the row's direction."""
    m, u = r["measured"], r["unit"]
    if not isinstance(m, dict):
        return _fmt(m, u), ""
    sd = f"{m['std']:.2f}" if u == "%" else f"{m['std']:.2g}"
    best = {"higher": max, "lower": min}.get(direction(r))
    return f"{_fmt(m['mean'], u)} ± {sd}", "" if best is None else f"{_fmt(best(m['runs']), u)} ({len(m['runs'])})"


EXPERIMENT_WIDTH = 58


def format_table(rows):
    """The table as text: id (as wide as the longest), experiment (wrapped at
    word boundaries), book, measured mean ± spread, best-of-k; notes wrapped below."""
    idw = max([2] + [len(r["id"]) for r in rows])
    head = (f"{'id':<{idw}} {'experiment':<{EXPERIMENT_WIDTH}} {'book':>9} {'measured (mean ± sd)':>22} "
            f"{'best-of-k':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        meas, best = measured_text(r)
        text = textwrap.wrap(r["experiment"], EXPERIMENT_WIDTH) or [""]
        lines.append(f"{r['id']:<{idw}} {text[0]:<{EXPERIMENT_WIDTH}} {_fmt(r['book'], r['unit']):>9} "
                     f"{meas:>22} {best:>10}")
        lines += [f"{'':<{idw}} {more}" for more in text[1:]]
        if r.get("note"):
            lines += textwrap.wrap(r["note"], len(head), initial_indent=" " * (idw + 3),
                                   subsequent_indent=" " * (idw + 3))
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


def significant(values, digits=4):
    """``values`` (nested lists or an array) as nested lists of floats rounded to
    ``digits`` significant digits: long per-epoch series stay small in results.json."""
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(np.asarray(values, float)).tolist()


def duration(seconds):
    """"1 h 6 min", "1 min 15 s", "12 s", "0.4 s": a span of seconds for a progress line."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


# --- figures ---------------------------------------------------------------------------

_ANNOUNCED = set()  # figures whose "wrote" line this process printed: each file is announced once


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
    """Save a figure atomically (``store.atomic_write``) and close it; the
    first save of a file in this process says so."""
    if fig is None:
        return
    import matplotlib.pyplot as plt
    fig.tight_layout()
    store.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    if Path(path).resolve() not in _ANNOUNCED:
        _ANNOUNCED.add(Path(path).resolve())
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
