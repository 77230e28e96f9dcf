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

network3's layers: ``conv_pool`` (ConvPoolLayer), ``fully_connected``
(FullyConnectedLayer) and ``softmax`` (SoftmaxLayer).
"""
import functools
import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax.activations import linear, sigmoid

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


# --- the fully connected product -----------------------------------------------

# Every product and convolution of the layers is computed to float32's full
# precision: on GPUs XLA's default lets float32 products run in TF32 (a 10-bit
# mantissa), which moves the book's numbers by about 1e-3 relative (seen on an
# H200: feedforward 2e-3 off the float64 formula). On the CPU this changes nothing.
PRECISION = jax.lax.Precision.HIGHEST

_CONTRACT_FEATURES = (((1,), (1,)), ((), ()))   # dz [n, n_out] · w [n_in, n_out] over n_out
_CONTRACT_BATCH = (((0,), (0,)), ((), ()))      # x [n, n_in] · dz [n, n_out] over the batch


@jax.custom_vjp
def dense_product(x, w):
    """x·w for x [n, n_in] and w [n_in, n_out]: the weighted input of ``dense``.

    The same function as ``x @ w``, with a hand-written VJP that chooses how
    the weight gradient xᵀ·dz is made (``weight_gradient``), by w's shape.
    ``tests/test_equivalence.py`` checks it against ``jax.grad`` of ``x @ w``.
    """
    return jnp.matmul(x, w, precision=PRECISION)


# Layers at most this many units wide take their weight gradient as (dzᵀ·x)ᵀ.
NARROW_LAYER = 32


def weight_gradient(x, dz):
    """xᵀ·dz [n_in, n_out] for x [n, n_in] and dz [n, n_out]: the weight
    gradient of ``dense_product``, made in whichever of two layouts XLA:CPU
    runs faster for the layer's width (measured on the 2-core CPU, scanned
    epochs side by side; benchmarks/README.md).

    - n_out > ``NARROW_LAYER`` (784×100, 640×1000, 1000×1000): directly as
      xᵀ·dz, in w's own [n_in, n_out] layout. ``jax.grad`` of ``x @ w`` makes
      (dzᵀ·x)ᵀ instead, which XLA keeps as a column-major product that the SGD
      update then reads with a stride: for network3's 1000×1000 layers that
      strided pass over 4 MB costs more than the product itself (dropout net
      0.90× the step), and chapter 3's [784, 100, 10] step takes 0.82×.
    - n_out ≤ ``NARROW_LAYER`` (the book's 784×30, and every 10-unit output
      layer): as (dzᵀ·x)ᵀ. XLA:CPU makes a product contracted over the batch
      axis with Eigen (not YNNPACK), which writes a [30, 784] result faster
      than a [784, 30] one (10 against 15 µs a step, scanned alone), and
      chapter 1's whole [784, 30, 10] step takes 0.60–0.83× the time it
      takes with xᵀ·dz (``bench_epoch``'s scan-xTdz row; interleaved probes).
    Either way the same sums are formed; the float64 tests hold both forms to
    ``jax.grad`` of ``x @ w``.
    """
    if dz.shape[-1] <= NARROW_LAYER:
        return jax.lax.dot_general(dz, x, _CONTRACT_BATCH, precision=PRECISION).T
    return jax.lax.dot_general(x, dz, _CONTRACT_BATCH, precision=PRECISION)


def _dense_product_fwd(x, w):
    return jnp.matmul(x, w, precision=PRECISION), (x, w)


def _dense_product_bwd(res, dz):
    x, w = res
    dx = jax.lax.dot_general(dz, w, _CONTRACT_FEATURES, precision=PRECISION).astype(x.dtype)
    return dx, weight_gradient(x, dz).astype(w.dtype)


dense_product.defvjp(_dense_product_fwd, _dense_product_bwd)


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
        b = b.reshape(1, -1)  # explicit broadcast over the batch (strict rank promotion)
        if p_dropout and train:
            if key is None:
                raise ValueError("a dropout layer needs a PRNG key when train=True")
            z = dense_product(dropout(x, p_dropout, key), w) + b
        elif p_dropout:
            z = (1.0 - p_dropout) * dense_product(x, w) + b
        else:
            z = dense_product(x, w) + b
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
    """The fully connected network of the book's network.py / network2.py, as
    an ``(init, apply)`` pair (``mlp_net`` describes the same network as a ``Net``).

    ``sizes = [784, 30, 10]`` gives one hidden layer of 30 neurons with
    ``activation`` and an output layer returning its weighted input z (the
    cost supplies the output activation). Params: a list of {"w", "b"} dicts.
    """
    net = mlp_net(sizes, activation, init=init)
    return net.init, net.apply


def mlp_net(sizes, activation, *, init=default_weight_init):
    """``mlp``'s network as a hashable ``Net`` (what ``train.trainer_for`` keys on)."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least two positive layer sizes, got {sizes}")
    hidden = [layer("dense", n_out=n, activation=activation, init=init) for n in sizes[1:-1]]
    return Net(tuple(hidden) + (layer("dense", n_out=sizes[-1], activation=linear, init=init),))


def layer(kind, **args):
    """One layer of a ``Net``: ``(kind, ((name, value), ...))``, lists made tuples."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; known: {sorted(LAYER_KINDS)}")
    frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return kind, tuple(sorted(frozen.items()))


@dataclass(frozen=True)
class Net:
    """A network described by hashable data, in the way Equinox keys on a
    module's static fields: ``layers`` is a tuple of ``layer(kind, **args)``,
    each a kind of ``LAYER_KINDS`` and its arguments (activation functions are
    compared by identity). Equal descriptions are the same network, so
    ``train.trainer_for`` gives them one trainer and one compiled epoch,
    however many book networks of those sizes a session makes.

    ``init``/``apply``: the ``serial`` composition of the layers, built once
    per ``Net`` object."""

    layers: tuple

    @functools.cached_property
    def _pair(self):
        return serial(*(LAYER_KINDS[kind](**dict(args)) for kind, args in self.layers))

    @property
    def init(self):
        return self._pair[0]

    @property
    def apply(self):
        return self._pair[1]

    def without_init(self):
        """The same network less its initializers, which ``apply`` never uses:
        what compiled programs are keyed on (a net redrawn with another
        initializer keeps its trainer)."""
        return Net(tuple((kind, tuple((k, v) for k, v in args if k != "init")) for kind, args in self.layers))


# --- network3's layers: convolution + max-pooling, fully connected, softmax --

CONV_LAYOUTS = ("NCHW", "NHWC")


def conv_layout(layout="auto", backend=None):
    """The internal layout a conv-pool layer computes in: ``"auto"`` picks
    "NHWC" on the CPU and "NCHW" (the book's) elsewhere, at trace time
    (``backend`` defaults to JAX's; tests force the other backend's choice).

    On the CPU, XLA runs a convolution fast (Eigen) only in its canonical form
    (batch-spatial-features, kernel spatial-in-out). Inside a ``lax.scan`` the
    gradient convolutions that ``jax.grad`` emits stay in other forms and fall
    back to slow loops (measured: a scanned step of the two-conv net 9.2 ms in
    NCHW, 24 ms in NHWC, against 6.1 / 4.7 ms for a Python loop over the jitted
    step); ``conv2d_nhwc`` writes its gradients canonically (4.0 ms scanned).
    The NHWC path also pools through ``max_pool_first``, whose gradient avoids
    XLA:CPU's slow ``select_and_scatter``; NCHW keeps ``jax.grad`` throughout
    (the GPU path). See ``benchmarks/bench_conv.py``, which times both.
    """
    if layout == "auto":
        return "NHWC" if (backend or jax.default_backend()) == "cpu" else "NCHW"
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {CONV_LAYOUTS}, got {layout!r}")
    return layout


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_nhwc(x, w, padding="VALID"):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC, precision=PRECISION)


@jax.custom_vjp
def conv2d_nhwc(x, w):
    """Valid cross-correlation, stride 1: x [n, h, w, c], w [fh, fw, c, k] -> [n, h-fh+1, w-fw+1, k].

    The same function as ``lax.conv_general_dilated`` in NHWC/HWIO, with a
    hand-written VJP whose two convolutions are in XLA's canonical form (see
    ``conv_layout``); ``tests/test_conv_equivalence.py`` checks it against the
    NumPy reference and against ``jax.grad`` of the plain convolution.
    """
    return _conv_nhwc(x, w)


def _conv2d_nhwc_fwd(x, w):
    return _conv_nhwc(x, w), (x, w)


def _conv2d_nhwc_bwd(res, dy):
    x, w = res
    fh, fw = w.shape[0], w.shape[1]
    # dw[i, j, c, k] = sum_{n, p, q} x[n, p+i, q+j, c] dy[n, p, q, k]: a valid
    # correlation with c as the batch axis and n as the contracted feature axis.
    dw = _conv_nhwc(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3)).transpose(1, 2, 0, 3)
    # dx: the full correlation of dy with the flipped kernel, in and out swapped.
    w_flip = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv_nhwc(dy, w_flip, ((fh - 1, fh - 1), (fw - 1, fw - 1)))
    return dx, dw


conv2d_nhwc.defvjp(_conv2d_nhwc_fwd, _conv2d_nhwc_bwd)


def _pool_window(poolsize, layout):
    ph, pw = poolsize
    return (1, 1, ph, pw) if layout == "NCHW" else (1, ph, pw, 1)


def max_pool(x, poolsize, layout="NCHW"):
    """Non-overlapping max-pooling of feature maps (Theano's ``pool_2d`` with
    ``ignore_border=True``): windows of ``poolsize`` with the same stride;
    rows and columns that do not fill a window are dropped. Differentiated by
    ``jax.grad`` (a ``select_and_scatter`` in XLA); see ``max_pool_first``."""
    window = _pool_window(poolsize, layout)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_first(x, poolsize, layout="NCHW"):
    """``max_pool`` with a hand-written VJP: each window passes its gradient to
    the FIRST of its maxima in row-major order (the NumPy reference's rule,
    ``backprop.conv_pool_backward``), 0 elsewhere and in dropped rows/columns.

    The forward is the same ``lax.reduce_window``. The backward needs no
    ``select_and_scatter`` (slow on XLA:CPU): the window offsets (r, s) are
    visited in row-major order, each through a strided slice of ``x`` compared
    with the pooled maxima, and the routed gradients are interleaved back into
    place. Where a window has no tie this equals ``jax.grad`` of ``max_pool``
    (tests/test_conv_equivalence.py).
    """
    return max_pool(x, poolsize, layout)


def _max_pool_first_fwd(x, poolsize, layout):
    y = max_pool(x, poolsize, layout)
    return y, (x, y)


def _max_pool_first_bwd(poolsize, layout, res, dy):
    x, y = res
    ph, pw = poolsize
    ah = 2 if layout == "NCHW" else 1              # the row axis; columns follow it
    ho, wo = y.shape[ah], y.shape[ah + 1]
    zero = jnp.zeros((), dy.dtype)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for r in range(ph):
        cols = []
        for s in range(pw):
            start = [0] * x.ndim
            start[ah], start[ah + 1] = r, s
            limit = list(y.shape)
            limit[ah], limit[ah + 1] = r + (ho - 1) * ph + 1, s + (wo - 1) * pw + 1
            strides = [1] * x.ndim
            strides[ah], strides[ah + 1] = ph, pw
            first = (jax.lax.slice(x, start, limit, strides) == y) & ~taken
            taken = taken | first
            cols.append(jnp.where(first, dy, zero))
        rows.append(jnp.stack(cols, axis=ah + 2))  # [..., ho, wo, pw, ...]
    g = jnp.stack(rows, axis=ah + 1)               # [..., ho, ph, wo, pw, ...]
    shape = list(y.shape)
    shape[ah], shape[ah + 1] = ho * ph, wo * pw
    g = g.reshape(shape)
    pad = [(0, 0)] * x.ndim
    pad[ah], pad[ah + 1] = (0, x.shape[ah] - ho * ph), (0, x.shape[ah + 1] - wo * pw)
    return (jnp.pad(g, pad),)


max_pool_first.defvjp(_max_pool_first_fwd, _max_pool_first_bwd)


def sizes_of(values, name):
    """``values`` (a shape) as a tuple of ints, refusing any that is not a
    whole number (5.5 is an error, not 5; so are True, NaN and "5")."""
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of sizes, got {values!r}") from None
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v) or v != int(v):
            raise ValueError(f"{name} must hold whole numbers, got {values!r}")
    return tuple(int(v) for v in values)


def conv_pool(filter_shape, image_shape, poolsize=(2, 2), activation=sigmoid, *, layout="auto"):
    """network3's ConvPoolLayer: a = act(maxpool(x ⋆ w) + b).

    - ``filter_shape = (k, c, fh, fw)``: k feature maps, c input maps, fh × fw filters.
    - ``image_shape = (mini_batch_size, c, h, w)``: only ``(c, h, w)`` is used
      (the batch axis is free); ``x`` may be ``[n, c*h*w]`` (the book's flat
      images, e.g. ``[n, 784]``) or ``[n, c, h, w]``.
    - ``x ⋆ w`` is a valid cross-correlation with stride 1
      (``lax.conv_general_dilated``): no kernel flip. Theano's ``conv2d``
      flips the kernel (a true convolution); since the filters are learned
      from a symmetric initialization, this only mirrors the learned filters.
    - The max-pool comes BEFORE the bias and the activation, as in the book.
    - The output has shape ``[n, k, (h-fh+1)//ph, (w-fw+1)//pw]``: in (c, h, w)
      order, so flattening it (as the next ``dense`` layer does) matches
      Theano's ``flatten(2)``.

    Params: ``{"w": filter_shape, "b": [k]}``, w ~ N(0, 1/n_out) with
    n_out = k·fh·fw/(ph·pw), b ~ N(0, 1), as network3 initializes them.
    ``layout`` chooses the internal layout of the convolution ("NCHW", the
    book's, "NHWC", or "auto": see ``conv_layout``); the params, input and
    output keep the book's layout either way, with transposes at the edges.
    """
    filter_shape = sizes_of(filter_shape, "filter_shape")
    image_shape = sizes_of(image_shape, "image_shape")
    poolsize = sizes_of(poolsize, "poolsize")
    if len(filter_shape) != 4 or min(filter_shape) < 1:
        raise ValueError(f"filter_shape must be 4 positive sizes (k, c, fh, fw), got {filter_shape}")
    if len(image_shape) != 4 or min(image_shape[1:]) < 1:
        raise ValueError(f"image_shape must be (mini_batch_size, c, h, w), got {image_shape}")
    if len(poolsize) != 2 or min(poolsize) < 1:
        raise ValueError(f"poolsize must be two positive sizes, got {poolsize}")
    conv_layout(layout)  # validates it
    k, c, fh, fw = filter_shape
    chw = image_shape[1:]
    if chw[0] != c:
        raise ValueError(f"filter_shape has {c} input maps but image_shape has {chw[0]}")
    if chw[1] < fh or chw[2] < fw:
        raise ValueError(f"filters {fh}x{fw} do not fit images {chw[1]}x{chw[2]}")
    ph, pw = poolsize
    out_shape = (k, (chw[1] - fh + 1) // ph, (chw[2] - fw + 1) // pw)
    if min(out_shape) < 1:
        raise ValueError(f"the pool {poolsize} is larger than the convolved maps")

    def init_fn(key, input_shape):
        if math.prod(input_shape) != math.prod(chw):
            raise ValueError(f"conv_pool expects inputs of {math.prod(chw)} values "
                             f"(image_shape {chw}), got input_shape {tuple(input_shape)}")
        n_out = k * fh * fw / (ph * pw)
        kw, kb = jax.random.split(key)
        w = jax.random.normal(kw, filter_shape) * math.sqrt(1.0 / n_out)
        b = jax.random.normal(kb, (k,))
        return out_shape, {"w": w, "b": b}

    def apply_fn(params, x, *, train=False, key=None):
        del train, key  # no dropout in network3's ConvPoolLayer
        x = x.reshape((x.shape[0],) + chw)
        w, b = params["w"], params["b"]
        if conv_layout(layout) == "NCHW":
            s = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=PRECISION)
            s = max_pool(s, poolsize, "NCHW") + b.reshape(1, k, 1, 1)
            return activation(s)
        s = conv2d_nhwc(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0))
        s = max_pool_first(s, poolsize, "NHWC") + b.reshape(1, 1, 1, k)
        return activation(s).transpose(0, 3, 1, 2)

    return init_fn, apply_fn


def fully_connected(n_out, activation=sigmoid, *, p_dropout=0.0):
    """network3's FullyConnectedLayer: ``dense`` with network3's initializer
    (w ~ N(0, 1/n_out), b ~ N(0, 1)) and the book's dropout on its input."""
    return dense(n_out, activation, init=network3_init, p_dropout=p_dropout)


def softmax(n_out, *, p_dropout=0.0):
    """network3's SoftmaxLayer, returning its weighted input z: zero-initialized
    weights and biases, dropout on its input; the softmax itself comes with the
    cost (``costs.log_likelihood``), which computes log-softmax stably from z."""
    return dense(n_out, linear, init=zeros_init, p_dropout=p_dropout)


LAYER_KINDS = {"dense": dense, "conv_pool": conv_pool, "fully_connected": fully_connected, "softmax": softmax}
