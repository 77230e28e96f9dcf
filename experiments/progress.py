"""The progress lines every chapter prints while it trains (one printer,
`progress`), the per-epoch metrics log beside the results, and the small
helpers that format numbers for them.
"""
import contextlib
import json
import re
import time
from pathlib import Path

from experiments import report, session
from nndl_jax import files


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
    if not session.is_main_process():
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
    leaves them out (the run's session keeps which were shown)."""
    print("\n" + report.format_table(rows) + "\n", flush=True)
    args.session.shown.setdefault(args.run_id, set()).update(r["id"] for r in rows)


def plural(n, word):
    """"1 epoch", "30 epochs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def say_start(args, loading="MNIST"):
    """A chapter run's first line, before its first wait: the devices JAX
    computes on, and what is loaded (``loading``: "MNIST"; None: nothing).
    Starting JAX and reading MNIST take seconds to a minute on a busy machine,
    and a run should not start with a silence. Said as the façades say theirs
    (``nndl_jax.waits.say``), at every run."""
    from nndl_jax import waits
    if session.is_main_process():
        waits.say(args.chapter, f"loading {loading}" if loading else None, on_devices="computing")


def numbers(values, fmt="{:.4g}"):
    """A list of numbers as text for a progress line, each rounded by ``fmt``."""
    import numpy as np
    return " ".join(fmt.format(v) for v in np.asarray(values).ravel().tolist())
