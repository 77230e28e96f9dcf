"""nndl_jax.plots.monitoring_figure: what it draws from network2's four lists, and
the errors for input that is not those lists. Tiny fake histories; no training."""
import matplotlib
import numpy as np
import pytest

from nndl_jax import plots
from nndl_jax.plots import MonitoringError, monitoring_figure

matplotlib.use("Agg")

# network2.SGD's return value for 3 epochs with evaluation cost and accuracy and training cost
# monitored, training accuracy not: (evaluation_cost, evaluation_accuracy, training_cost, training_accuracy)
HISTORY = ([0.9, 0.7, 0.65], [9100, 9300, 9350], [1.3, 0.93, 0.8], [])


def lines(ax):
    """{legend label: (xs, ys)} of an Axes' lines."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_costs_and_accuracies_are_drawn_against_the_epoch_from_0():
    fig = monitoring_figure(HISTORY, title="one session")
    cost_ax, accuracy_ax = fig.axes
    assert lines(cost_ax) == {"evaluation data": ([0, 1, 2], [0.9, 0.7, 0.65]),
                              "training data": ([0, 1, 2], [1.3, 0.93, 0.8])}
    assert lines(accuracy_ax) == {"evaluation data": ([0, 1, 2], [9100.0, 9300.0, 9350.0])}
    assert cost_ax.get_ylabel() == "cost" and accuracy_ax.get_ylabel() == "accuracy (images correct)"
    assert all("from 0" in ax.get_xlabel() for ax in fig.axes)
    assert all(float(t).is_integer() for t in cost_ax.get_xticks())          # whole epochs only
    assert [t.get_text() for t in accuracy_ax.get_legend().get_texts()] == ["evaluation data"]
    assert fig.get_suptitle() == "one session"


def test_sizes_turn_the_counts_into_percent():
    history = ([], [90, 95], [], [450, 480])
    fig = monitoring_figure(history, evaluation_size=100, training_size=500)
    (ax,) = fig.axes                                            # no cost was monitored: one panel
    assert ax.get_ylabel() == "accuracy (%)"
    drawn = lines(ax)
    np.testing.assert_allclose(drawn["evaluation data"][1], [90.0, 95.0])
    np.testing.assert_allclose(drawn["training data"][1], [90.0, 96.0])


def test_a_dict_and_numpy_scalars_are_accepted():
    fig = monitoring_figure({"training_cost": [np.float32(0.5), np.float64(0.25)]})
    assert lines(fig.axes[0]) == {"training data": ([0, 1], [0.5, 0.25])}


def test_network3s_history_is_drawn_in_percent():
    history = {"seed": 7, "num_training_batches": 5000, "validation_accuracy": [0.9577, 0.9716],
               "test_accuracy": [0.9541, 0.9699], "best_validation_accuracy": 0.9716}
    (ax,) = monitoring_figure(history).axes
    assert ax.get_ylabel() == "accuracy (%)"
    drawn = lines(ax)
    assert list(drawn) == ["validation data", "test data"] and drawn["test data"][0] == [0, 1]
    np.testing.assert_allclose(drawn["validation data"][1], [95.77, 97.16])
    np.testing.assert_allclose(drawn["test data"][1], [95.41, 96.99])
    with pytest.raises(MonitoringError, match=r"fractions in \[0, 1\]; got 95.77"):
        monitoring_figure({"validation_accuracy": [95.77], "test_accuracy": [95.41]})
    with pytest.raises(MonitoringError, match=r"lengths differ \(validation_accuracy 2, test_accuracy 1\)"):
        monitoring_figure({"validation_accuracy": [0.9, 0.95], "test_accuracy": [0.9]})


def test_the_figure_saves_as_png(tmp_path):
    monitoring_figure(HISTORY).savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad, says", [
    (([0.9, 0.7], [9100, 9300, 9350], [], []), r"lengths differ \(evaluation_cost 2, evaluation_accuracy 3\)"),
    (([], [], [], []), "nothing was monitored"),
    (([0.9, 0.7], [9100, 9300]), "the four lists network2's SGD returns.*got 2 items"),
    ("abcd", "the four lists network2's SGD returns"),
    (([0.9], ["x"], [], []), "evaluation_accuracy must hold one number per epoch"),
    (([0.9], 5, [], []), "evaluation_accuracy must be a list of numbers"),
    ({"test_accuracy": [1]}, r"unknown names \['test_accuracy'\]"),
])
def test_input_that_is_not_sgds_four_lists_is_refused_saying_what_to_pass(bad, says):
    with pytest.raises(MonitoringError, match=says):
        monitoring_figure(bad)


def test_counts_beyond_the_size_and_half_given_sizes_are_refused():
    with pytest.raises(MonitoringError, match="out of evaluation_size=100"):
        monitoring_figure(([], [90, 101], [], []), evaluation_size=100)
    with pytest.raises(MonitoringError, match="give evaluation_size and training_size"):
        monitoring_figure(([], [90], [], [450]), evaluation_size=100)
    with pytest.raises(MonitoringError, match="positive integer"):
        monitoring_figure(HISTORY, evaluation_size=0)


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install \"nndl-jax\[plots\]\""):
        plots.monitoring_figure(HISTORY)
