"""Self-tests of the NumPy float64 backprop reference (nndl_jax/backprop.py).

The reference must be right on its own before it can judge jax.grad, so it is
checked three ways: the per-example algorithm against the matrix one, both
against central finite differences of the cost, and SGD and conv-pool against
numbers written out by hand. NumPy only, float64.

Relative errors are norm-wise over the whole gradient:
    rel(g, h) = ‖g − h‖ / max(‖g‖, ‖h‖)
"""
import itertools

import numpy as np
import pytest

from nndl_jax import backprop as bp

COSTS = ["quadratic", "cross_entropy", "log_likelihood"]
ACTIVATIONS = ["sigmoid", "tanh", "relu", "linear"]
PENALTIES = [None, "l2", "l1"]
SIZES = [[3, 4, 2], [5, 6, 4, 3], [4, 3]]
C = 0.05          # penalty coefficient used in the gradient tests
H = 1e-6          # finite-difference step
KINK_MARGIN = 1e-3  # no relu input z, and (for L1) no weight, lies this close to 0


def rel(g, h):
    g, h = np.ravel(g), np.ravel(h)
    scale = max(np.linalg.norm(g), np.linalg.norm(h))
    return np.linalg.norm(g - h) / scale if scale > 0 else 0.0


def flat(grads):
    return np.concatenate([np.concatenate([g["w"].ravel(), g["b"].ravel()]) for g in grads])


def add(g1, g2):
    return [{k: a[k] + b[k] for k in ("w", "b")} for a, b in zip(g1, g2)]


def init(sizes, rng):
    return [{"w": rng.normal(size=(n_in, n_out)), "b": rng.normal(size=n_out)}
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def targets(cost, m, n_out, rng):
    """One-hot rows for log_likelihood (its δ^L = a − y needs Σy = 1); otherwise
    targets in (0, 1), which the quadratic and cross-entropy costs allow."""
    if cost == "log_likelihood":
        return np.eye(n_out)[rng.integers(n_out, size=m)]
    return rng.uniform(size=(m, n_out))


def problem(sizes, cost, m=5):
    """A net, a batch and targets. The seed is the first (from 0) for which no
    hidden z lies within KINK_MARGIN of the relu kink and no weight lies within
    KINK_MARGIN of the L1 kink, so central differences never straddle a kink
    (a change of h = 1e-6 in one parameter moves each z by far less than 1e-3).
    The same data are used for every activation and penalty."""
    for seed in itertools.count():
        rng = np.random.default_rng(seed)
        params = init(sizes, rng)
        X = rng.normal(size=(m, sizes[0]))
        Y = targets(cost, m, sizes[-1], rng)
        zs, _ = bp._forward_storing(params, X, "relu")
        hidden = np.concatenate([z.ravel() for z in zs[:-1]] + [np.ones(1)])
        weights = np.concatenate([p["w"].ravel() for p in params])
        if np.abs(hidden).min() > KINK_MARGIN and np.abs(weights).min() > KINK_MARGIN:
            return params, X, Y


def finite_difference_grads(params, X, Y, activation, cost, penalty, c):
    """Central differences (C(θ + h) − C(θ − h)) / 2h, one parameter at a time."""
    grads = []
    for l, layer in enumerate(params):
        g = {}
        for key in ("w", "b"):
            g[key] = np.zeros_like(layer[key])
            for idx in np.ndindex(layer[key].shape):
                values = []
                for step in (H, -H):
                    shifted = [{k: v.copy() for k, v in p.items()} for p in params]
                    shifted[l][key][idx] += step
                    values.append(bp.cost(shifted, X, Y, activation, cost, penalty, c))
                g[key][idx] = (values[0] - values[1]) / (2 * H)
        grads.append(g)
    return grads


# ---------------------------------------------------------------------------
# Gradients of the fully connected network

@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("penalty", PENALTIES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cost", COSTS)
def test_per_example_backprop_matches_matrix_backprop(cost, activation, penalty, sizes):
    params, X, Y = problem(sizes, cost)
    loop = add(bp.backprop_loop(params, X, Y, activation, cost), bp.penalty_grads(params, penalty, C))
    matrix = add(bp.backprop_matrix(params, X, Y, activation, cost), bp.penalty_grads(params, penalty, C))
    assert [g["w"].shape for g in matrix] == [p["w"].shape for p in params]
    assert [g["b"].shape for g in matrix] == [p["b"].shape for p in params]
    assert rel(flat(loop), flat(matrix)) <= 1e-12


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("penalty", PENALTIES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cost", COSTS)
def test_backprop_matches_finite_differences(cost, activation, penalty, sizes):
    params, X, Y = problem(sizes, cost)
    pen = bp.penalty_grads(params, penalty, C)
    loop = flat(add(bp.backprop_loop(params, X, Y, activation, cost), pen))
    matrix = flat(add(bp.backprop_matrix(params, X, Y, activation, cost), pen))
    numeric = flat(finite_difference_grads(params, X, Y, activation, cost, penalty, C))
    assert np.linalg.norm(numeric) > 1e-3  # a real gradient, not a vacuous match
    assert rel(loop, numeric) <= 1e-6
    assert rel(matrix, numeric) <= 1e-6


def test_backprop_example_equals_batch_of_one():
    params, X, Y = problem([5, 6, 4, 3], "cross_entropy")
    one = bp.backprop_example(params, X[0], Y[0], "tanh", "cross_entropy")
    batch = bp.backprop_matrix(params, X[:1], Y[:1], "tanh", "cross_entropy")
    assert rel(flat(one), flat(batch)) <= 1e-12


def test_feedforward_output_activation_follows_the_cost():
    params, X, _ = problem([4, 3], "quadratic")
    z = X @ params[0]["w"] + params[0]["b"]
    assert np.allclose(bp.feedforward(params, X, "relu", "quadratic"), 1 / (1 + np.exp(-z)), rtol=1e-14)
    soft = bp.feedforward(params, X, "relu", "log_likelihood")
    assert np.allclose(soft, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-14)
    assert np.allclose(soft.sum(axis=1), 1.0, rtol=1e-14)
    # a single example [n_in] gives a single output [n_out]
    assert bp.feedforward(params, X[0], "relu", "quadratic").shape == (3,)


def test_cross_entropy_cost_is_finite_when_the_output_saturates():
    params = [{"w": np.array([[1.0]]), "b": np.array([0.0])}]
    X, Y = np.array([[800.0]]), np.array([[0.0]])  # a = σ(800) rounds to 1.0
    assert bp.cost(params, X, Y, cost="cross_entropy") == pytest.approx(800.0, rel=1e-12)


# ---------------------------------------------------------------------------
# Penalties

def test_penalty_values_and_gradients_by_hand():
    params = [{"w": np.array([[1.0, -2.0], [0.0, 3.0]]), "b": np.array([5.0, -5.0])}]
    c = 0.1
    assert bp.penalty_cost(params, None, c) == 0.0
    assert bp.penalty_cost(params, "l2", c) == pytest.approx(0.5 * 0.1 * (1 + 4 + 0 + 9), rel=1e-15)
    assert bp.penalty_cost(params, "l1", c) == pytest.approx(0.1 * (1 + 2 + 0 + 3), rel=1e-15)
    l2 = bp.penalty_grads(params, "l2", c)[0]
    l1 = bp.penalty_grads(params, "l1", c)[0]
    assert np.array_equal(l2["w"], 0.1 * np.array([[1.0, -2.0], [0.0, 3.0]]))
    assert np.array_equal(l1["w"], 0.1 * np.array([[1.0, -1.0], [0.0, 1.0]]))  # sign(0) = 0
    for g in (l2, l1, bp.penalty_grads(params, None, c)[0]):
        assert np.array_equal(g["b"], np.zeros(2))  # biases are never penalised
    with pytest.raises(ValueError):
        bp.penalty_grads(params, "l3", c)


# ---------------------------------------------------------------------------
# SGD, in dataset order

def test_sgd_one_step_with_l2_is_the_books_update():
    """One mini-batch on a 1-layer quadratic-cost net, the update written out:
    w ← (1 − η·λ/n)·w − (η/m)·Σ_x ∂C_x/∂w,  b ← b − (η/m)·Σ_x δ_x."""
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    X, Y = rng.normal(size=(6, 4)), rng.uniform(size=(6, 3))
    eta, lmbda, n = 0.5, 2.0, 1000
    m = len(X)
    z = X @ w + b
    a = 1 / (1 + np.exp(-z))
    delta = (a - Y) * a * (1 - a)
    expected_w = (1 - eta * lmbda / n) * w - (eta / m) * X.T @ delta
    expected_b = b - (eta / m) * delta.sum(axis=0)

    params = [{"w": w.copy(), "b": b.copy()}]
    new, _ = bp.sgd_epoch(params, X, Y, eta, mini_batch_size=m, penalty="l2", c=lmbda / n)
    assert rel(new[0]["w"], expected_w) <= 1e-12
    assert rel(new[0]["b"], expected_b) <= 1e-12
    assert rel(new[0]["w"], w) > 1e-3  # the step moved the weights
    assert np.array_equal(params[0]["w"], w)  # inputs are not modified in place


def test_sgd_l1_and_momentum_updates_by_hand():
    """Two mini-batches; v ← μv − η(g + c·sign(w)), w ← w + v; b without penalty."""
    params, X, Y = problem([3, 4, 2], "cross_entropy", m=8)
    eta, mu, c = 0.3, 0.9, 0.01
    w = [dict(p) for p in params]
    v = [{"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])} for p in params]
    for k in (0, 4):
        g = bp.backprop_matrix(w, X[k:k + 4], Y[k:k + 4], "tanh", "cross_entropy")
        v = [{"w": mu * vl["w"] - eta * (gl["w"] + c * np.sign(wl["w"])),
              "b": mu * vl["b"] - eta * gl["b"]} for vl, gl, wl in zip(v, g, w)]
        w = [{"w": wl["w"] + vl["w"], "b": wl["b"] + vl["b"]} for wl, vl in zip(w, v)]
    new, vel = bp.sgd_epoch(params, X, Y, eta, 4, "tanh", "cross_entropy",
                            penalty="l1", c=c, momentum=mu)
    assert rel(flat(new), flat(w)) <= 1e-12
    assert rel(flat(vel), flat(v)) <= 1e-12
    # momentum carries over: a second epoch from the returned velocity differs
    # from one started at rest
    again, _ = bp.sgd_epoch(new, X, Y, eta, 4, "tanh", "cross_entropy", "l1", c, mu, vel)
    rest, _ = bp.sgd_epoch(new, X, Y, eta, 4, "tanh", "cross_entropy", "l1", c, mu)
    assert rel(flat(again), flat(rest)) > 1e-3


def test_short_last_mini_batch_is_averaged_over_its_own_length():
    """n = 7, m = 3: batches of 3, 3 and 1; the last update is η·∇C_x of the
    single example (scaled by 1/1, not 1/3)."""
    params, X, Y = problem([3, 4, 2], "quadratic", m=7)
    eta = 1.0
    after_two, _ = bp.sgd_epoch(params, X[:6], Y[:6], eta, 3)
    g = bp.backprop_example(after_two, X[6], Y[6])
    expected = [{k: p[k] - eta * gl[k] / 1 for k in ("w", "b")} for p, gl in zip(after_two, g)]
    wrong = [{k: p[k] - eta * gl[k] / 3 for k in ("w", "b")} for p, gl in zip(after_two, g)]
    new, _ = bp.sgd_epoch(params, X, Y, eta, 3)
    assert rel(flat(new), flat(expected)) <= 1e-12
    assert rel(flat(new), flat(wrong)) > 1e-6  # the two scalings are distinguishable here


# ---------------------------------------------------------------------------
# Conv-pool layer

def test_conv_pool_forward_by_hand():
    """x = 0..15 in a 4×4 image, a 3×3 filter of ones: the valid correlation is
    [[45, 54], [81, 90]] (45 = 0+1+2+4+5+6+8+9+10); 2×2 max-pool gives 90."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 3, 3))
    conv = bp.conv_pool_forward(x, w, np.zeros(1), pool=(1, 1), activation="linear")
    assert np.array_equal(conv, np.array([[[[45.0, 54.0], [81.0, 90.0]]]]))
    a = bp.conv_pool_forward(x, w, np.array([0.5]), pool=(2, 2), activation="linear")
    assert np.array_equal(a, np.array([[[[90.5]]]]))
    s = bp.conv_pool_forward(x, w, np.array([-89.0]), pool=(2, 2), activation="sigmoid")
    assert s[0, 0, 0, 0] == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-14)  # σ(90 − 89)


def test_conv_is_correlation_not_convolution():
    """A filter with a single 1 at its top-left corner reads x[i, j] (a flipped
    kernel would read x[i+2, j+2])."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0] = 1.0
    a = bp.conv_pool_forward(x, w, np.zeros(1), pool=(1, 1), activation="linear")
    assert np.array_equal(a[0, 0], x[0, 0, :3, :3])


def test_max_pool_drops_incomplete_windows():
    """A 5×5 map with 2×2 pooling gives 2×2 (the last row and column are dropped)."""
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    w = np.ones((1, 1, 1, 1))
    a = bp.conv_pool_forward(x, w, np.zeros(1), pool=(2, 2), activation="linear")
    assert np.array_equal(a, np.array([[[[6.0, 8.0], [16.0, 18.0]]]]))


def test_max_pool_gradient_ties_go_to_the_first_maximum():
    """A constant image: every 2×2 window ties; the gradient reaches only the
    window's top-left position (first in row-major order)."""
    x = np.ones((1, 1, 4, 4))
    w = np.ones((1, 1, 1, 1))
    upstream = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    dx, dw, db = bp.conv_pool_backward(x, w, np.zeros(1), upstream, (2, 2), "linear")
    expected = np.zeros((4, 4))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1.0, 2.0, 3.0, 4.0
    assert np.array_equal(dx[0, 0], expected)
    assert dw[0, 0, 0, 0] == 10.0 and db[0] == 10.0


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv_pool_backward_matches_finite_differences(activation):
    """n=2, c=2, 8×8 images, k=3 filters 3×3, 2×2 pool. Random inputs: ties in
    a pool window, and relu inputs at 0, have probability zero (checked: every
    window's top two values differ by > 1e-3 and |pre-activation| > 1e-3)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 8, 8))
    w = rng.normal(size=(3, 2, 3, 3))
    b = rng.normal(size=3)
    upstream = rng.normal(size=(2, 3, 3, 3))
    conv = bp.correlate(x, w)
    windows = np.sort(conv[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5)
                      .reshape(2, 3, 3, 3, 4), axis=-1)
    assert (windows[..., -1] - windows[..., -2]).min() > 1e-3
    assert np.abs(bp.max_pool(conv, (2, 2)) + b[None, :, None, None]).min() > 1e-3

    def S(x, w, b):
        return np.sum(upstream * bp.conv_pool_forward(x, w, b, (2, 2), activation))

    def numeric(arr, f):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += H
            minus[idx] -= H
            g[idx] = (f(plus) - f(minus)) / (2 * H)
        return g

    dx, dw, db = bp.conv_pool_backward(x, w, b, upstream, (2, 2), activation)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert rel(dx, numeric(x, lambda t: S(t, w, b))) <= 1e-6
    assert rel(dw, numeric(w, lambda t: S(x, t, b))) <= 1e-6
    assert rel(db, numeric(b, lambda t: S(x, w, t))) <= 1e-6
