"""What every chapter's table and figures share: a row (the book's number
beside the measured one), the table as text and as Markdown, the figures and
the book's recorded curves.

Also what REPORT.md (``experiments.reproduce``) takes from here: text from
results files written as data (``markdown_text``, ``code_span``: a recorded
command line cannot start a heading or a link), and the wall time of runs
(``wall_seconds``, ``wall_text``: runs side by side count once, the parts of
one plan as their longest part). Results files are read by ``store.read_results``.

The results store (results.json) is ``experiments.store``; the command line
and the row driver are ``experiments.driver``, the progress lines ``experiments.progress``.
"""
import datetime
import json
import os
import re
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


def measured_cells(r):
    """(measured, best-of-k) of a row as the table's two cells: "95.02% ± 0.08", "95.10% (3)".
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
        meas, best = measured_cells(r)
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
    sd, best of k (runs), and the row's note; each cell is data (``markdown_text``)."""
    head = ["id", "experiment", "book", "measured (mean ± sd)", "best of k"] + (["note"] if notes else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        meas, best = measured_cells(r)
        cells = [r["id"], r["experiment"], _fmt(r["book"], r["unit"]), meas, best] + (
            [r.get("note", "")] if notes else [])
        lines.append("| " + " | ".join(markdown_text(c) for c in cells) + " |")
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

def figure(args, name):
    """A new matplotlib figure and the path it will be saved to; None, None when
    matplotlib is not installed (the results JSON is still written). The
    figure carries the run session's ``announce`` (``args.session``, when
    ``args`` has one), which `save` asks whether to say it wrote the file."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(matplotlib is not installed: skipping {name}.png; pip install 'nndl-jax[plots]')")
        return None, None
    fig = plt.figure(figsize=(7, 4.5))
    session = getattr(args, "session", None)
    fig.nndl_announce = session.announce if session is not None else None
    return fig, Path(args.out) / f"{name}.png"


def save(fig, path):
    """Save a figure atomically (``store.atomic_write``) and close it; the
    first save of a file in a command says so (the figure's session: `figure`;
    a figure made elsewhere, every save)."""
    if fig is None:
        return
    import matplotlib.pyplot as plt
    fig.tight_layout()
    store.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    announce = getattr(fig, "nndl_announce", None)
    if announce is None or announce(path):
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


# --- REPORT.md: text from results files as data, files read, wall times ---------------------

_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def markdown_text(text):
    """``text`` from a results file as plain Markdown text that shows as it is:
    on one line (a line break could start a heading, a list or a table row),
    with backslashes, ``<`` and ``>`` (HTML, autolinks), the ``]`` that would
    close a link or image (``](``, ``][``) and ``|`` (a table cell) escaped. (A
    reference definition ``[x]: url`` needs a line of its own: none is left.)"""
    text = _LINE_BREAKS.sub(" ", str(text))
    text = text.replace("\\", "\\\\").replace("<", "\\<").replace(">", "\\>").replace("|", "\\|")
    return re.sub(r"\](?=[(\[])", r"\\]", text)


def code_span(text):
    """``text`` from a results file (a recorded command line) as one inline code
    span: control characters shown escaped (a newline as ``\\n``), fenced by one
    backtick more than the longest run it holds, so it can neither end early
    nor start a heading, and Markdown inside it stays literal."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith(("`", " ")) or text.endswith(("`", " ")) \
        else f"{fence}{text}{fence}"


def run_interval(run):
    """(start, end) in seconds since the epoch of a recorded run, from the
    start time its id begins with and its wall_seconds; None when the id does
    not start with a time (results written before run ids did)."""
    try:
        start = datetime.datetime.fromisoformat(run["id"].split(" pid ")[0]).timestamp()
    except (KeyError, ValueError, AttributeError):
        return None
    return start, start + run.get("wall_seconds", 0)


def wall_clock_seconds(runs):
    """The wall time ``runs`` took together: the length of the union of their
    intervals, so two runs side by side (one per core) count once; a run with
    no start time adds its wall_seconds."""
    intervals = [(run, run_interval(run)) for run in runs]
    spans = sorted(span for _, span in intervals if span is not None)
    total = sum(run.get("wall_seconds", 0) for run, span in intervals if span is None)
    end = None
    for a, b in spans:
        if end is None or a > end:
            total, end = total + b - a, b
        elif b > end:
            total, end = total + b - end, b
    return total


def plan_parts(runs):
    """``runs`` split into (the runs of no part, {plan: {part "I/N": its runs}})
    by the ``part`` entry that ``--part`` records in a run (``nndl-jax merge``
    keeps every part's runs)."""
    alone, plans = [], {}
    for run in runs:
        part = run.get("part")
        if isinstance(part, dict) and part.get("part"):
            plans.setdefault(part.get("plan"), {}).setdefault(str(part["part"]), []).append(run)
        else:
            alone.append(run)
    return alone, plans


def wall_seconds(runs):
    """(wall, compute, parts) of ``runs``: the parts of one plan ran on machines
    of their own, at once, so together they take their longest part's time (each
    part's own sittings as their union); other runs take the union of their
    intervals. ``compute``: every run's wall_seconds summed; ``parts``: how many
    parts the runs came from (0: none)."""
    alone, plans = plan_parts(runs)
    wall = wall_clock_seconds(alone) + sum(max(map(wall_clock_seconds, parts.values())) for parts in plans.values())
    compute = sum(run.get("wall_seconds", 0) for run in runs)
    return wall, compute, sum(map(len, plans.values()))


def wall_text(runs, rows=()):
    """"3 h 2 min wall", with what it holds in brackets: for parts, that it is the
    longest part, and the compute time of all of them; where runs ran side by
    side (one per core), their summed time; where ``rows`` were resumed over
    several sittings, the earlier sittings (``earlier_seconds``, added to both
    times) and the restored epochs that no timing covers (``untimed_epochs``)."""
    earlier = sum(r.get("earlier_seconds", 0) for r in rows)
    wall, compute, parts = wall_seconds(runs)
    wall, compute = wall + earlier, compute + earlier
    if parts:
        notes = [f"the longest of {parts} parts; {duration(compute)} of compute in all" if parts > 1
                 else f"one part; {duration(compute)} of compute"]
    else:
        notes = [f"{duration(compute)} of runs, some side by side"] if compute - wall >= 1 else []
    notes += list(filter(None, [resumed_text(rows)]))
    return f"{duration(wall)} wall" + (f" ({'; '.join(notes)})" if notes else "")


def resumed_text(rows):
    """What the wall time of a chapter's line holds beyond its runs: rows
    resumed over several sittings add their earlier sittings' epochs
    (``earlier_seconds``); epochs restored from a checkpoint older than the
    epoch timing (``untimed_epochs``) are not in it. "" when no row was resumed."""
    resumed = [r for r in rows if r.get("earlier_seconds") or r.get("untimed_epochs")]
    if not resumed:
        return ""
    untimed = sum(r.get("untimed_epochs", 0) for r in resumed)
    return (f"with the earlier sittings of {len(resumed)} resumed row{'s' * (len(resumed) > 1)}"
            + (f"; {untimed} epochs restored from checkpoints that predate epoch timing are not counted"
               if untimed else ""))
