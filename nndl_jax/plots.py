"""Figures of a session's own monitoring: what the book's network2 prints, drawn.

The book's ``network2.Network.SGD`` returns four lists, one number per epoch
for each quantity that was monitored and an empty list for the others:

    evaluation_cost, evaluation_accuracy, training_cost, training_accuracy = net.SGD(...)

Chapter 3 draws such lists by hand (the book's ``fig/overfitting.py``);
``monitoring_figure`` draws them in one call: the costs in one panel, the
accuracies in the other, against the epoch numbered from 0 as the book's
printout numbers it ("Epoch 0 training complete").

matplotlib is an extra (``pip install "nndl-jax[plots]"``), so it is imported
inside the function, and the figure is a plain ``matplotlib.figure.Figure``
(no pyplot state): a notebook shows it, ``fig.savefig(path)`` writes it.
"""
import math
import numbers

MONITORED = ("evaluation_cost", "evaluation_accuracy", "training_cost", "training_accuracy")


class MonitoringError(ValueError):
    """The lists given are not what network2's SGD returns (what to pass is in the message)."""


def monitoring_figure(monitoring, *, evaluation_size=None, training_size=None, title=None):
    """A Figure of a session's monitoring: network2's SGD's 4-tuple, or network3's ``net.history``.

    ``monitoring``: ``(evaluation_cost, evaluation_accuracy, training_cost,
    training_accuracy)`` as network2's SGD returns it, each a list with one
    number per epoch, or empty when not monitored (a dict with those names
    works too). Its accuracies are counts of correct images; give
    ``evaluation_size`` / ``training_size`` (the number of images) to draw them
    in percent instead. Or the ``history`` dict a network3 net keeps after
    SGD: its validation and test accuracies (fractions) are drawn in percent.

    One panel for the costs and one for the accuracies (a panel only when
    something in it was monitored); the x axis is the epoch from 0, as the book
    prints it. Raises ``MonitoringError`` (a ValueError) for input that is not
    such lists, lists of different lengths, or nothing monitored at all.
    """
    if isinstance(monitoring, dict) and "validation_accuracy" in monitoring:
        series, units = network3_series(monitoring), {"accuracy": " (%)"}
    else:
        series = monitored_series(monitoring)
        units = {"cost": "", "accuracy": _in_percent(series, {"evaluation": _size(evaluation_size, "evaluation_size"),
                                                              "training": _size(training_size, "training_size")})}
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("monitoring_figure needs matplotlib: pip install \"nndl-jax[plots]\"") from e
    panels = [kind for kind in ("cost", "accuracy") if any(name.endswith(kind) for name in series)]
    fig = Figure(figsize=(5.5 * len(panels), 4.0), layout="constrained")
    for ax, kind in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _draw_panel(ax, kind, {n: v for n, v in series.items() if n.endswith(kind)}, units[kind])
    if title:
        fig.suptitle(title)
    return fig


def network3_series(history):
    """``{"validation_accuracy": [%], "test_accuracy": [%]}`` from a network3 net's
    ``history`` (fractions per epoch), checked as network2's lists are."""
    names = ("validation_accuracy", "test_accuracy")
    series = monitored_series({name: history.get(name, []) for name in names}, names)
    bad = [v for values in series.values() for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise MonitoringError(f"network3's history holds accuracies as fractions in [0, 1]; got {bad[0]!r}")
    return {name: [100.0 * v for v in values] for name, values in series.items()}


def monitored_series(monitoring, names=MONITORED):
    """``{name: [float, ...]}`` of the monitored (non-empty) lists, in the book's
    order, checked: lists of numbers (network2's four: ``names``), the non-empty
    ones of one length."""
    lists = _lists(monitoring, names)
    series = {}
    for name, values in zip(names, lists):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise MonitoringError(f"{name} must be a list of numbers, one per epoch; got {type(values).__name__}")
        if len(values) == 0:
            continue
        if not all(isinstance(v, numbers.Real) or _is_scalar_array(v) for v in values):
            raise MonitoringError(f"{name} must hold one number per epoch; got {list(values)[:3]!r}...")
        series[name] = [float(v) for v in values]
    if not series:
        raise MonitoringError("nothing was monitored: all four lists are empty. Call SGD with "
                              "monitor_evaluation_accuracy=True (or another monitor_... flag) "
                              "and pass what it returns.")
    lengths = {name: len(v) for name, v in series.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
        raise MonitoringError(f"the monitored lists must have one value per epoch each, but their lengths "
                              f"differ ({listed}); pass the four lists of one SGD call, in its order.")
    return series


def _lists(monitoring, names):
    """The lists in the order of ``names``, from SGD's tuple or a dict keyed by their names."""
    if isinstance(monitoring, dict):
        unknown = sorted(set(monitoring) - set(names))
        if unknown:
            raise MonitoringError(f"unknown names {unknown}; the monitored lists are named {list(names)}")
        return [monitoring.get(name, []) for name in names]
    if isinstance(monitoring, (str, bytes)) or not hasattr(monitoring, "__len__") or len(monitoring) != 4:
        got = f"{len(monitoring)} items" if hasattr(monitoring, "__len__") else type(monitoring).__name__
        raise MonitoringError("monitoring_figure takes the four lists network2's SGD returns, "
                              f"(evaluation_cost, evaluation_accuracy, training_cost, training_accuracy); got {got}.")
    return list(monitoring)


def _is_scalar_array(v):
    """A NumPy or JAX scalar (shape ()) holding a real number."""
    return getattr(v, "shape", None) == () and getattr(getattr(v, "dtype", None), "kind", "") in "iuf"


def _size(n, name):
    """An image count (a positive int) or None."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise MonitoringError(f"{name} must be the number of images (a positive integer), got {n!r}")
    return int(n)


def _in_percent(series, sizes):
    """Turn network2's accuracy counts into percent where the sizes are given, in
    place; the accuracy axis' unit. Counts must lie in [0, size] (else any count
    >= 0), and both accuracies or neither go to percent, so one axis never mixes
    counts and percents."""
    accuracies = [data for data in ("evaluation", "training") if f"{data}_accuracy" in series]
    if len(accuracies) == 2 and (sizes["evaluation"] is None) != (sizes["training"] is None):
        raise MonitoringError("both accuracies were monitored: give evaluation_size and training_size "
                              "(percent), or neither (counts of correct images)")
    for data in accuracies:
        values, size = series[f"{data}_accuracy"], sizes[data]
        bad = [v for v in values if not math.isfinite(v) or v < 0 or (size and v > size)]
        if bad:
            within = f" out of {data}_size={size}" if size else ""
            raise MonitoringError(f"{data}_accuracy must count correct images{within}; got {bad[0]!r}")
        if size:
            series[f"{data}_accuracy"] = [100.0 * v / size for v in values]
    percent = any(sizes[data] for data in accuracies)
    return " (%)" if percent else " (images correct)"


def _draw_panel(ax, kind, series, unit):
    """One panel: each ``<data>_<kind>`` line of ``series`` against the epoch from 0."""
    for name, values in series.items():
        ax.plot(range(len(values)), values, marker="." if len(values) < 40 else None,
                label=f"{name.split('_')[0]} data")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))           # epochs are whole numbers
    ax.set_xlabel("epoch (numbered from 0, as the book prints it)")
    ax.set_ylabel(f"{kind}{unit}")
    ax.set_title(f"{kind.capitalize()} per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
