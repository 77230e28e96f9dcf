"""Watching ``train.fit`` from outside: what each fit runs, how long each
part of its epochs takes, and, when asked, an early end.

The time probe (``experiments/probe.py``) runs each of the book's jobs through
its own code inside ``watch_fits``: a few epochs of each training tell its
rate, which the probe scales to the book's epochs and data. Nothing changes
for a fit that no watch sees (the default): no extra waits, no early end.

    with watch_fits(enough=lambda fit: fit.epochs_run >= 3) as fits:
        train.fit(...)
    fits[0].steady()      # seconds an epoch after the first: train, evaluate, rest

Imports nothing from the package (``train`` imports it).
"""
import contextlib
import time
from dataclasses import dataclass, field

_OPEN = []   # (the list of a watch_fits block, its ``enough``), innermost last


@dataclass
class WatchedFit:
    """One ``fit`` call as a watch saw it.

    ``epochs``: the epochs asked for; ``nets``: K; ``examples``: training
    examples; ``evaluation``: {set name: examples}; ``rules``: the rules' specs
    (a rule may end the fit before ``epochs``). Per epoch run, in order:
    ``train`` (seconds of the epoch's steps, waited for), ``evaluate`` ({set:
    seconds}), ``total`` (seconds from the end of the previous epoch, for the
    first from the call of ``fit``, to the end of this epoch's ``on_epoch``:
    the first holds the set-up and the compiling). ``ended_early``: ``enough``
    ended it with epochs and active nets left."""

    epochs: int
    nets: int
    examples: int
    evaluation: dict
    rules: list
    started: float = field(default_factory=time.perf_counter)
    train: list = field(default_factory=list)
    evaluate: list = field(default_factory=list)
    total: list = field(default_factory=list)
    ended_early: bool = False

    @property
    def epochs_run(self):
        return len(self.total)

    def epoch_ended(self):
        """An epoch's end, after its ``on_epoch``: its ``total`` recorded."""
        now = time.perf_counter()
        self.total.append(now - self.started - sum(self.total))

    def steady(self):
        """The mean seconds of an epoch after the first (which compiles): a dict
        ``train``, ``evaluate`` ({set: seconds}), ``rest`` (bookkeeping, the
        checkpoint, ``on_epoch``) and ``total``; None when fewer than two epochs ran."""
        if self.epochs_run < 2:
            return None
        n = self.epochs_run - 1
        train = sum(self.train[1:]) / n
        evaluate = {name: sum(e.get(name, 0.0) for e in self.evaluate[1:]) / n for name in self.evaluation}
        total = sum(self.total[1:]) / n
        return {"train": train, "evaluate": evaluate, "rest": max(total - train - sum(evaluate.values()), 0.0),
                "total": total}


@contextlib.contextmanager
def watch_fits(enough=None):
    """Within the block every ``fit`` is watched: a ``WatchedFit`` per call is
    appended to the list this yields, filled in as its epochs run. ``enough(fit)``,
    called after each epoch, ends the fit there when it says True, as if that
    epoch had been its last (the caller gets the epochs run so far). The parts
    of an epoch are timed apart, so a watched fit waits for the device between
    them."""
    fits = []
    _OPEN.append((fits, enough))
    try:
        yield fits
    finally:
        _OPEN.remove((fits, enough))


def watching(**facts):
    """A ``WatchedFit`` of ``facts`` for a fit starting now, appended to every
    open watch; None when no watch is open (``fit`` then times nothing)."""
    if not _OPEN:
        return None
    fit = WatchedFit(**facts)
    for fits, _ in _OPEN:
        fits.append(fit)
    return fit


def had_enough(fit):
    """Whether an open watch asks ``fit`` to end after the epoch just run."""
    return any(enough is not None and enough(fit) for _, enough in _OPEN)
