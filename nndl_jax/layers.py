"""Layers as pairs of pure functions, in the manner of ``jax.example_libraries.stax``.

A layer is ``(init, apply)``:

    init(key, input_shape) -> (output_shape, params)
    apply(params, x, *, train=False, key=None) -> y

Shapes exclude the batch axis: a fully connected layer of 784 inputs has
``input_shape == (784,)`` and ``apply`` takes ``x`` of shape ``[n, 784]``.
A network is ``serial(layer, layer, ...)``. The last layer returns the output
layer's weighted input ``z``; the cost (see ``costs``) supplies the output
activation, so that costs with logarithms are computed stably from ``z``.

The book's initializers are functions ``(key, n_in, n_out) -> (w, b)``:

- ``large_weight_init``: w, b ~ N(0, 1) (network.py; network2's "large" one)
- ``default_weight_init``: w ~ N(0, 1/n_in), b ~ N(0, 1) (network2.py)
- ``network3_init``: w ~ N(0, 1/n_out), b ~ N(0, 1) (network3.py)
- ``zeros_init``: w = 0, b = 0 (network3.py's softmax layer)
"""
import math

import jax
import jax.numpy as jnp

from nndl_jax.activations import linear


# --- the book's initializers -------------------------------------------------

def large_weight_init(key, n_in, n_out):
    """w ~ N(0, 1), b ~ N(0, 1): network.py and network2's large_weight_initializer."""
    kw, kb = jax.random.split(key)
    return jax.random.normal(kw, (n_in, n_out)), jax.random.normal(kb, (n_out,))


def default_weight_init(key, n_in, n_out):
    """w ~ N(0, 1/n_in) (standard deviation 1/√n_in), b ~ N(0, 1): network2.py's default."""
    kw, kb = jax.random.split(key)
    return jax.random.normal(kw, (n_in, n_out)) / math.sqrt(n_in), jax.random.normal(kb, (n_out,))


def network3_init(key, n_in, n_out):
    """w ~ N(0, 1/n_out) (standard deviation √(1/n_out)), b ~ N(0, 1): network3.py."""
    kw, kb = jax.random.split(key)
    return jax.random.normal(kw, (n_in, n_out)) * math.sqrt(1.0 / n_out), jax.random.normal(kb, (n_out,))


def zeros_init(key, n_in, n_out):
    """w = 0, b = 0: network3.py's SoftmaxLayer."""
    del key
    return jnp.zeros((n_in, n_out)), jnp.zeros((n_out,))


INITIALIZERS = {"large": large_weight_init, "default": default_weight_init,
                "network3": network3_init, "zeros": zeros_init}


# --- dropout -----------------------------------------------------------------

def dropout(x, p, key):
    """The book's dropout (network3.dropout_layer): keep each unit with
    probability 1 − p, drop it to zero otherwise. Not inverted: the kept units
    are not rescaled; instead the layer scales by (1 − p) at evaluation."""
    keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


# --- layers ------------------------------------------------------------------

def dense(n_out, activation=linear, *, init=default_weight_init, p_dropout=0.0):
    """A fully connected layer a = act(x·w + b), w of shape [n_in, n_out].

    With ``p_dropout > 0`` the layer's *input* is dropped out during training
    (``train=True``, a ``key`` is required) and, at evaluation, the weighted
    input becomes (1 − p)·x·w + b, as network3's FullyConnectedLayer does.
    Inputs of more than one axis (a conv layer's feature maps) are flattened.
    """
    if not 0.0 <= p_dropout < 1.0:
        raise ValueError(f"p_dropout must be in [0, 1), got {p_dropout}")
    if isinstance(init, str):
        init = INITIALIZERS[init]

    def init_fn(key, input_shape):
        n_in = math.prod(input_shape)
        w, b = init(key, n_in, n_out)
        return (n_out,), {"w": w, "b": b}

    def apply_fn(params, x, *, train=False, key=None):
        x = x.reshape(x.shape[0], -1)
        w, b = params["w"], params["b"]
        if p_dropout and train:
            if key is None:
                raise ValueError("a dropout layer needs a PRNG key when train=True")
            z = dropout(x, p_dropout, key) @ w + b
        elif p_dropout:
            z = (1.0 - p_dropout) * (x @ w) + b
        else:
            z = x @ w + b
        return activation(z)

    return init_fn, apply_fn


def serial(*layers):
    """Compose layers one after the other; params are a list, one entry per layer."""
    inits, applies = zip(*layers)

    def init_fn(key, input_shape):
        params = []
        for init, k in zip(inits, jax.random.split(key, len(inits))):
            input_shape, p = init(k, input_shape)
            params.append(p)
        return input_shape, params

    def apply_fn(params, x, *, train=False, key=None):
        keys = jax.random.split(key, len(applies)) if key is not None else [None] * len(applies)
        for apply, p, k in zip(applies, params, keys):
            x = apply(p, x, train=train, key=k)
        return x

    return init_fn, apply_fn


def mlp(sizes, activation, *, init=default_weight_init):
    """The fully connected network of the book's network.py / network2.py.

    ``sizes = [784, 30, 10]`` gives one hidden layer of 30 neurons with
    ``activation`` and an output layer returning its weighted input z (the
    cost supplies the output activation). Params: a list of {"w", "b"} dicts.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least two positive layer sizes, got {sizes}")
    hidden = [dense(n, activation, init=init) for n in sizes[1:-1]]
    return serial(*hidden, dense(sizes[-1], linear, init=init))
