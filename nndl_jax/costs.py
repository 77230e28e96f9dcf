"""Every cost and penalty of the book, as pure functions of one example.

A cost is a function ``fn(z, y)`` of the output layer's weighted input ``z``
and the target vector ``y`` (one-hot for class labels), together with the
output activation it implies and its output-layer error δ^L (BP1). Costs that
take logarithms are computed from ``z`` through ``log_sigmoid`` and
``log_softmax``, so no gradient ever meets ``log(0)``: this replaces the
``np.nan_to_num`` of the book's network2.py and gives finite values and
gradients even for saturated outputs.

The mini-batch cost is the mean of ``fn`` over the examples plus a penalty on
the weights (never the biases):

    C = (1/m) Σ_x C_x + 0.5 c Σ_w ||w||²      (L2)
    C = (1/m) Σ_x C_x + c Σ_w |w|             (L1)

where the coefficient ``c`` is ``λ/n`` (network2.py, ``n`` the size of the
training set) or ``λ/num_training_batches`` (network3.py).
"""
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nndl_jax.activations import sigmoid


class Cost(NamedTuple):
    """A cost: ``fn(z, y)`` for one example, the output activation it implies
    (``output(z) -> a``), and ``delta(z, y)``, the output error δ^L = ∂C_x/∂z^L."""

    name: str
    fn: Callable
    output: Callable
    delta: Callable


def _quadratic(z, y):
    a = sigmoid(z)
    return 0.5 * jnp.sum((a - y) ** 2)


def _quadratic_delta(z, y):
    a = sigmoid(z)
    return (a - y) * a * (1 - a)


def _cross_entropy(z, y):
    # -[y ln σ(z) + (1-y) ln(1-σ(z))], with ln(1-σ(z)) = ln σ(-z).
    return -jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))


def _sigmoid_minus_y(z, y):
    return sigmoid(z) - y


def _log_likelihood(z, y):
    return -jnp.sum(y * jax.nn.log_softmax(z))


def _softmax_minus_y(z, y):
    return jax.nn.softmax(z) - y


quadratic = Cost("quadratic", _quadratic, sigmoid, _quadratic_delta)
"""C_x = ½||σ(z) − y||², the cost of chapter 1; δ^L = (a − y) ⊙ σ'(z)."""

cross_entropy = Cost("cross_entropy", _cross_entropy, sigmoid, _sigmoid_minus_y)
"""C_x = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)], a = σ(z) (chapter 3); δ^L = a − y."""

log_likelihood = Cost("log_likelihood", _log_likelihood, jax.nn.softmax, _softmax_minus_y)
"""C_x = −ln a_y with a = softmax(z) (chapters 3 and 6); δ^L = a − y."""

_BY_NAME = {c.name: c for c in (quadratic, cross_entropy, log_likelihood)}


def by_name(name):
    """Look a cost up by name: "quadratic", "cross_entropy", "log_likelihood"."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown cost {name!r}; choose one of {sorted(_BY_NAME)}") from None


def _weights(params):
    """The weight arrays of a params pytree: every leaf stored under the key "w"."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return [leaf for path, leaf in leaves if getattr(path[-1], "key", None) == "w"]


def l2_penalty(params, c):
    """0.5 · c · Σ_w ||w||² over the weights (biases are not regularized)."""
    return 0.5 * c * sum(jnp.sum(w * w) for w in _weights(params))


def l1_penalty(params, c):
    """c · Σ_w |w| over the weights, with subgradient c · sign(w) (sign(0) = 0,
    as NumPy's ``sign`` in the book's L1 rule)."""
    return c * sum(jnp.sum(w * jax.lax.stop_gradient(jnp.sign(w))) for w in _weights(params))


PENALTIES = {None: None, "l2": l2_penalty, "l1": l1_penalty}


def penalty_by_name(name):
    """``None``, "l2" or "l1" -> the penalty function (or None)."""
    if name not in PENALTIES:
        raise ValueError(f"unknown regularization {name!r}; choose None, 'l2' or 'l1'")
    return PENALTIES[name]
