"""network3's layers against the NumPy reference and against the book's rules.

- conv_pool's outputs and jax.grad (wrt x, w, b of Σ upstream ⊙ a) equal
  backprop.conv_pool_forward / conv_pool_backward in float64 to ≤ 1e-10, for
  the four activations and both internal layouts; the NHWC layout's
  hand-written convolution VJP equals jax.grad of the plain convolution;
- the hand-written max-pool VJP (layers.max_pool_first) equals the reference
  and jax.grad of the reduce_window pool, ties included (first maximum wins);
- dropout keeps a fraction ≈ 1 − p of the units, and the evaluation scaling
  by (1 − p) equals the expectation of the training output;
- every layer's init promises the shape its apply gives; one value by hand.
"""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import activations, backprop, layers

TOL = 1e-10


def _random_case(seed, n=3, c=2, h=10, w=9, k=4, f=3):
    rng = np.random.default_rng(seed)
    # distinct values: no ties inside a pool window and no z exactly 0 for ReLU
    x = rng.normal(size=(n, c, h, w))
    wt = rng.normal(size=(k, c, f, f))
    b = rng.normal(size=(k,))
    return x, wt, b


@pytest.mark.parametrize("layout", layers.CONV_LAYOUTS)
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "linear"])
def test_conv_pool_forward_and_grads_match_numpy_reference(name, layout):
    x, w, b = _random_case(1)
    _init, apply = layers.conv_pool(w.shape, (7,) + x.shape[1:], (2, 2),
                                   activations.by_name(name), layout=layout)
    ref = backprop.conv_pool_forward(x, w, b, (2, 2), name)
    upstream = np.random.default_rng(2).normal(size=ref.shape)
    dx_ref, dw_ref, db_ref = backprop.conv_pool_backward(x, w, b, upstream, (2, 2), name)
    with jax.enable_x64(True):
        xj, wj, bj, uj = (jnp.asarray(a, jnp.float64) for a in (x, w, b, upstream))
        a = apply({"w": wj, "b": bj}, xj)
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=TOL)

        def s(x_, w_, b_):
            return jnp.sum(uj * apply({"w": w_, "b": b_}, x_))

        dx, dw, db = jax.grad(s, argnums=(0, 1, 2))(xj, wj, bj)
        np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=0, atol=TOL)
        np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=0, atol=TOL)
        np.testing.assert_allclose(np.asarray(db), db_ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", [((3, 10, 9, 2), (3, 3, 2, 4)), ((2, 12, 12, 20), (5, 5, 20, 40)),
                                   ((1, 7, 6, 1), (4, 2, 1, 3))])
def test_conv2d_nhwc_hand_written_vjp_equals_jax_grad_of_the_plain_convolution(shape):
    """The canonical-form gradient convolutions of layers.conv2d_nhwc against
    jax.grad of lax.conv_general_dilated, float64, ≤ 1e-10 (square and
    rectangular filters, one and many input maps)."""
    x_shape, w_shape = shape
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x, w = (jnp.asarray(rng.normal(size=s), jnp.float64) for s in (x_shape, w_shape))
        def plain(x_, w_):
            return jax.lax.conv_general_dilated(
                    x_, w_, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = layers.conv2d_nhwc(x, w)
        np.testing.assert_allclose(np.asarray(y), np.asarray(plain(x, w)), rtol=0, atol=TOL)
        u = jnp.asarray(rng.normal(size=y.shape), jnp.float64)
        got = jax.grad(lambda a, b: jnp.sum(u * layers.conv2d_nhwc(a, b)), (0, 1))(x, w)
        want = jax.grad(lambda a, b: jnp.sum(u * plain(a, b)), (0, 1))(x, w)
        for g, v in zip(got, want):
            assert g.shape == v.shape
            np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=0, atol=TOL)


def _pool_reference(x_nchw, upstream, pool):
    """The NumPy reference's max-pool and its gradient, alone: a conv-pool layer
    with one 1x1 filter of weight 1, no bias and the identity activation."""
    c = x_nchw.shape[1]
    one = np.ones((1, 1, 1, 1))
    zero = np.zeros(1)
    pooled, routed = [], []
    for ch in range(c):  # one input map at a time: the reference's conv mixes maps
        xc = x_nchw[:, ch:ch + 1]
        pooled.append(backprop.conv_pool_forward(xc, one, zero, pool, "linear"))
        routed.append(backprop.conv_pool_backward(xc, one, zero, upstream[:, ch:ch + 1], pool, "linear")[0])
    return np.concatenate(pooled, axis=1), np.concatenate(routed, axis=1)


def _to(layout, a_nchw):
    return a_nchw if layout == "NCHW" else a_nchw.transpose(0, 2, 3, 1)


POOL_CASES = [((2, 3, 8, 8), (2, 2)), ((3, 2, 7, 9), (2, 2)), ((2, 2, 9, 7), (3, 2)),
              ((1, 4, 5, 6), (1, 1)), ((2, 1, 6, 6), (2, 3))]


@pytest.mark.parametrize("layout", layers.CONV_LAYOUTS)
@pytest.mark.parametrize("x_shape, pool", POOL_CASES)
def test_max_pool_first_value_and_vjp_match_numpy_reference_and_jax_grad(x_shape, pool, layout):
    """Distinct values (no ties): layers.max_pool_first's value and VJP equal the
    NumPy reference and jax.grad of the plain reduce_window pool, float64,
    ≤ 1e-10; odd sizes drop the rows/columns outside every window (gradient 0)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=x_shape)
    ho, wo = x_shape[2] // pool[0], x_shape[3] // pool[1]
    upstream = rng.normal(size=x_shape[:2] + (ho, wo))
    ref_y, ref_dx = _pool_reference(x, upstream, pool)
    with jax.enable_x64(True):
        xj, uj = jnp.asarray(_to(layout, x)), jnp.asarray(_to(layout, upstream))
        y, vjp = jax.vjp(lambda a: layers.max_pool_first(a, pool, layout), xj)
        (dx,) = vjp(uj)
        (dx_plain,) = jax.vjp(lambda a: layers.max_pool(a, pool, layout), xj)[1](uj)
        assert y.dtype == dx.dtype == jnp.float64 and dx.shape == xj.shape
        np.testing.assert_allclose(np.asarray(y), _to(layout, ref_y), rtol=0, atol=TOL)
        np.testing.assert_allclose(np.asarray(dx), _to(layout, ref_dx), rtol=0, atol=TOL)
        np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_plain), rtol=0, atol=TOL)


@pytest.mark.parametrize("layout", layers.CONV_LAYOUTS)
def test_max_pool_first_sends_a_tied_window_gradient_to_its_first_maximum(layout):
    """Ties, as ReLU zeros and blank image borders make them: constant windows,
    windows of zeros, and a maximum repeated in the second row. Each window's
    gradient goes to its first maximum in row-major order (the reference's
    rule), once: the routed values sum to the upstream, float64, ≤ 1e-10."""
    x = np.zeros((2, 2, 6, 7))
    x[0, 0, :2, :2] = 3.0                                   # a constant window
    x[0, 1] = np.maximum(np.random.default_rng(7).normal(size=(6, 7)), 0.0)  # ReLU zeros
    x[1, 0, 2:4, 2:4] = [[1.0, 2.0], [2.0, 0.5]]            # max repeated at (0,1) and (1,0)
    x[1, 1] = np.repeat(np.arange(3.0), 2)[:, None] * np.ones((1, 7))  # rows tied in pairs
    upstream = np.random.default_rng(8).normal(size=(2, 2, 3, 3))
    ref_y, ref_dx = _pool_reference(x, upstream, (2, 2))
    assert ref_dx[0, 0, 0, 0] == upstream[0, 0, 0, 0] and ref_dx[1, 0, 2, 3] == upstream[1, 0, 1, 1]
    with jax.enable_x64(True):
        xj, uj = jnp.asarray(_to(layout, x)), jnp.asarray(_to(layout, upstream))
        y, vjp = jax.vjp(lambda a: layers.max_pool_first(a, (2, 2), layout), xj)
        (dx,) = vjp(uj)
        np.testing.assert_allclose(np.asarray(y), _to(layout, ref_y), rtol=0, atol=TOL)
        np.testing.assert_allclose(np.asarray(dx), _to(layout, ref_dx), rtol=0, atol=TOL)
        assert float(jnp.sum(dx)) == pytest.approx(float(np.sum(upstream)), abs=TOL)


def test_conv_pool_with_tied_pool_windows_matches_numpy_reference():
    """The whole CPU conv-pool path (NHWC, both hand-written VJPs) on an image
    with a blank border and a flat patch, so that many conv windows tie at
    exactly 0: outputs and gradients equal the reference, float64, ≤ 1e-10."""
    rng = np.random.default_rng(9)
    x = np.zeros((2, 1, 12, 12))
    x[:, :, 4:9, 3:10] = rng.random((2, 1, 5, 7))
    x[1, 0, 4:9, 3:10] = 0.5                                # a flat patch: equal conv values
    w = rng.normal(size=(3, 1, 3, 3))
    b = rng.normal(size=(3,))
    conv = backprop.correlate(x, w)[:, :, :10, :10].reshape(2, 3, 5, 2, 5, 2)
    tied = (conv == conv.max(axis=(3, 5), keepdims=True)).sum(axis=(3, 5)) > 1
    assert tied[0].sum() > 10 and tied[1].sum() > tied[0].sum()  # zero windows; the flat patch adds more
    _init, apply = layers.conv_pool(w.shape, (2, 1, 12, 12), (2, 2), activations.relu, layout="NHWC")
    ref = backprop.conv_pool_forward(x, w, b, (2, 2), "relu")
    upstream = rng.normal(size=ref.shape)
    grads_ref = backprop.conv_pool_backward(x, w, b, upstream, (2, 2), "relu")
    with jax.enable_x64(True):
        xj, wj, bj, uj = (jnp.asarray(a, jnp.float64) for a in (x, w, b, upstream))
        np.testing.assert_allclose(np.asarray(apply({"w": wj, "b": bj}, xj)), ref, rtol=0, atol=TOL)
        grads = jax.grad(lambda x_, w_, b_: jnp.sum(uj * apply({"w": w_, "b": b_}, x_)),
                         argnums=(0, 1, 2))(xj, wj, bj)
        for g, want in zip(grads, grads_ref):
            np.testing.assert_allclose(np.asarray(g), want, rtol=0, atol=TOL)


def test_conv_layout_auto_is_nhwc_on_the_cpu_and_nchw_elsewhere():
    assert layers.conv_layout("auto") == ("NHWC" if jax.default_backend() == "cpu" else "NCHW")
    assert layers.conv_layout("auto", backend="gpu") == "NCHW" and layers.conv_layout("auto", backend="cpu") == "NHWC"
    assert [layers.conv_layout(lay) for lay in layers.CONV_LAYOUTS] == list(layers.CONV_LAYOUTS)
    with pytest.raises(ValueError, match="'auto'"):
        layers.conv_layout("HWCN")


def test_conv_net_trained_k_at_a_time_by_vmap_and_by_map_agree():
    """Two conv nets trained as one program: vmapped (grouped convolutions) and
    one after another (lax.map) give the same params, float32 tolerance 1e-5."""
    from nndl_jax import costs, train
    init, apply = layers.serial(layers.conv_pool((3, 1, 3, 3), (5, 1, 8, 8), (2, 2), activations.relu),
                                layers.conv_pool((2, 3, 2, 2), (5, 3, 3, 3), (1, 1), activations.sigmoid),
                                layers.softmax(10))
    rng = np.random.default_rng(5)
    data = (rng.random((23, 64), dtype=np.float32), rng.integers(0, 10, 23).astype(np.int32))
    init_keys, train_keys = train.seed_keys([1, 2])
    params = train.init_many(init, init_keys, (64,))
    out = {}
    for mode in ("vmap", "map"):
        trainer = train.Trainer(apply, costs.log_likelihood, 5, penalty="l2", over_k=mode)
        out[mode], _, _ = train.fit(trainer, params, data, 2, key=train_keys, eta=jnp.array([0.1, 0.3]),
                                    lmbda=0.5)
    for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (out["vmap"], out["map"]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(out["map"][0]["w"]), np.asarray(params[0]["w"]), atol=1e-3)


def test_conv_pool_accepts_flat_images_and_drops_partial_windows():
    # 28x28 through 5x5 filters gives 24x24, pooled to 12x12; a 9-wide map
    # through 3x3 gives 7 columns, pooled to 3 (the 7th column is dropped).
    x, w, b = _random_case(3, h=10, w=9)
    _, apply = layers.conv_pool(w.shape, (1,) + x.shape[1:])
    flat = apply({"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)},
                 jnp.asarray(x.reshape(len(x), -1), jnp.float32))
    assert flat.shape == (3, 4, 4, 3)
    ref = backprop.conv_pool_forward(x, w, b)
    np.testing.assert_allclose(np.asarray(flat), ref, rtol=1e-5, atol=1e-5)  # float32


def test_conv_pool_hand_computed_value():
    # one 3x3 image [[0, 2, 4], [6, 8, 10], [12, 14, 16]], one 2x2 filter of
    # ones: the correlation is the sums of 2x2 blocks [[16, 24], [40, 48]]; the
    # 2x2 max-pool gives 48; + b = -47.5; a = sigmoid(0.5).
    x = jnp.arange(9.0, dtype=jnp.float32).reshape(1, 1, 3, 3) * jnp.float32(2.0)
    _init, apply = layers.conv_pool((1, 1, 2, 2), (1, 1, 3, 3), (2, 2))
    a = apply({"w": jnp.ones((1, 1, 2, 2)), "b": jnp.full((1,), -47.5)}, x)
    assert a.shape == (1, 1, 1, 1)
    assert float(a[0, 0, 0, 0]) == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)


def test_conv_pool_init_follows_network3():
    # w ~ N(0, 1/n_out), n_out = k*fh*fw/prod(pool) = 40*25/4 = 250; b ~ N(0, 1)
    init, _ = layers.conv_pool((40, 20, 5, 5), (10, 20, 12, 12))
    shape, p = init(jax.random.key(0), (20 * 12 * 12,))
    assert shape == (40, 4, 4) and p["w"].shape == (40, 20, 5, 5) and p["b"].shape == (40,)
    # sample std of 20,000 normal draws: relative standard error ≈ 1/sqrt(2*20000) = 0.5%
    assert float(jnp.std(p["w"])) == pytest.approx(math.sqrt(1 / 250), rel=0.03)


@pytest.mark.parametrize("make, in_shape", [
    (lambda: layers.conv_pool((20, 1, 5, 5), (10, 1, 28, 28)), (784,)),
    (lambda: layers.conv_pool((40, 20, 5, 5), (10, 20, 12, 12), activation=activations.relu,
                              layout="NHWC"), (20, 12, 12)),
    (lambda: layers.fully_connected(100, activations.tanh, p_dropout=0.5), (40, 4, 4)),
    (lambda: layers.softmax(10, p_dropout=0.5), (100,)),
])
def test_shape_promised_by_init_is_shape_from_apply(make, in_shape, key):
    init, apply = make()
    out_shape, params = init(key, in_shape)
    x = jnp.ones((3,) + in_shape)
    assert apply(params, x).shape == (3,) + tuple(out_shape)
    assert apply(params, x, train=True, key=key).shape == (3,) + tuple(out_shape)


def test_softmax_layer_starts_at_zero(key):
    _, p = layers.softmax(10)[0](key, (100,))
    assert not np.any(np.asarray(p["w"])) and not np.any(np.asarray(p["b"]))


def test_conv_pool_rejects_bad_shapes():
    with pytest.raises(ValueError, match="input maps"):
        layers.conv_pool((20, 3, 5, 5), (10, 1, 28, 28))
    with pytest.raises(ValueError, match="do not fit"):
        layers.conv_pool((20, 1, 30, 30), (10, 1, 28, 28))
    with pytest.raises(ValueError, match="layout"):
        layers.conv_pool((20, 1, 5, 5), (10, 1, 28, 28), layout="HWCN")
    init, _ = layers.conv_pool((20, 1, 5, 5), (10, 1, 28, 28))
    with pytest.raises(ValueError, match="784"):
        init(jax.random.key(0), (100,))


P = 0.5
N_UNITS = 200_000


def test_dropout_keeps_a_fraction_one_minus_p():
    x = jnp.ones((1, N_UNITS))
    kept = float(jnp.mean(layers.dropout(x, P, jax.random.key(7)) != 0))
    # binomial: sd of the kept fraction = sqrt(p(1-p)/N) ≈ 0.0011; allow 5 sd
    assert abs(kept - (1 - P)) < 5 * math.sqrt(P * (1 - P) / N_UNITS)


def test_dropout_evaluation_scaling_is_the_expected_training_output(key):
    # E[dropout(x)·w + b] = (1-p)·x·w + b: the mean training output of a linear
    # layer over many dropout masks equals its evaluation output.
    init, apply = layers.dense(5, activations.linear, init=layers.network3_init, p_dropout=P)
    _, params = init(key, (50,))
    x = jax.random.uniform(jax.random.key(1), (1, 50))
    evaluation = apply(params, x)
    draws = 20_000
    train_out = jax.vmap(lambda k: apply(params, x, train=True, key=k))(
        jax.random.split(jax.random.key(2), draws))[:, 0, :]
    # per output: sd of one draw is sqrt(p(1-p) Σ x_i² w_i²); the mean of 20,000 draws
    # is within 5 standard errors.
    sd = jnp.sqrt(P * (1 - P) * jnp.sum((x[0][:, None] * params["w"]) ** 2, axis=0))
    err = jnp.abs(jnp.mean(train_out, axis=0) - evaluation[0])
    assert bool(jnp.all(err < 5 * sd / math.sqrt(draws))), (err, sd)
    # and without the scaling it would be wrong by far more than that
    unscaled = x @ params["w"] + params["b"].reshape(1, -1)
    assert float(jnp.max(jnp.abs(unscaled - evaluation))) > float(jnp.max(10 * sd / math.sqrt(draws)))


def test_max_pool_first_gradient_needs_no_select_and_scatter():
    """The point of the hand-written VJP: jax.grad of the plain pool lowers to
    select_and_scatter (slow on XLA:CPU); max_pool_first's gradient does not."""
    x = jnp.ones((2, 8, 8, 3))

    def grad_text(pool):
        return jax.jit(jax.grad(lambda a: jnp.sum(pool(a, (2, 2), "NHWC")))).lower(x).as_text()

    assert "select_and_scatter" in grad_text(layers.max_pool)
    assert "select_and_scatter" not in grad_text(layers.max_pool_first)


def _ynn_convolutions(hlo_text):
    """How many YNNPACK library fusions of a compiled XLA:CPU program hold a convolution."""
    bodies = dict(re.findall(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S))
    called = re.findall(r"calls=(%[\w.\-]+)[^\n]*__ynn_fusion", hlo_text)
    return sum(" convolution(" in bodies.get(name, "") for name in called)


def test_trainer_compiles_convolutions_without_ynnpack_on_the_cpu_and_gets_the_same_numbers():
    """devices.cpu_compiler_options() keeps XLA:CPU's convolutions out of YNNPACK
    (its library fusions), the faster path for the book's small convolutions
    (benchmarks/README.md). The compiled epoch of the book's two-conv net holds
    no YNNPACK convolution, and two epochs trained with and without the option
    agree to float32 rounding (tolerance 1e-5)."""
    from nndl_jax import costs, devices, train
    assert devices.cpu_compiler_options(backend="gpu") is None   # the accelerator's choice, forced
    options = devices.cpu_compiler_options()
    if jax.default_backend() != "cpu":
        assert options is None
        return
    assert options == devices.CPU_COMPILER_OPTIONS
    init, apply = layers.serial(layers.conv_pool((20, 1, 5, 5), (10, 1, 28, 28), (2, 2), activations.relu),
                                layers.conv_pool((40, 20, 5, 5), (10, 20, 12, 12), (2, 2), activations.relu),
                                layers.fully_connected(100, activations.relu), layers.softmax(10))
    rng = np.random.default_rng(3)
    data = (rng.random((60, 784), dtype=np.float32), rng.integers(0, 10, 60).astype(np.int32))
    init_keys, train_keys = train.seed_keys([4])
    params = train.init_many(init, init_keys, (784,))
    out = {}
    for name, opts in (("auto", "auto"), ("xla defaults", None)):
        trainer = train.Trainer(apply, costs.log_likelihood, 10, penalty="l2", compiler_options=opts)
        if name == "auto":
            state = trainer.init_opt_state(params, 0.03)
            args = (params, state, *(jnp.asarray(a) for a in data), train_keys, jnp.zeros(1), jnp.ones(1, bool))
            assert _ynn_convolutions(trainer.epoch.lower(*args).compile().as_text()) == 0
        out[name], _, _ = train.fit(trainer, params, data, 2, key=train_keys, eta=0.03, lmbda=0.1)
    for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in out.values())):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(out["auto"][0]["w"]), np.asarray(params[0]["w"]), atol=1e-4)
