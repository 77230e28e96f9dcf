"""experiments.chap3 --quick: every row runs through the real code and the
results JSON says what it should; --x64 trains in float64."""
import json

import jax
import numpy as np
import pytest

from experiments import chap3
from nndl_jax import train


def neuron_reference(cost, w, b, eta, epochs):
    """The book's single neuron in NumPy float64: input 1, target 0, one
    gradient step per epoch; its output at epochs 0..epochs."""
    outputs = []
    for _ in range(epochs + 1):
        a = 1.0 / (1.0 + np.exp(-(w * 1.0 + b)))
        outputs.append(a)
        delta = a * a * (1 - a) if cost == "quadratic" else a   # dC/dz for target 0
        w, b = w - eta * delta * 1.0, b - eta * delta
    return np.array(outputs)


def test_chap3_quick_writes_every_row(tmp_path, mnist_dir):
    chap3.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "2"])
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["chapter"] == "chap3" and out["quick"] is True
    assert out["seeds"] == [12345678, 12345679] and out["x64"] is False
    ids = [r["id"] for r in out["rows"]]
    for spec in chap3.ROWS:  # every row of the table produced at least one line
        assert any(i == spec["id"] or i.startswith(spec["id"]) for i in ids), spec["id"]
    assert "3.5" in ids and "3.14@100" in ids and "3.14@500" in ids and "3.15@300" in ids
    by_id = {r["id"]: r for r in out["rows"]}
    assert all(r["note"].startswith("SHORTENED") for r in out["rows"])    # quick rows never pass for the book's
    for rid in ("3.2", "3.4", "3.10a", "3.14@100", "3.17d"):
        m = by_id[rid]["measured"]
        assert len(m["runs"]) == 2 and all(0.0 <= v <= 100.0 for v in m["runs"])
        assert m["best"] == max(m["runs"])
    assert by_id["3.2"]["book"] == 95.49 and by_id["3.2"]["set"] == "test"
    assert by_id["3.8"]["set"] == "validation"
    # the quick runs learn something: better than chance on 500 test images
    assert by_id["3.2"]["measured"]["mean"] > 30.0
    # multiple η: three curves of training cost, one per η, from one program
    eta_rows = [by_id[f"3.18{c}"] for c in "abc"]
    assert all(len(r["curve"]) == 3 and len(r["curve"][0]) == 2 for r in eta_rows)
    # the overfitting row records the four monitoring curves
    assert set(by_id["3.4"]["curves"]) == {"evaluation_cost", "evaluation_accuracy",
                                           "training_cost", "training_accuracy"}
    # early stopping / schedule record how long they ran; early stopping runs for n = 10, 20, 50
    for n in (10, 20, 50):
        assert all(1 <= e <= 12 for e in by_id[f"3.20@{n}"]["stopped_after_epochs"])
    # 3.1, the single neuron, runs at the book's setting even in --quick: the quadratic cost
    # from w = b = 2 stalls, the cross-entropy does not; outputs as the book quotes them
    neuron = {c: by_id[f"3.1{c}"] for c in "abcd"}
    assert [r["cost"] for r in neuron.values()] == ["quadratic"] * 2 + ["cross_entropy"] * 2
    assert neuron["a"]["output_start"] == pytest.approx(0.82, abs=0.005)     # book: 0.82
    assert neuron["a"]["measured"] == pytest.approx(0.09, abs=0.005)         # book: ≈ 0.09 after 300
    assert neuron["b"]["output_start"] == pytest.approx(0.98, abs=0.005)     # book: 0.98
    assert 100 <= neuron["b"]["measured"] <= 250 and neuron["b"]["book"] == 150   # book: ~150 epochs
    assert neuron["d"]["measured"] == 0 and neuron["c"]["stall_epochs"] == 0
    for r in neuron.values():
        assert len(r["output"]) == 301 and r["dtype"] == "float32"
        np.testing.assert_allclose(r["output"], neuron_reference(r["cost"], r["w0"], r["b0"], r["eta"], 300),
                                   rtol=1e-4)   # float32 against the float64 reference
    # 3.10 with 100 hidden neurons: both initializations, after epoch 1 and final
    assert [i for i in ids if i.startswith("3.10-100")] == [f"3.10-100{c}" for c in "abcd"]  # id order
    assert by_id["3.10-100c"]["book"] == 97.81 and len(by_id["3.10-100c"]["curve"]) == 3
    # the exercises' sweeps: a row per λ (L1) and per μ (momentum), each against the first value
    for rid, name, values in (("3.12", "lmbda", (0, 0.1, 0.3, 1, 3, 10, 30)),
                              ("3.22", "momentum", (0, 0.25, 0.5, 0.75, 0.9))):
        sweep = [by_id[f"{rid}@{v:g}"] for v in values]
        assert [r[name] for r in sweep] == list(values)
        assert all(len(r["measured"]["runs"]) == 2 and r["book"] is None for r in sweep)
        assert "; peak − peak at" in sweep[0]["note"]
    # a strong L1 penalty costs accuracy; some momentum speeds up the 3 quick epochs at η 0.1
    assert by_id["3.12@30"]["measured"]["mean"] < by_id["3.12@0"]["measured"]["mean"]
    assert by_id["3.22@0.5"]["measured"]["mean"] > by_id["3.22@0"]["measured"]["mean"]
    for name in ("overfitting_evaluation_accuracy", "weight_initialization_30", "multiple_eta",
                 "more_data_log", "more_data_svm_linear", "neuron_quadratic", "neuron_cross_entropy",
                 "weight_initialization_100", "l1_sweep", "momentum_sweep"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_chap3_only_filters_rows(tmp_path, mnist_dir):
    chap3.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "1",
                "--only", "3.17"])
    out = json.loads((tmp_path / "results.json").read_text())
    assert [r["id"] for r in out["rows"]] == ["3.17a", "3.17b", "3.17c", "3.17d"]


@pytest.fixture
def x64_restored():
    """--x64 switches JAX to float64 for the process, as a run from the shell
    wants; restore the setting so the other tests stay in float32."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def test_x64_trains_and_reports_in_float64(tmp_path, mnist_dir, monkeypatch, x64_restored):
    """--x64: params and optimizer state come out of every fit in float64, the
    results JSON says so, and the single neuron agrees with the book's rule in
    NumPy float64 to 1e-10, which float32 arithmetic could not (its 300 steps
    agree to about 1e-6)."""
    trained = []
    real_fit = train.fit

    def fit_and_record_dtypes(*args, **kwargs):
        params, opt_state, history = real_fit(*args, **kwargs)
        trained.append({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves((params, opt_state))
                        if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)})
        return params, opt_state, history

    monkeypatch.setattr(train, "fit", fit_and_record_dtypes)
    # standard promotion, as a run from the shell has: train.evaluate compares argmax (int64
    # under x64) with int32 labels, which strict promotion refuses (an integer mix only)
    with jax.numpy_dtype_promotion("standard"):
        chap3.main(["--quick", "--x64", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "2",
                    "--only", "3.1", "3.7"])
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["x64"] is True
    assert len(trained) == 3 and all(dtypes == {"float64"} for dtypes in trained), trained  # 2 neuron fits + 3.7
    by_id = {r["id"]: r for r in out["rows"]}
    assert 0.0 < by_id["3.7"]["measured"]["mean"] <= 100.0
    for c in "abcd":
        r = by_id[f"3.1{c}"]
        assert r["dtype"] == "float64"
        np.testing.assert_allclose(r["output"], neuron_reference(r["cost"], r["w0"], r["b0"], r["eta"], 300),
                                   rtol=1e-10, atol=0)
