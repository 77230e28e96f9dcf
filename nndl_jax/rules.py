"""Stopping rules and learning-rate schedules: small functions ``fit`` applies after each epoch.

A rule is what an optax transformation is, a pair of pure functions over
[K] arrays, ``Rule(init, update, spec)``: its state lives in the run's
``TrainState`` (and so in its checkpoints), so a resumed run stops and
halves η exactly where an uninterrupted one would. ``fit`` applies them in
order after each epoch, to the nets still training; the book's two rules are
here (``early_stopping``, ``plateau_schedule``), each a few lines on one
shared counter of epochs without improvement.
"""
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nndl_jax.checks import positive_int


class Rule(NamedTuple):
    """A per-epoch rule over K nets, in the way an optax transformation is an
    ``(init, update)`` pair: ``init(k) -> state`` (a dict of [K] arrays, part
    of the training state and so of its checkpoints) and ``update(state,
    record, eta) -> (state, eta, done)``, where ``record`` is the epoch's
    record, ``eta`` the nets' learning rates [K] and ``done`` [K] marks nets
    to stop. ``spec`` describes the rule (it is part of a checkpoint's identity)."""

    init: Callable
    update: Callable
    spec: dict


def _plateau_counter(metric):
    """The epochs since each net's best ``metric`` (a strict improvement resets it)."""
    def init(k):
        return {"best": np.full(k, -np.inf), "since_best": np.zeros(k, np.int64)}

    def update(state, record):
        value = np.asarray(record[metric], np.float64)
        improved = value > state["best"]
        return state | {"best": np.where(improved, value, state["best"]),
                        "since_best": np.where(improved, 0, state["since_best"] + 1)}
    return init, update


def early_stopping(n, metric="evaluation_accuracy"):
    """The book's no-improvement-in-n: stop a net after ``n`` epochs without a
    new best ``metric``."""
    n = positive_int(n, "early_stopping_n")
    init, count = _plateau_counter(metric)

    def update(state, record, eta):
        state = count(state, record)
        return state, eta, state["since_best"] >= n
    return Rule(init, update, {"rule": "early_stopping", "n": n, "metric": metric})


def plateau_schedule(n, floor=1 / 128, metric="evaluation_accuracy"):
    """The book's learning-rate schedule: halve a net's η after ``n`` epochs
    without a new best ``metric`` (the count then restarts), and stop the net
    once η has fallen to ``floor`` times its first value."""
    n = positive_int(n, "schedule_n")
    init_count, count = _plateau_counter(metric)

    def init(k):
        return init_count(k) | {"eta0": np.full(k, np.nan)}

    def update(state, record, eta):
        eta = np.asarray(eta)
        state = count(state, record)
        eta0 = np.where(np.isnan(state["eta0"]), eta, state["eta0"])
        plateau = state["since_best"] >= n
        new_eta = np.where(plateau, eta / 2, eta)
        done = plateau & (new_eta <= eta0 * floor * (1 + 1e-6))
        return (state | {"since_best": np.where(plateau, 0, state["since_best"]), "eta0": eta0},
                new_eta, done)
    return Rule(init, update, {"rule": "plateau_schedule", "n": n, "floor": floor, "metric": metric})
