"""The checks every training run makes before it trains: its settings and its data.

A wrong value that JAX would take silently costs a whole run: an index out of
range clamps, one NaN pixel makes every weight NaN, 0–255 pixels saturate
every sigmoid, a λ of the wrong length is NumPy's broadcast error deep in the
loop. So ``train.fit`` (and the façades, through it) checks everything once,
up front, and says in one line what is wrong and what to pass instead.

- settings: ``positive_int``, ``check_hyperparameters`` (η, λ, epochs),
  ``check_lmbda``, ``per_net`` (a scalar or one value per net);
- data: ``check_evaluation`` (a dict of named sets), ``device_data`` (one set
  on the devices, checked), ``check_labels`` (labels and inputs against the
  network's outputs and input shape, traced, nothing computed), ``check_order``
  (a host-made order of the training examples: a permutation).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

# --- settings -------------------------------------------------------------------------------

def _whole(n):
    """Whether ``n`` is a whole number (an int, or a float without a fraction; not a bool, NaN or inf)."""
    return (not isinstance(n, bool) and isinstance(n, (int, np.integer, float, np.floating))
            and bool(np.isfinite(n)) and n == int(n))


def positive_int(n, name):
    """``n`` as an int, refusing anything that is not a whole number ≥ 1 (True, 1.5, "3")."""
    if not _whole(n) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def check_hyperparameters(eta, lmbda, epochs):
    """The one check of the values every run takes: η > 0 and finite, λ ≥ 0 and
    finite, a whole number of epochs ≥ 0. Returns them as NumPy values."""
    if not _whole(epochs) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    eta = np.asarray(eta, np.float64)
    if not (np.all(np.isfinite(eta)) and np.all(eta > 0)):
        raise ValueError(f"the learning rate eta must be positive and finite, got {eta}")
    return eta, check_lmbda(lmbda), int(epochs)


def check_lmbda(lmbda):
    """λ ≥ 0 and finite (scalar or one per net), as a NumPy float64 value."""
    lmbda = np.asarray(lmbda, np.float64)
    if not (np.all(np.isfinite(lmbda)) and np.all(lmbda >= 0)):
        raise ValueError(f"the regularization parameter lmbda must be >= 0 and finite, got {lmbda}")
    return lmbda


def per_net(values, k, name):
    """``values`` as a float64 array [k]: one value for every net, or one per
    net; any other shape is refused naming the setting and K (rather than
    NumPy's broadcast error)."""
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or values.shape == (1,):
        return np.broadcast_to(values.reshape(()), (k,))
    if values.shape != (k,):
        raise ValueError(f"{name} must be one value for every net or one per net (K = {k} nets), "
                         f"got {values.size} values of shape {values.shape}")
    return values


# --- data -----------------------------------------------------------------------------------

def check_evaluation(evaluation):
    """``evaluation`` as a dict of named sets: None is no set; anything but a
    dict with string names (a bare ``(x, y)`` pair, a list of sets) is refused."""
    if evaluation is None:
        return {}
    if not isinstance(evaluation, dict) or not all(isinstance(name, str) for name in evaluation):
        raise ValueError(f"evaluation must map names to (x, y) sets, e.g. {{'validation': (x, y)}}; got "
                         f"{type(evaluation).__name__}")
    return evaluation


def _images(x, dtype):
    """``x`` as ``dtype``; uint8 pixels divided by 255 first, as ``data.as_arrays`` reads them."""
    if np.asarray(x).dtype == np.uint8:
        x = np.asarray(x, np.float32) / np.float32(255.0)
    return jnp.asarray(x, dtype)


def device_data(data, dtype, layout=None, what="the training data"):
    """``(x, y)`` on the device, after the checks a wrong set would otherwise pass
    silently (out-of-range indices clamp in JAX; one NaN makes every weight NaN):
    at least one example, as many labels as examples, finite inputs (uint8
    pixels scaled to [0, 1]), integer labels ≥ 0 in [n] or finite float targets
    in [n, n_out]. (``check_labels`` checks them against n_out.) With a
    ``layout``, on every device of it (replicated over the processes of a multi-process run)."""
    x, y = data
    x, y = _images(x, dtype), jnp.asarray(y)
    if x.ndim < 2 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: x {tuple(x.shape)} and y {tuple(y.shape)} must hold one example per row "
                         "each (as many labels as images; see data.as_arrays)")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty (no examples)")
    if not bool(jnp.isfinite(x).all()):
        raise ValueError(f"{what}: x holds values that are not finite (NaN or inf); see data.check_finite")
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.ndim != 1:
            raise ValueError(f"{what}: integer labels must be [n]; got shape {tuple(y.shape)}")
        if int(y.min()) < 0:
            raise ValueError(f"{what}: labels must be >= 0; the smallest is {int(y.min())}")
    elif y.ndim != 2 or not bool(jnp.isfinite(y).all()):
        raise ValueError(f"{what}: y must be integer labels [n] or finite float targets [n, n_out]; "
                         f"got {y.dtype} {tuple(y.shape)}")
    return (x, y) if layout is None else (layout.replicate(x), layout.replicate(y))


def check_order(order, k, n, e):
    """``orders(e)``'s value as an int array [K, n], refusing anything that is
    not a permutation of the n training examples (one for all nets, or one per net)."""
    order = np.asarray(order)
    if order.ndim == 1:
        order = np.broadcast_to(order, (k, order.shape[0]))
    if (order.ndim != 2 or order.shape != (k, n) or not np.issubdtype(order.dtype, np.integer)
            or not np.array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(n), (k, n)))):
        raise ValueError(f"orders({e}) must give a permutation of the {n} training examples (int [{n}] or "
                         f"[{k}, {n}]), got an array of shape {order.shape} and dtype {order.dtype} that is not one")
    return order


def check_labels(apply, params, sets):
    """Refuse examples that do not fit the network's input, labels beyond its
    outputs (``jax.nn.one_hot`` would make them all-zero targets) and targets
    of another width, for every set of ``sets`` (a description → ``(x, y)``)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    one = (treedef, tuple((a.shape[1:], str(a.dtype)) for a in leaves))
    for what, (x, _) in sets.items():
        try:
            n_out = _output_width(apply, one, x.shape[1:], str(x.dtype))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: examples of shape {tuple(x.shape[1:])} do not fit the network's "
                             f"input ({str(e).splitlines()[0]})") from None
    for what, (_, y) in sets.items():
        integer = jnp.issubdtype(y.dtype, jnp.integer)
        if (integer and y.size and int(y.max()) >= n_out) or (not integer and y.shape[-1] != n_out):
            raise ValueError(f"{what}: labels must lie in [0, {n_out}) (the network's {n_out} outputs); "
                             + (f"the largest is {int(y.max())}" if integer else f"targets are {y.shape[-1]} wide"))


@functools.lru_cache(maxsize=64)
def _output_width(apply, params_spec, example_shape, dtype):
    """The number of outputs ``apply`` gives for one example (traced once per
    network, params shapes and example shape; nothing is computed)."""
    treedef, leaves = params_spec
    one = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    return jax.eval_shape(lambda p, x: apply(p, x), one, jax.ShapeDtypeStruct((1,) + example_shape, dtype)).shape[-1]
