"""The activation functions of the book: sigmoid, tanh, ReLU, linear.

Each is a plain elementwise JAX function of the weighted input ``z``. The
book's network.py and network2.py use the sigmoid throughout; network3.py
lets each layer choose (``activation_fn=ReLU`` ...). Derivatives are not
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
    """Look an activation up by its name ("sigmoid", "tanh", "relu", "linear")."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_BY_NAME)}") from None


def name_of(fn):
    """The name under which ``fn`` is known (inverse of ``by_name``)."""
    for name, f in _BY_NAME.items():
        if f is fn:
            return name
    raise ValueError(f"{fn!r} is not one of the book's activations {sorted(_BY_NAME)}")
