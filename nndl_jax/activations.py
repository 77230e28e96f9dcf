"""The activation functions of the book: sigmoid, tanh, ReLU, linear.

Each is a plain elementwise JAX function of the weighted input ``z``. The
book's network.py and network2.py use the sigmoid throughout; network3.py
lets each layer choose (``activation_fn=ReLU`` ..., or any function written
with ``jax.numpy``: ``check`` says whether one will do, ``register`` names it
so that networks using it can be saved). Derivatives are not
written out: ``jax.grad`` provides them, and ``backprop`` keeps its own NumPy
copies for the cross-check.
"""
import jax
import jax.numpy as jnp


def sigmoid(z):
    """σ(z) = 1 / (1 + e^{-z}), the book's neuron from chapter 1."""
    return jax.nn.sigmoid(z)


def tanh(z):
    """tanh(z) = 2σ(2z) − 1 (chapter 3)."""
    return jnp.tanh(z)


def relu(z):
    """The rectified linear unit max(0, z) (chapters 3 and 6)."""
    return jnp.maximum(z, 0)


def linear(z):
    """The identity: a layer whose output is its weighted input."""
    return z


# network3.py's spelling of the rectifier.
ReLU = relu

_BY_NAME = {"sigmoid": sigmoid, "tanh": tanh, "relu": relu, "linear": linear}


def by_name(name):
    """Look an activation up by its name ("sigmoid", "tanh", "relu", "linear",
    or a name given to ``register``)."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_BY_NAME)} "
                         "(or register your own with nndl_jax.activations.register(name, fn))") from None


def name_of(fn):
    """The name under which ``fn`` is known (inverse of ``by_name``)."""
    for name, f in _BY_NAME.items():
        if f is fn:
            return name
    raise ValueError(f"{fn!r} is not one of the known activations {sorted(_BY_NAME)}; to save a "
                     "network that uses it, give it a name first with "
                     "nndl_jax.activations.register(name, fn), and register it again before loading")


def register(name, fn):
    """Make ``fn`` known by ``name``, so that networks using it can be saved
    and loaded (a saved network names its activations). Returns ``fn``.
    A name is given once: reusing it for another function is an error."""
    check(fn)
    key = str(name).lower()
    if _BY_NAME.get(key, fn) is not fn:
        raise ValueError(f"the activation name {name!r} is taken by {_BY_NAME[key]!r}")
    _BY_NAME[key] = fn
    return fn


def check(fn):
    """Return ``fn`` if it can serve as an activation: a function of a JAX
    array, written with ``jax.numpy`` (so that ``jax.grad`` differentiates
    it), giving an array of the same shape. Otherwise a ``ValueError`` saying
    what is wrong (a ``TypeError`` for something that is not callable).
    (Traces ``fn`` once on an abstract [2, 3] float32 input.)"""
    if not callable(fn):
        raise TypeError(f"an activation function must be callable, got {fn!r}")
    probe = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    try:
        out = jax.eval_shape(fn, probe)
    except Exception as e:  # noqa: BLE001 - any failure to trace is in the user's function
        raise ValueError(
            f"the activation function {fn!r} cannot be traced by JAX: write it with jax.numpy "
            f"(e.g. lambda z: jnp.maximum(z, 0.1 * z)), not numpy or Theano. Tracing it raised "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if getattr(out, "shape", None) != probe.shape:
        raise ValueError(f"the activation function {fn!r} must act elementwise (same shape out as in): "
                         f"[2, 3] gave {getattr(out, 'shape', type(out).__name__)}")
    return fn
