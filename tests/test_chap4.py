"""Chapter 4: the universality construction built by hand (rows 4.1–4.2) and
the quick run of experiments.chap4."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import chap4
from nndl_jax import layers
from nndl_jax.activations import sigmoid


def test_step_neuron_with_w_1000_at_s_0_2_is_a_step():
    w, b = chap4.step_neuron(0.2, 1000.0)
    assert b == pytest.approx(-200.0)
    x = jnp.linspace(0.0, 1.0, 1001, dtype=jnp.float32)
    a = np.asarray(sigmoid(w * x + b))
    xs = np.asarray(x)
    assert np.all(a[xs < 0.19] < 1e-4)          # σ(−10) ≈ 4.5e-5
    assert np.all(a[xs > 0.21] > 1 - 1e-4)
    assert a[np.argmin(np.abs(xs - 0.2))] == pytest.approx(0.5, abs=1e-3)


def test_bump_pair_has_height_h_on_its_interval_and_zero_outside():
    params = chap4.bump_params(jnp.asarray([0.7], jnp.float32), jnp.asarray([0.3, 0.6], jnp.float32))
    assert params[0]["w"].shape == (1, 2) and params[1]["w"].shape == (2, 1)
    assert float(params[1]["b"][0]) == 0.0
    _, apply = layers.mlp([1, 2, 1], sigmoid)
    x = jnp.asarray([[0.1], [0.28], [0.32], [0.45], [0.58], [0.62], [0.9]], jnp.float32)
    z = np.asarray(apply(params, x))[:, 0]
    np.testing.assert_allclose(z, [0, 0, 0.7, 0.7, 0.7, 0, 0], atol=0.7 * 1e-3)


def test_bump_params_rejects_mismatched_heights():
    with pytest.raises(ValueError, match="heights"):
        chap4.bump_params(jnp.ones(3), jnp.linspace(0.0, 1.0, 3))
    with pytest.raises(ValueError, match="bump"):
        chap4.universality_net(0)
    with pytest.raises(ValueError, match="height rule"):
        chap4.bump_heights(jnp.linspace(0.0, 1.0, 3), "mean")


def test_construction_meets_the_challenge_and_improves_with_more_bumps():
    out, widget = zip(*[chap4.average_deviations(*chap4.universality_net(n)) for n in (5, 10, 20, 50, 100)])
    # the output is within the book's 0.40 at 5 bumps already; measured 0.092
    assert out[0] <= chap4.CHALLENGE and out[0] < 0.15
    # each refinement lowers both measures; measured 100 bumps: 0.0027 / 0.015
    assert all(a > b for a, b in zip(out, out[1:])), out
    assert all(a > b for a, b in zip(widget, widget[1:])), widget
    assert out[-1] < 0.01 and widget[-1] < 0.05
    # the widget's measure at 5 bumps: midpoint heights miss 0.40 (0.496), medians meet it (0.358)
    median = chap4.average_deviations(*chap4.universality_net(5, heights="median"))[1]
    assert median <= chap4.CHALLENGE < widget[0]


def test_quick_run_writes_results(tmp_path):
    chap4.main(["--quick", "--out", str(tmp_path), "--seeds", "2"])
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["chapter"] == "chap4" and res["quick"] and res["seeds"] == [12345678, 12345679]
    rows = {r["id"]: r for r in res["rows"]}
    assert rows["4.1"]["measured"] < 1e-4
    assert rows["4.2.5"]["measured"] <= 0.40 and rows["4.2m.5"]["measured"] <= 0.40
    gd = rows["4.3"]["measured"]
    assert len(gd["runs"]) == 2 and all(0 < d < 0.3 for d in gd["runs"])
    assert res["bumps"]["20"]["output_deviation"] < res["bumps"]["5"]["output_deviation"]
    assert (tmp_path / "universality_error.png").exists()
