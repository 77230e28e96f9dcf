"""jax.grad and the compiled SGD epoch against the NumPy float64 backprop reference.

The claims (issues 3 and 4):

- ``train.batch_loss`` (a ``layers.mlp`` network, a cost of ``costs``, an
  optional ``costs.l2_penalty`` / ``costs.l1_penalty``) equals
  ``backprop.cost``;
- ``jax.grad`` of it equals the reference's per-example backprop (the book's
  loop), its fully matrix-based backprop (plus ``penalty_grads``) to a
  relative error of 1e-10, and central finite differences to 1e-6;
- one (or two, with momentum) epochs of ``train.fit`` with ``shuffle=False``
  give the parameters of ``backprop.sgd_epoch`` to 1e-9, with and without a
  short last mini-batch, with L2, L1 and momentum;
- each cost's ``delta`` is ``jax.grad`` of its ``fn`` and the reference's δ^L;
- the log costs stay finite at saturated outputs z = ±1000.

Everything runs inside ``jax.enable_x64(True)`` (never globally) with float64
params and data, except the saturation test, which also checks float32.

Relative errors are norm-wise over the whole gradient (all layers, w and b):
    rel(g, h) = ‖g − h‖ / max(‖g‖, ‖h‖)

ReLU: the reference takes relu'(0) = 0 while ``jnp.maximum`` splits a tie,
and L1 has a kink at w = 0; every problem below is drawn so that no hidden z
and no weight lies within KINK_MARGIN of 0, far more than a finite-difference
step moves them.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import activations, costs, layers, train
from nndl_jax import backprop as bp

COSTS = ["quadratic", "cross_entropy", "log_likelihood"]
ACTIVATIONS = ["sigmoid", "tanh", "relu", "linear"]
PENALTIES = [None, "l2", "l1"]
SIZES = [[5, 4, 3], [6, 5, 4, 3], [3, 7, 2]]
PENALTY_FNS = {None: None, "l2": costs.l2_penalty, "l1": costs.l1_penalty}

C = 0.3             # penalty coefficient in the gradient tests (large enough to matter)
H = 1e-6            # central finite-difference step
KINK_MARGIN = 1e-3  # no relu input z and no weight lies this close to 0
GRAD_RTOL = 1e-10   # jax.grad vs the reference (both exact up to rounding)
FD_RTOL = 1e-6      # jax.grad vs central differences (truncation O(h²), rounding O(ε/h))
SGD_RTOL = 1e-9     # params after fit vs after backprop.sgd_epoch
LOSS_RTOL = 1e-12   # batch_loss vs backprop.cost


# --- helpers -----------------------------------------------------------------

def rel(g, h):
    g, h = np.ravel(g), np.ravel(h)
    scale = max(np.linalg.norm(g), np.linalg.norm(h))
    return np.linalg.norm(g - h) / scale if scale > 0 else 0.0


def flat(params):
    """Concatenate w and b of every layer (NumPy or JAX leaves) into one float64 vector."""
    return np.concatenate([np.concatenate([np.ravel(np.asarray(p["w"], np.float64)),
                                           np.ravel(np.asarray(p["b"], np.float64))])
                           for p in params])


def add(g1, g2):
    return [{k: a[k] + b[k] for k in ("w", "b")} for a, b in zip(g1, g2)]


def to_jax(tree):
    """NumPy float64 leaves -> jnp float64 (call inside jax.enable_x64)."""
    out = jax.tree_util.tree_map(jnp.asarray, tree)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(out))
    return out


def clear_of_kinks(params, X):
    """No hidden weighted input (relu) and no weight (L1) within KINK_MARGIN of 0."""
    if min(np.abs(p["w"]).min() for p in params) < KINK_MARGIN:
        return False
    zs, _ = bp._forward_storing(params, X, "relu")
    return all(np.abs(z).min() >= KINK_MARGIN for z in zs[:-1])


def problem(sizes, cost, m=6, first_seed=0):
    """NumPy float64 params (default init scale), a batch X [m, n_in] and targets Y.

    Targets: one-hot rows for log_likelihood (its δ^L = a − y needs Σy = 1),
    values in (0, 1) otherwise. The seed is the first from ``first_seed`` whose
    problem is clear of the relu and L1 kinks (checked with the relu forward
    pass; other activations then simply share the same data).
    """
    for seed in itertools.count(first_seed):
        rng = np.random.default_rng(seed)
        params = [{"w": rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
                  for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        X = rng.normal(size=(m, sizes[0]))
        if cost == "log_likelihood":
            Y = np.eye(sizes[-1])[rng.integers(sizes[-1], size=m)]
        else:
            Y = rng.uniform(size=(m, sizes[-1]))
        if clear_of_kinks(params, X):
            return params, X, Y


def jax_loss_fn(sizes, activation, cost, penalty):
    """(params, X, Y, mask, c) -> train.batch_loss of a layers.mlp network."""
    _, apply = layers.mlp(sizes, activations.by_name(activation))

    def loss(params, X, Y, mask, c):
        return train.batch_loss(params, X, Y, mask, c, apply=apply, cost=costs.by_name(cost),
                                penalty=PENALTY_FNS[penalty])
    return loss


def central_differences(f, params, coords=None):
    """∂f/∂θ_i ≈ (f(θ + h e_i) − f(θ − h e_i)) / 2h for the coordinates of flat(params)."""
    theta = flat(params)
    shapes = [(p["w"].shape, p["b"].shape) for p in params]

    def unflat(v):
        out, i = [], 0
        for ws, bs in shapes:
            nw, nb = int(np.prod(ws)), int(np.prod(bs))
            out.append({"w": v[i:i + nw].reshape(ws), "b": v[i + nw:i + nw + nb].reshape(bs)})
            i += nw + nb
        return out

    coords = range(theta.size) if coords is None else coords
    g = np.empty(len(coords))
    for j, i in enumerate(coords):
        e = np.zeros_like(theta)
        e[i] = H
        g[j] = (f(unflat(theta + e)) - f(unflat(theta - e))) / (2 * H)
    return g


# --- the loss and its gradient -----------------------------------------------

@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("penalty", PENALTIES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cost", COSTS)
def test_batch_loss_and_jax_grad_equal_reference_cost_backprop_and_finite_differences(
        cost, activation, penalty, sizes):
    params, X, Y = problem(sizes, cost)
    with jax.enable_x64(True):
        loss = jax_loss_fn(sizes, activation, cost, penalty)
        value, grads = jax.value_and_grad(loss)(to_jax(params), jnp.asarray(X), jnp.asarray(Y),
                                                jnp.ones(len(X), bool), jnp.asarray(C))
        value, g_jax = float(value), flat(grads)
    want = bp.cost(params, X, Y, activation, cost, penalty, C)
    assert abs(value - want) <= LOSS_RTOL * abs(want), (value, want)
    pen = bp.penalty_grads(params, penalty, C)
    g_loop = flat(add(bp.backprop_loop(params, X, Y, activation, cost), pen))
    g_matrix = flat(add(bp.backprop_matrix(params, X, Y, activation, cost), pen))
    g_fd = central_differences(lambda p: bp.cost(p, X, Y, activation, cost, penalty, C), params)
    assert np.linalg.norm(g_jax) > 1e-3          # a gradient worth comparing
    assert rel(g_jax, g_loop) <= GRAD_RTOL, rel(g_jax, g_loop)
    assert rel(g_jax, g_matrix) <= GRAD_RTOL, rel(g_jax, g_matrix)
    assert rel(g_jax, g_fd) <= FD_RTOL, rel(g_jax, g_fd)


def test_jax_grad_equals_backprop_for_the_book_network_784_30_10():
    """The chapter 1 shape, cross-entropy + L2 (network2's default), sigmoid,
    MNIST-like inputs in [0, 1]; finite differences on 300 random coordinates."""
    sizes, cost, activation, penalty = [784, 30, 10], "cross_entropy", "sigmoid", "l2"
    rng = np.random.default_rng(7)
    params = [{"w": rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
              for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    X = rng.uniform(size=(10, 784))
    Y = np.eye(10)[rng.integers(10, size=10)]
    with jax.enable_x64(True):
        loss = jax_loss_fn(sizes, activation, cost, penalty)
        args = (jnp.asarray(X), jnp.asarray(Y), jnp.ones(10, bool), jnp.asarray(C))
        value, grads = jax.value_and_grad(loss)(to_jax(params), *args)
        g_jax = flat(grads)
    assert abs(float(value) - bp.cost(params, X, Y, activation, cost, penalty, C)) <= LOSS_RTOL * float(value)
    pen = bp.penalty_grads(params, penalty, C)
    assert rel(g_jax, flat(add(bp.backprop_loop(params, X, Y, activation, cost), pen))) <= GRAD_RTOL
    assert rel(g_jax, flat(add(bp.backprop_matrix(params, X, Y, activation, cost), pen))) <= GRAD_RTOL
    coords = rng.choice(g_jax.size, size=300, replace=False)
    g_fd = central_differences(lambda p: bp.cost(p, X, Y, activation, cost, penalty, C), params, coords)
    assert rel(g_jax[coords], g_fd) <= FD_RTOL, rel(g_jax[coords], g_fd)


def test_masked_batch_loss_is_the_mean_over_the_unmasked_examples():
    """The padding of a short last mini-batch: masked rows change neither the
    loss nor its gradient, which equal the reference on the unmasked rows."""
    sizes, cost, activation = [5, 4, 3], "log_likelihood", "tanh"
    params, X, Y = problem(sizes, cost, m=6)
    mask = np.array([True, True, True, True, False, False])
    with jax.enable_x64(True):
        loss = jax_loss_fn(sizes, activation, cost, "l2")
        value, grads = jax.value_and_grad(loss)(to_jax(params), jnp.asarray(X), jnp.asarray(Y),
                                                jnp.asarray(mask), jnp.asarray(C))
    assert abs(float(value) - bp.cost(params, X[:4], Y[:4], activation, cost, "l2", C)) <= LOSS_RTOL * float(value)
    want = add(bp.backprop_matrix(params, X[:4], Y[:4], activation, cost), bp.penalty_grads(params, "l2", C))
    assert rel(flat(grads), flat(want)) <= GRAD_RTOL


# --- one SGD epoch -------------------------------------------------------------

SGD_CASES = [
    # cost, hidden activation, penalty, momentum, n, mini_batch_size, epochs
    ("quadratic", "sigmoid", None, 0.0, 20, 5, 1),         # network.py: n % m == 0
    ("cross_entropy", "sigmoid", "l2", 0.0, 23, 5, 1),     # network2: short last batch of 3
    ("log_likelihood", "relu", "l1", 0.0, 23, 4, 1),       # L1, short last batch of 3
    ("cross_entropy", "tanh", "l2", 0.9, 22, 5, 2),        # momentum carried into epoch 2
    ("log_likelihood", "sigmoid", None, 0.5, 7, 10, 2),    # one batch, shorter than m
]


@pytest.mark.parametrize("cost,activation,penalty,momentum,n,m,epochs", SGD_CASES)
def test_fit_epoch_without_shuffle_equals_reference_sgd_epoch(cost, activation, penalty, momentum, n, m, epochs):
    sizes, eta, lmbda = [6, 5, 4], 0.5, 2.0
    params, X, _ = problem(sizes, "log_likelihood", m=n, first_seed=100)
    labels = np.random.default_rng(n).integers(sizes[-1], size=n)
    Y = np.eye(sizes[-1])[labels]
    _, apply = layers.mlp(sizes, activations.by_name(activation))
    trainer = train.Trainer(apply, costs.by_name(cost), m, penalty=penalty, momentum=momentum,
                            shuffle=False)

    ref, velocity = params, None
    with jax.enable_x64(True):
        after = []   # the params after each epoch, as fit's on_epoch sees them
        data = (jnp.asarray(X), jnp.asarray(labels))   # integer labels: fit makes them one-hot
        train.fit(trainer, train.stack([to_jax(params)]), data, epochs, key=jax.random.key(0), eta=eta,
                  lmbda=lmbda, n_penalty=n, on_epoch=lambda e, r: after.append(jax.device_get(r["params"])))
        assert len(after) == epochs
        for e, got in enumerate(after):
            ref, velocity = bp.sgd_epoch(ref, X, Y, eta, m, activation, cost, penalty,
                                         c=lmbda / n, momentum=momentum, velocity=velocity)
            assert all(leaf.dtype == np.float64 for leaf in jax.tree_util.tree_leaves(got))
            got_flat = flat(train.unstack(got)[0])
            assert rel(got_flat, flat(ref)) <= SGD_RTOL, (e, rel(got_flat, flat(ref)))
    assert np.linalg.norm(flat(ref) - flat(params)) > 1e-2   # the epochs did move the params


# --- the output error δ^L and saturation ---------------------------------------

REFERENCE_DELTAS = {"quadratic": bp.quadratic_delta, "cross_entropy": bp.cross_entropy_delta,
                    "log_likelihood": bp.log_likelihood_delta}


@pytest.mark.parametrize("cost", COSTS)
def test_cost_delta_is_grad_of_cost_and_reference_delta(cost):
    rng = np.random.default_rng(3)
    for _ in range(5):
        z = 3 * rng.normal(size=4)
        y = np.eye(4)[rng.integers(4)] if cost == "log_likelihood" else rng.uniform(size=4)
        with jax.enable_x64(True):
            c = costs.by_name(cost)
            delta = np.asarray(c.delta(jnp.asarray(z), jnp.asarray(y)))
            grad = np.asarray(jax.grad(c.fn)(jnp.asarray(z), jnp.asarray(y)))
        np.testing.assert_allclose(delta, grad, rtol=0, atol=1e-14)
        np.testing.assert_allclose(delta, REFERENCE_DELTAS[cost](z, y), rtol=0, atol=1e-14)


SATURATED = {
    # cost: (z, y, expected C_x, expected ∂C_x/∂z)
    "cross_entropy": ([1000.0, -1000.0, 0.5], [0.0, 1.0, 0.0],
                      2000.0 + np.log1p(np.exp(0.5)), [1.0, -1.0, 1 / (1 + np.exp(-0.5))]),
    "log_likelihood": ([1000.0, -1000.0, 0.0], [0.0, 1.0, 0.0], 2000.0, [1.0, -1.0, 0.0]),
}


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("cost", sorted(SATURATED))
def test_log_costs_are_finite_with_finite_gradients_when_saturated(cost, x64):
    z, y, want_value, want_grad = SATURATED[cost]
    with jax.enable_x64(x64):
        c = costs.by_name(cost)
        value, grad = jax.value_and_grad(c.fn)(jnp.asarray(z), jnp.asarray(y))
        assert value.dtype == (jnp.float64 if x64 else jnp.float32)
        value, grad = float(value), np.asarray(grad, np.float64)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    tol = 1e-12 if x64 else 1e-6
    assert abs(value - want_value) <= tol * want_value, (value, want_value)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=tol)


# narrow layers (n_out <= layers.NARROW_LAYER: dw as (dzᵀ·x)ᵀ) and wide ones (dw as xᵀ·dz)
@pytest.mark.parametrize("n, n_in, n_out", [(10, 784, 30), (7, 13, 5), (1, 4, 1), (10, 64, 100), (5, 20, 33)])
def test_dense_product_hand_written_vjp_equals_jax_grad_of_the_plain_product(n, n_in, n_out):
    """layers.dense_product's VJP (``layers.weight_gradient``) against jax.grad of
    ``x @ w``, float64, to 1e-12 absolute: alone, and vmapped over K = 3 stacked
    weight matrices as ``train.Trainer`` runs it (where jax.grad of the batched
    product ends in a transposed copy)."""
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(n, n_in)))
        w = jnp.asarray(rng.normal(size=(3, n_in, n_out)))
        u = jnp.asarray(rng.normal(size=(n, n_out)))

        def loss(product):
            return lambda a, b: jnp.sum(u * jnp.tanh(product(a, b)))
        plain = jax.grad(loss(lambda a, b: a @ b), (0, 1))
        hand = jax.grad(loss(layers.dense_product), (0, 1))
        np.testing.assert_allclose(np.asarray(layers.dense_product(x, w[0])), np.asarray(x @ w[0]),
                                   rtol=0, atol=1e-12)
        for got, want in [(hand(x, w[0]), plain(x, w[0])),
                          (jax.vmap(hand, (None, 0))(x, w), jax.vmap(plain, (None, 0))(x, w))]:
            for g, v in zip(got, want):
                assert g.shape == v.shape and g.dtype == jnp.float64
                assert float(jnp.max(jnp.abs(v))) > 1e-3   # a gradient worth comparing
                np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=0, atol=1e-12)


def test_weight_gradient_both_layouts_are_x_transposed_times_dz():
    """``layers.weight_gradient`` on each side of ``NARROW_LAYER``: [n_in, n_out],
    equal to xᵀ·dz computed by NumPy in float64 (1e-12)."""
    rng = np.random.default_rng(12)
    with jax.enable_x64(True):
        for n_out in (layers.NARROW_LAYER, layers.NARROW_LAYER + 1):
            x, dz = rng.normal(size=(10, 50)), rng.normal(size=(10, n_out))
            got = layers.weight_gradient(jnp.asarray(x), jnp.asarray(dz))
            assert got.shape == (50, n_out) and got.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(got), x.T @ dz, rtol=0, atol=1e-12)
