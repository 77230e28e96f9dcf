"""Backpropagation written out by hand, in NumPy float64: the reference.

This module exists to cross-check ``jax.grad``. It imports nothing from the
package (only NumPy), so an error in the JAX code cannot hide in both places.
It follows the book's network.py and chapter 2: a forward pass that stores
every weighted input ``z`` and activation ``a``, then the four equations of
backpropagation. In the row layout used throughout the project (a batch is a
matrix whose rows are examples, ``z = a @ w + b``, ``w`` of shape
``[n_in, n_out]``) they read:

    BP1   δ^L = ∇_a C ⊙ σ'(z^L)                     (error in the output layer)
    BP2   δ^l = (δ^{l+1} (w^{l+1})ᵀ) ⊙ σ'(z^l)       (error moved back a layer)
    BP3   ∂C/∂b^l = δ^l
    BP4   ∂C/∂w^l = (a^{l-1})ᵀ δ^l                   (an outer product per example)

Conventions:

- ``params`` is a list of dicts, one per layer: ``{"w": [n_in, n_out],
  "b": [n_out]}``. Gradients come back in the same structure.
- The hidden layers use the activation named by ``activation``
  ("sigmoid", "tanh", "relu", "linear"); the output layer's activation is
  implied by the cost: sigmoid for "quadratic" and "cross_entropy", softmax
  for "log_likelihood".
- ``y`` is a target vector (one-hot for a label); ``Y`` a matrix of them.
- The cost of a mini-batch is the mean over its examples of the per-example
  cost C_x, plus an optional penalty on the weights (never the biases):
  L2 = ½·c·Σ‖w‖², L1 = c·Σ|w|. The caller chooses c (network2: c = λ/n with n
  the size of the training set).

Index conventions: ``params[l]`` maps layer l to layer l+1, so ``params[-1]``
is the output layer's weights and biases, as in the book's ``weights[-1]``.
"""
import numpy as np

# ---------------------------------------------------------------------------
# Activations and their derivatives σ'(z)

def sigmoid(z):
    """σ(z) = 1 / (1 + e^{-z}), written so that no exp overflows."""
    return np.exp(-np.logaddexp(0.0, -z))


def sigmoid_prime(z):
    """σ'(z) = σ(z)(1 − σ(z))."""
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh_prime(z):
    """tanh'(z) = 1 − tanh²(z)."""
    return 1.0 - np.tanh(z) ** 2


def relu(z):
    """max(0, z)."""
    return np.maximum(z, 0.0)


def relu_prime(z):
    """1 where z > 0, else 0 (the derivative at the kink z = 0 is taken as 0)."""
    return (z > 0).astype(np.float64)


def linear(z):
    return z


def linear_prime(z):
    return np.ones_like(z)


ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_prime),
    "tanh": (np.tanh, tanh_prime),
    "relu": (relu, relu_prime),
    "linear": (linear, linear_prime),
}


def softmax(z):
    """a_j = e^{z_j} / Σ_k e^{z_k} along the last axis."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    """ln softmax(z) = z − ln Σ_k e^{z_k}, computed without taking ln of a."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------
# Costs: per-example cost C_x from the output weighted input z^L, and the
# output error δ^L (BP1 with the cost's own output activation).

def quadratic_cost(z, y):
    """C_x = ½‖a − y‖², a = σ(z). Summed over the last axis."""
    return 0.5 * np.sum((sigmoid(z) - y) ** 2, axis=-1)


def quadratic_delta(z, y):
    """BP1 for the quadratic cost: δ^L = (a − y) ⊙ σ'(z^L)."""
    return (sigmoid(z) - y) * sigmoid_prime(z)


def cross_entropy_cost(z, y):
    """C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)], a = σ(z).

    ln a = −ln(1 + e^{−z}) and ln(1 − a) = −ln(1 + e^{z}), so no log ever
    meets a zero even when a saturates.
    """
    ln_a = -np.logaddexp(0.0, -z)
    ln_1_minus_a = -np.logaddexp(0.0, z)
    return -np.sum(y * ln_a + (1.0 - y) * ln_1_minus_a, axis=-1)


def cross_entropy_delta(z, y):
    """BP1 for cross-entropy: σ'(z) cancels, δ^L = a − y (chapter 3)."""
    return sigmoid(z) - y


def log_likelihood_cost(z, y):
    """C_x = −Σ_j y_j ln a_j, a = softmax(z) (for a one-hot y: −ln a_y)."""
    return -np.sum(y * log_softmax(z), axis=-1)


def log_likelihood_delta(z, y):
    """δ^L = a − y for a softmax output layer (holds when Σ_j y_j = 1)."""
    return softmax(z) - y


COSTS = {
    # name: (output activation, C_x(z, y), δ^L(z, y))
    "quadratic": (sigmoid, quadratic_cost, quadratic_delta),
    "cross_entropy": (sigmoid, cross_entropy_cost, cross_entropy_delta),
    "log_likelihood": (softmax, log_likelihood_cost, log_likelihood_delta),
}


# ---------------------------------------------------------------------------
# Forward pass

def feedforward(params, x, activation="sigmoid", cost="quadratic"):
    """The network's output a^L for ``x`` ([n_in] or a batch [m, n_in]).

    Hidden layers apply ``activation``; the output layer applies the
    activation implied by ``cost`` (sigmoid, or softmax for log_likelihood).
    """
    act, _ = ACTIVATIONS[activation]
    output_act, _, _ = COSTS[cost]
    a = x
    for layer in params[:-1]:
        a = act(a @ layer["w"] + layer["b"])
    return output_act(a @ params[-1]["w"] + params[-1]["b"])


def _forward_storing(params, x, activation):
    """Forward pass keeping every z^l and a^l (a^0 = x), as in network.py.

    Returns ``(zs, activations)`` with ``len(activations) == len(zs) + 1``.
    The output activation is not applied: the cost works from z^L.
    """
    act, _ = ACTIVATIONS[activation]
    activations, zs = [x], []
    for l, layer in enumerate(params):
        z = activations[-1] @ layer["w"] + layer["b"]
        zs.append(z)
        if l < len(params) - 1:
            activations.append(act(z))
    return zs, activations


# ---------------------------------------------------------------------------
# Backpropagation

def backprop_example(params, x, y, activation="sigmoid", cost="quadratic"):
    """∇C_x for one example x [n_in], y [n_out]: the book's ``backprop``.

    1. Forward: store z^l and a^l for every layer.
    2. Output error δ^L by the cost's rule (BP1).
    3. Backward: δ^l = (δ^{l+1} (w^{l+1})ᵀ) ⊙ σ'(z^l)  (BP2),
       ∂C/∂b^l = δ^l  (BP3),  ∂C/∂w^l = outer(a^{l-1}, δ^l)  (BP4).
    """
    _, act_prime = ACTIVATIONS[activation]
    _, _, output_delta = COSTS[cost]
    zs, activations = _forward_storing(params, x, activation)
    grads = [None] * len(params)
    delta = output_delta(zs[-1], y)                                    # BP1
    for l in range(len(params) - 1, -1, -1):
        grads[l] = {"w": np.outer(activations[l], delta), "b": delta}  # BP4, BP3
        if l > 0:
            delta = (delta @ params[l]["w"].T) * act_prime(zs[l - 1])  # BP2
    return grads


def backprop_loop(params, X, Y, activation="sigmoid", cost="quadratic"):
    """∇ of the mean cost over a mini-batch, one example at a time.

    The book's ``update_mini_batch``: sum ``backprop_example`` over the rows of
    X [m, n_in], Y [m, n_out], then divide by m = len(mini_batch).
    """
    total = [{"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])} for p in params]
    for x, y in zip(X, Y):
        for t, g in zip(total, backprop_example(params, x, y, activation, cost)):
            t["w"] += g["w"]
            t["b"] += g["b"]
    m = len(X)
    return [{"w": t["w"] / m, "b": t["b"] / m} for t in total]


def backprop_matrix(params, X, Y, activation="sigmoid", cost="quadratic"):
    """∇ of the mean cost over a mini-batch, all examples at once.

    The fully matrix-based approach of chapter 2's problem: the rows of Δ^l
    are the examples' errors δ^l, so BP1 and BP2 hold row by row, and

        ∂C/∂b^l = mean over rows of Δ^l              (BP3)
        ∂C/∂w^l = (A^{l-1})ᵀ Δ^l / m                (BP4: the outer products summed)
    """
    _, act_prime = ACTIVATIONS[activation]
    _, _, output_delta = COSTS[cost]
    zs, activations = _forward_storing(params, X, activation)
    m = len(X)
    grads = [None] * len(params)
    delta = output_delta(zs[-1], Y)                                    # BP1
    for l in range(len(params) - 1, -1, -1):
        grads[l] = {"w": activations[l].T @ delta / m,                 # BP4
                    "b": delta.sum(axis=0) / m}                        # BP3
        if l > 0:
            delta = (delta @ params[l]["w"].T) * act_prime(zs[l - 1])  # BP2
    return grads


# ---------------------------------------------------------------------------
# Penalties (weights only, never biases) and the total cost

def penalty_cost(params, kind, c):
    """The penalty term: None → 0, "l2" → ½·c·Σ‖w‖², "l1" → c·Σ|w|."""
    if kind is None:
        return 0.0
    if kind == "l2":
        return 0.5 * c * sum(np.sum(p["w"] ** 2) for p in params)
    if kind == "l1":
        return c * sum(np.sum(np.abs(p["w"])) for p in params)
    raise ValueError(f"unknown penalty {kind!r}; choose None, 'l2' or 'l1'")


def penalty_grads(params, kind, c):
    """∇ of ``penalty_cost``: L2 → c·w, L1 → c·sign(w) (sign(0) = 0); biases get 0."""
    if kind is None:
        dw = [np.zeros_like(p["w"]) for p in params]
    elif kind == "l2":
        dw = [c * p["w"] for p in params]
    elif kind == "l1":
        dw = [c * np.sign(p["w"]) for p in params]
    else:
        raise ValueError(f"unknown penalty {kind!r}; choose None, 'l2' or 'l1'")
    return [{"w": w, "b": np.zeros_like(p["b"])} for w, p in zip(dw, params)]


def cost(params, X, Y, activation="sigmoid", cost="quadratic", penalty=None, c=0.0):
    """C = (1/m) Σ_x C_x + penalty: the scalar whose gradient the functions
    above compute (with ``penalty_grads`` added). Used for finite differences.
    """
    _, cost_x, _ = COSTS[cost]
    zs, _ = _forward_storing(params, X, activation)
    return float(np.mean(cost_x(zs[-1], Y)) + penalty_cost(params, penalty, c))



# ---------------------------------------------------------------------------
# Stochastic gradient descent, in dataset order

def sgd_epoch(params, X, Y, eta, mini_batch_size, activation="sigmoid",
              cost="quadratic", penalty=None, c=0.0, momentum=0.0, velocity=None):
    """One epoch of mini-batch SGD over X [n, n_in], Y [n, n_out], no shuffle.

    The mini-batches are X[k:k+m] for k = 0, m, 2m, ...; a short last batch is
    used as the book uses it, its gradient averaged over its own length.
    Each mini-batch makes the update (g = mean gradient of the batch's cost,
    from ``backprop_matrix``; μ = ``momentum``; c the penalty coefficient):

        v ← μ·v − η·(g + ∇penalty),    w ← w + v       (biases: no penalty)

    With μ = 0 this is the book's network2 update:
        L2:  w ← (1 − η·c)·w − η·g    (c = λ/n)
        L1:  w ← w − η·c·sign(w) − η·g
        b ← b − η·g_b
    equal to the line above up to rounding (last-place differences).

    Returns ``(params, velocity)``; pass ``velocity`` back in to carry the
    momentum into the next epoch (None starts from v = 0).
    """
    if velocity is None:
        velocity = [{"w": np.zeros_like(p["w"]), "b": np.zeros_like(p["b"])} for p in params]
    for k in range(0, len(X), mini_batch_size):
        Xb, Yb = X[k:k + mini_batch_size], Y[k:k + mini_batch_size]
        grads = backprop_matrix(params, Xb, Yb, activation, cost)
        pen = penalty_grads(params, penalty, c)
        velocity = [{key: momentum * v[key] - eta * (g[key] + q[key]) for key in ("w", "b")}
                    for v, g, q in zip(velocity, grads, pen)]
        params = [{key: p[key] + v[key] for key in ("w", "b")}
                  for p, v in zip(params, velocity)]
    return params, velocity


# ---------------------------------------------------------------------------
# network3's ConvPoolLayer: a = act(maxpool(x ⋆ w) + b), by direct loops

def correlate(x, w):
    """Valid cross-correlation, stride 1 (no kernel flip; Theano flipped):

        out[n, k, i, j] = Σ_{c, p, q} x[n, c, i+p, j+q] · w[k, c, p, q]

    x [N, C, H, W] (NCHW), w [K, C, FH, FW]; out [N, K, H−FH+1, W−FW+1].
    """
    N, C, H, W = x.shape
    K, _, FH, FW = w.shape
    out = np.zeros((N, K, H - FH + 1, W - FW + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            patch = x[:, :, i:i + FH, j:j + FW]                 # [N, C, FH, FW]
            out[:, :, i, j] = np.einsum("ncpq,kcpq->nk", patch, w)
    return out


def max_pool(conv, pool):
    """Non-overlapping max-pooling over (ph, pw) windows of [N, K, H, W].

    Rows and columns that do not fill a whole window are dropped (Theano's
    ``ignore_border=True``, as the book uses): output [N, K, H//ph, W//pw].
    """
    ph, pw = pool
    N, K, H, W = conv.shape
    out = np.zeros((N, K, H // ph, W // pw))
    for i in range(H // ph):
        for j in range(W // pw):
            out[:, :, i, j] = conv[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].max(axis=(2, 3))
    return out


def conv_pool_forward(x, w, b, pool=(2, 2), activation="sigmoid"):
    """network3's ConvPoolLayer: a = act(maxpool(correlate(x, w)) + b).

    The book pools BEFORE adding the bias and applying the activation. (For a
    per-channel bias and an increasing activation the order does not change
    the values; it is kept so the code says what the book says.)
    b [K] is broadcast over the pooled maps.
    """
    act, _ = ACTIVATIONS[activation]
    pooled = max_pool(correlate(x, w), pool)
    return act(pooled + b[None, :, None, None])


def conv_pool_backward(x, w, b, upstream, pool=(2, 2), activation="sigmoid"):
    """Gradients (dx, dw, db) of S = Σ upstream ⊙ conv_pool_forward(x, w, b).

    With s = maxpool(x ⋆ w) + b and a = act(s):
      ∂S/∂s = upstream ⊙ act'(s);           db[k] = Σ_{n,i,j} ∂S/∂s[n,k,i,j]
      max-pool: each window passes ∂S/∂s to the position of its maximum and
        0 elsewhere. Ties go to the FIRST maximum in row-major order within
        the window (np.argmax); rows/columns outside every window get 0.
      correlation, with g = ∂S/∂(x ⋆ w):
        dw[k, c, p, q] = Σ_{n,i,j} g[n, k, i, j] · x[n, c, i+p, j+q]
        dx[n, c, i+p, j+q] += Σ_k g[n, k, i, j] · w[k, c, p, q]
    """
    _, act_prime = ACTIVATIONS[activation]
    ph, pw = pool
    K, C, FH, FW = w.shape
    conv = correlate(x, w)
    pooled = max_pool(conv, pool)
    ds = upstream * act_prime(pooled + b[None, :, None, None])
    db = ds.sum(axis=(0, 2, 3))

    g = np.zeros_like(conv)                         # ∂S/∂conv, through the max-pool
    N = x.shape[0]
    for i in range(pooled.shape[2]):
        for j in range(pooled.shape[3]):
            window = conv[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].reshape(N, K, ph * pw)
            first_max = np.argmax(window, axis=-1)   # [N, K], first in row-major order
            r, s = np.divmod(first_max, pw)
            for n in range(N):
                for k in range(K):
                    g[n, k, i * ph + r[n, k], j * pw + s[n, k]] += ds[n, k, i, j]

    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i in range(g.shape[2]):
        for j in range(g.shape[3]):
            patch = x[:, :, i:i + FH, j:j + FW]                          # [N, C, FH, FW]
            dw += np.einsum("nk,ncpq->kcpq", g[:, :, i, j], patch)
            dx[:, :, i:i + FH, j:j + FW] += np.einsum("nk,kcpq->ncpq", g[:, :, i, j], w)
    return dx, dw, db
