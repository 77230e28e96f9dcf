"""Unit claims about the functional core: layers, initializers, mini-batches,
addressable epochs, K stacked nets, early stopping, the η schedule, argument
checks, the penalties' gradients and the Glorot-style analysis of chapter 3.

Default float32 throughout (the float64 cross-checks live in
test_equivalence.py). Statistical tolerances are stated next to each
assertion, as a multiple of the standard error of the estimate.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import activations, costs, devices, layers, train

# --- layers --------------------------------------------------------------------

@pytest.mark.parametrize("layer,input_shape", [
    (layers.dense(7), (5,)),
    (layers.dense(3, activations.sigmoid), (2, 3, 4)),     # multi-axis input is flattened
    (layers.mlp([5, 4, 3], activations.relu), (5,)),
], ids=["dense", "dense-flatten", "mlp-5-4-3"])
def test_apply_output_shape_equals_init_output_shape(layer, input_shape, key):
    init, apply = layer
    out_shape, params = init(key, input_shape)
    x = jnp.ones((6,) + input_shape)
    assert apply(params, x).shape == (6,) + tuple(out_shape)


def test_mlp_params_are_w_n_in_by_n_out_and_b_n_out_per_layer(key):
    _, params = layers.mlp([5, 4, 3], activations.sigmoid)[0](key, (5,))
    assert [(p["w"].shape, p["b"].shape) for p in params] == [((5, 4), (4,)), ((4, 3), (3,))]


def test_dense_computes_activation_of_x_w_plus_b_by_hand():
    _, apply = layers.dense(2, activations.sigmoid)
    params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([0.5, -1.0])}
    x = jnp.array([[1.0, 1.0], [0.0, -1.0]])
    # rows: [1+3+0.5, 2+4-1] = [4.5, 5], [-3+0.5, -4-1] = [-2.5, -5]
    want = 1 / (1 + np.exp(-np.array([[4.5, 5.0], [-2.5, -5.0]])))
    np.testing.assert_allclose(np.asarray(apply(params, x)), want, rtol=1e-6)


# --- the book's initializers -------------------------------------------------------

N_IN, N_OUT = 50, 2000     # 100,000 weights and 2,000 biases per draw


@pytest.mark.parametrize("name,w_std", [
    ("large", 1.0),                          # network.py: N(0, 1)
    ("default", 1 / math.sqrt(N_IN)),        # network2.py: N(0, 1/n_in)
    ("network3", math.sqrt(1 / N_OUT)),      # network3.py: N(0, 1/n_out)
])
def test_initializer_standard_deviations(name, w_std, key):
    w, b = layers.INITIALIZERS[name](key, N_IN, N_OUT)
    assert w.shape == (N_IN, N_OUT) and b.shape == (N_OUT,)
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    # The sample std of N normals has relative standard error 1/sqrt(2N):
    # 0.22 % for the weights, 1.6 % for the biases; allow about 6 standard errors.
    assert abs(w.std() / w_std - 1) < 0.015, w.std()
    assert abs(b.std() - 1) < 0.10, b.std()
    assert abs(w.mean()) < 6 * w_std / math.sqrt(w.size)
    assert abs(b.mean()) < 6 / math.sqrt(b.size)


def test_zeros_init_is_zero(key):
    w, b = layers.zeros_init(key, 3, 4)
    assert w.shape == (3, 4) and b.shape == (4,)
    assert not np.any(np.asarray(w)) and not np.any(np.asarray(b))


@pytest.mark.parametrize("name,want_std", [("large", math.sqrt(501)), ("default", math.sqrt(3 / 2))])
def test_glorot_analysis_std_of_z_with_1000_inputs_500_active(name, want_std, key):
    """BOOK-RESULTS 3.11: 1000 inputs, 500 of them 1 and 500 of them 0.
    z = Σ_{500 active} w_j + b has variance 500·σ_w² + 1: √501 ≈ 22.4 with
    N(0, 1) weights, √(500/1000 + 1) = √(3/2) ≈ 1.22 with N(0, 1/n_in)."""
    n_draws = 10_000                      # each output neuron is one independent draw of z
    init, apply = layers.dense(n_draws, init=name)
    _, params = init(key, (1000,))
    x = jnp.concatenate([jnp.ones((1, 500)), jnp.zeros((1, 500))], axis=1)
    z = np.asarray(apply(params, x), np.float64)[0]
    # relative standard error of the sample std: 1/sqrt(2·10,000) = 0.7 %; allow 4 % (≈ 5.7 SE)
    assert abs(z.std() / want_std - 1) < 0.04, (z.std(), want_std)


# --- mini-batches ----------------------------------------------------------------

def test_minibatch_indices_cover_every_index_exactly_once_per_epoch(key):
    n, m = 23, 5
    idx, mask = train.minibatch_indices(n, m, key, True)
    assert idx.shape == mask.shape == (5, 5)
    used = np.asarray(idx)[np.asarray(mask)]
    np.testing.assert_array_equal(np.sort(used), np.arange(n))
    assert not np.array_equal(used, np.arange(n))          # shuffled
    other, _ = train.minibatch_indices(n, m, jax.random.fold_in(key, 1), True)
    assert not np.array_equal(np.asarray(other), np.asarray(idx))   # another key, another order


def test_minibatch_indices_without_shuffle_are_dataset_order(key):
    idx, mask = train.minibatch_indices(20, 5, key, False)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(20).reshape(4, 5))
    assert np.all(np.asarray(mask))


def test_short_last_minibatch_is_masked_after_its_own_examples(key):
    idx, mask = train.minibatch_indices(23, 5, key, False)
    mask = np.asarray(mask)
    assert mask[:4].all()
    np.testing.assert_array_equal(mask[4], [True, True, True, False, False])
    np.testing.assert_array_equal(np.asarray(idx)[4, :3], [20, 21, 22])


# --- fitting: addressable epochs and K stacked nets -----------------------------------

SIZES = [4, 6, 3]


def toy_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)   # 3 classes
    return x, y


def assert_trees_close(a, b, rtol, atol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def toy():
    """A [4, 6, 3] sigmoid net trained with cross-entropy, L2 and momentum; one
    Trainer for the tests below, so its compiled K = 1 epoch is shared."""
    init, apply = layers.mlp(SIZES, activations.sigmoid)
    trainer = train.Trainer(apply, costs.cross_entropy, 8, penalty="l2", momentum=0.5)
    return init, trainer, toy_data()


def test_epoch_e_is_the_same_whether_or_not_earlier_epochs_ran_in_this_process(toy, key, tmp_path):
    """fold_in(key, e): a 3-epoch run stopped after 2 epochs and resumed from
    its checkpoint in a new ``fit`` gives exactly the params of 3 epochs in one
    call; training the saved params one more epoch as a fresh run (epoch 0's
    shuffle, fresh momentum) does not. fit must not consume the caller's buffers."""
    init, trainer, data = toy
    params = train.stack([init(key, (SIZES[0],))[1]])
    kw = dict(key=jax.random.key(42), eta=0.5, lmbda=1.0)

    three, _, _ = train.fit(trainer, params, data, 3, **kw)

    def stop_after_two(e, record):
        if e == 1:
            raise KeyboardInterrupt
    ckpt = train.Checkpoint(tmp_path / "run.npz", {"test": "resume"})
    with pytest.raises(KeyboardInterrupt):
        train.fit(trainer, params, data, 3, checkpoint=ckpt, on_epoch=stop_after_two, **kw)
    assert ckpt.epochs_done() == 2
    events = []
    resumed, _, hist = train.fit(trainer, params, data, 3, checkpoint=ckpt,
                                 on_epoch=lambda e, r: events.extend(r["events"]), **kw)
    assert events == [{"event": "resumed", "path": str(ckpt.path), "epochs_done": 2, "epochs": 3}]
    assert hist.resumed_epochs == 2 and len(hist.eta) == 3
    two, _, _ = train.fit(trainer, params, data, 2, **kw)
    fresh, _, _ = train.fit(trainer, two, data, 1, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(three), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(three[0]["w"]), np.asarray(fresh[0]["w"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("over_k", ["vmap", "map", "devices"])
def test_k_stacked_nets_equal_k_separate_runs(toy, over_k):
    """vmap (and lax.map) correctness: 3 nets with their own init, shuffle key,
    η and λ trained as one program equal 3 runs of one net, to float32 tolerance.
    ("devices" on one device runs as "map"; several devices: tests/test_devices.py.)"""
    init, toy_trainer, data = toy
    trainer = train.Trainer(toy_trainer.apply, toy_trainer.cost, 8, penalty="l2", momentum=0.5,
                            over_k=over_k)
    init_keys, train_keys = train.seed_keys([1, 2, 3])
    params = train.init_many(init, init_keys, (SIZES[0],))
    eta, lmbda = jnp.array([0.1, 0.5, 2.0]), jnp.array([0.0, 1.0, 5.0])
    stacked, _, _ = train.fit(trainer, params, data, 2, key=train_keys, eta=eta, lmbda=lmbda)
    for i, single_params in enumerate(train.unstack(params)):
        single, _, _ = train.fit(toy_trainer, train.stack([single_params]), data, 2,
                                 key=train_keys[i], eta=eta[i], lmbda=lmbda[i])
        assert_trees_close(train.unstack(stacked)[i], train.unstack(single)[0], rtol=1e-5, atol=1e-6)
    # the nets did train, and differently
    assert not np.allclose(np.asarray(stacked[0]["w"]), np.asarray(params[0]["w"]), atol=1e-3)
    assert not np.allclose(np.asarray(stacked[0]["w"][0]), np.asarray(stacked[0]["w"][1]), atol=1e-3)


def test_k_axis_mode_auto_is_map_on_one_cpu_device_and_rejects_unknown_modes():
    cpu = jax.default_backend() == "cpu"
    expected = "vmap" if not cpu else "map" if len(jax.local_devices()) == 1 else "devices"
    assert devices.k_axis_mode("auto") == expected
    # each backend's choice, forced, so the accelerator's branch is checked on the CPU too
    assert devices.k_axis_mode("auto", backend="gpu", n_devices=1) == "vmap"
    assert devices.k_axis_mode("auto", backend="tpu", n_devices=4) == "vmap"
    assert devices.k_axis_mode("auto", backend="cpu", n_devices=1) == "map"
    assert devices.k_axis_mode("auto", backend="cpu", n_devices=2) == "devices"
    for mode in ("vmap", "map", "devices"):
        assert devices.k_axis_mode(mode) == mode
    with pytest.raises(ValueError, match="over_k"):
        train.Trainer(lambda p, x, **k: x, costs.quadratic, 5, over_k="pmap")


# --- early stopping and the schedule: a deterministic threshold problem -------------------
#
# One input, two classes, z = x·w + b with w = [[0, 1]] and b = [0, 0]. The only
# training example is x = 0 with label 1, so w never changes and each step moves
# d = b1 − b0 up by 2η(1 − a_1) > 0 (log-likelihood). The evaluation set is
# x_k = −(0.005 + 0.01 k), k < 1000, all of label 1: x_k is classified right when
# d > 0.005 + 0.01 k. With η = 1, d grows by more than 0.01 every epoch for the
# first 20 epochs (by ≈ 2/(1 + e^d) ≥ 0.04, as d < 4), so the accuracy improves
# every epoch. With η = 1e-6, d stays below 1e-4: the accuracy is 0 every epoch,
# so only epoch 0 counts as an improvement (over "no result yet").

THRESHOLD_ETA = jnp.array([1e-6, 1.0])


@pytest.fixture(scope="module")
def threshold():
    _, apply = layers.mlp([1, 2], activations.sigmoid)
    trainer = train.Trainer(apply, costs.log_likelihood, 1, shuffle=False)
    net = [{"w": jnp.array([[0.0, 1.0]]), "b": jnp.zeros(2)}]
    params = train.stack([net, net])
    training = (np.zeros((1, 1), np.float32), np.ones(1, np.int32))
    evaluation = (-(0.005 + 0.01 * np.arange(1000, dtype=np.float32))[:, None], np.ones(1000, np.int32))
    return trainer, params, training, evaluation


def gap(params):
    """d = b1 − b0 of each of the K nets."""
    b = np.asarray(params[0]["b"], np.float64)
    return b[:, 1] - b[:, 0]


def test_early_stopping_stops_a_net_after_n_epochs_without_improvement_while_another_trains(threshold, key):
    trainer, params, training, evaluation = threshold
    out, _, hist = train.fit(trainer, params, training, 10, key=key, eta=THRESHOLD_ETA,
                             evaluation={"evaluation": evaluation}, rules=[train.early_stopping(3)])
    acc = np.asarray(hist["evaluation_accuracy"])
    assert acc.shape == (10, 2)                       # net 1 kept the loop going for all 10 epochs
    assert np.all(np.diff(acc[:, 1]) > 0)             # the construction: net 1 improves every epoch
    assert np.all(acc[:, 0] == 0)                     # ... and net 0 never does after epoch 0
    np.testing.assert_array_equal(hist.stopped_at, [3, -1])   # epochs 1, 2, 3 without improvement
    # Net 0 made exactly the 4 updates of epochs 0-3 (each ≈ η, as a_1 ≈ 1/2), then froze.
    np.testing.assert_allclose(gap(out)[0], 4e-6, rtol=1e-3)


def test_schedule_halves_eta_after_n_epochs_without_improvement_and_stops_at_1_over_128(threshold, key):
    trainer, params, training, evaluation = threshold
    _, _, hist = train.fit(trainer, params, training, 20, key=key, eta=THRESHOLD_ETA,
                           evaluation={"evaluation": evaluation}, rules=[train.plateau_schedule(2)])
    eta = np.asarray(hist.eta)                        # η each epoch ran with, [epochs, K]
    assert np.all(np.diff(np.asarray(hist["evaluation_accuracy"])[:, 1]) > 0)
    np.testing.assert_allclose(eta[:, 1], 1.0)        # an improving net keeps its η
    # net 0: plateaus of 2 epochs end at epochs 2, 4, 6, ...; the 7th halving
    # (end of epoch 14) reaches 1/128 of the start and stops it.
    halvings = [0, 0, 0] + [h for h in range(1, 7) for _ in range(2)] + [7] * 5
    np.testing.assert_allclose(eta[:, 0], 1e-6 * 0.5 ** np.array(halvings), rtol=1e-6)
    np.testing.assert_array_equal(hist.stopped_at, [14, -1])


# --- argument checks -------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    _, apply = layers.mlp([4, 3], activations.sigmoid)
    net = layers.mlp([4, 3], activations.sigmoid)[0](jax.random.key(0), (4,))[1]
    return apply, train.stack([net]), toy_data(10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(eta=0.0), "eta must be positive"),
    (dict(eta=-0.5), "eta must be positive"),
    (dict(eta=float("inf")), "eta must be positive and finite"),
    (dict(eta=float("nan")), "eta must be positive and finite"),
    (dict(eta=0.5, lmbda=-1.0), "lmbda must be >= 0"),
    (dict(eta=0.5, lmbda=float("inf")), "lmbda must be >= 0 and finite"),
    (dict(eta=0.5, rules=[train.early_stopping(3)]), "needs the evaluation set 'evaluation'"),
    (dict(eta=0.5, rules=[train.early_stopping(3, metric="validation_acuracy")],
          evaluation={"validation": toy_data(10)}), "watches 'validation_acuracy'"),
])
def test_fit_rejects_bad_hyperparameters_with_a_clear_message(small, kwargs, message, key):
    apply, params, data = small
    trainer = train.Trainer(apply, costs.quadratic, 5)
    with pytest.raises(ValueError, match=message):
        train.fit(trainer, params, data, 1, key=key, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mini_batch_size=0), "mini_batch_size must be a positive integer"),
    (dict(mini_batch_size=5, momentum=1.0), "momentum must be in"),
    (dict(mini_batch_size=5, penalty="l3"), "unknown regularization"),
])
def test_trainer_rejects_bad_hyperparameters_with_a_clear_message(small, kwargs, message):
    apply, _, _ = small
    with pytest.raises(ValueError, match=message):
        train.Trainer(apply, costs.quadratic, **kwargs)


# --- penalties ---------------------------------------------------------------------------

PENALTY_PARAMS = [{"w": jnp.array([[0.5, -2.0], [0.0, 3.0]]), "b": jnp.array([1.0, -1.0])},
                  {"w": jnp.array([[-0.25], [0.0]]), "b": jnp.array([2.0])}]


def test_l1_penalty_gradient_is_c_sign_w_with_sign_0_equal_0_and_no_bias_gradient():
    c = jnp.float32(0.3)
    value, grads = jax.value_and_grad(costs.l1_penalty)(PENALTY_PARAMS, c)
    np.testing.assert_allclose(float(value), 0.3 * (0.5 + 2 + 0 + 3 + 0.25 + 0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[0]["w"]), [[0.3, -0.3], [0.0, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]["w"]), [[-0.3], [0.0]], rtol=1e-6)
    assert not np.any(np.asarray(grads[0]["b"])) and not np.any(np.asarray(grads[1]["b"]))


def test_l2_penalty_gradient_is_c_w_and_no_bias_gradient():
    c = jnp.float32(0.3)
    value, grads = jax.value_and_grad(costs.l2_penalty)(PENALTY_PARAMS, c)
    np.testing.assert_allclose(float(value), 0.15 * (0.25 + 4 + 0 + 9 + 0.0625 + 0), rtol=1e-6)
    for g, p in zip(grads, PENALTY_PARAMS):
        np.testing.assert_allclose(np.asarray(g["w"]), 0.3 * np.asarray(p["w"]), rtol=1e-6)
        assert not np.any(np.asarray(g["b"]))
