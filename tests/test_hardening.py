"""Hardening (issue 24): bad inputs refused with a clear message, and the faults
that earlier tests let through (each test here says which line of the issue it
covers). Small synthetic data, except the mnist_loader test (real MNIST)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import (
    activations,
    checkpoint,
    costs,
    expand_mnist,
    files,
    layers,
    mnist_loader,
    network,
    network2,
    network3,
    train,
)
from nndl_jax.data import MNISTError, as_arrays, check_finite, expand, is_pair_of_sets


def _xy(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), (np.arange(n) * 7 + 3) % 10


# --- as_arrays: any array-like (x, y) pair (issue item 9) -------------------------------

def _pair_layouts(n):
    x, y = _xy(n)
    return {
        "array_and_list": (x, y.tolist()),
        "both_lists": (x.tolist(), y.tolist()),
        "list_of_rows_and_array": (list(x), y),
        "tuples": (tuple(map(tuple, x.tolist())), tuple(y.tolist())),
        "columns_as_lists": (x[:, :, None].tolist(), y.tolist()),
        "jax_and_list": (jnp.asarray(x), y.tolist()),
        "one_hot_lists": (x, np.eye(10)[y].tolist()),
        "list_not_tuple": [x, y.tolist()],
    }


@pytest.mark.parametrize("n", [2, 5])  # 2: as long as the pair itself
@pytest.mark.parametrize("layout", list(_pair_layouts(2)))
def test_as_arrays_reads_any_array_like_pair(layout, n):
    x, y = _xy(n)
    got = as_arrays(_pair_layouts(n)[layout])
    assert got.x.dtype == np.float32 and got.y.dtype == np.int32
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)
    assert is_pair_of_sets(_pair_layouts(n)[layout])


@pytest.mark.parametrize("examples", [
    lambda x, y: [(x[i][:, None], int(y[i])) for i in range(2)],               # the book's test list
    lambda x, y: [(x[i][:, None], np.eye(10)[y[i]][:, None]) for i in range(2)],  # its training list
    lambda x, y: [[x[i].tolist(), int(y[i])] for i in range(2)],               # lists, not tuples
    lambda x, y: [(x[i], np.eye(10)[y[i]]) for i in range(2)],                 # flat one-hot vectors
])
def test_two_book_examples_stay_a_list_of_pairs(examples):
    x, y = _xy(2)
    given = examples(x, y)
    assert not is_pair_of_sets(given)
    got = as_arrays(given)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)


@pytest.mark.parametrize("empty", [([], []), (np.zeros((0, 784)), []), ((), ()), [], zip()])
def test_an_empty_pair_says_there_are_no_examples(empty):
    with pytest.raises(ValueError, match=r"empty data \(no examples\)"):
        as_arrays(empty)


@pytest.mark.parametrize("bad, message", [
    ((_xy()[0], 3), r"y is a single value; give x as \[n, 784\] images and y as \[n\] labels"),
    (([[0.0] * 784, [0.0] * 783, [0.0] * 784], [1, 2, 3]), r"x cannot be read as one array .*equal-length rows"),
    ((_xy()[0], _xy()[1].tolist()[:-1]), "6 images but 5 labels"),
    (None, "expected a Dataset, an .x, y. pair of arrays or the book's list of .x, y. pairs; got NoneType"),
])
def test_a_pair_that_cannot_be_read_says_what_to_pass(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        as_arrays(bad)


def test_the_facades_read_a_pair_holding_lists():
    x, y = _xy(20)
    net = network.Network([784, 5, 10], seed=0)
    assert net.evaluate((x, y.tolist())) == net.evaluate((x, y))
    net2 = network2.Network([784, 5, 10], seed=0)
    assert net2.accuracy((x.tolist(), y.tolist())) == net2.accuracy((x, y))   # convert=False: integers
    assert net2.total_cost((x, np.eye(10)[y].tolist()), 0.0) == net2.total_cost((x, np.eye(10)[y]), 0.0)
    assert network3.size((x.tolist(), y.tolist())) == 20 == network3.size((x, y))
    assert network3.size([(x[i][:, None], int(y[i])) for i in range(2)]) == 2


# --- as_arrays: labels and pixels that must be refused ------------------------------------

def _labels_in(layout, labels):
    """``labels`` [n, 10] (rows of 0s and 1s) in one of the book's layouts, beside images."""
    x = np.zeros((len(labels), 784), np.float32)
    return {"rows": (x, labels), "columns": (x, labels[:, :, None]),
            "book_list": [(xi[:, None], li[:, None]) for xi, li in zip(x, labels)]}[layout]


@pytest.mark.parametrize("layout", ["rows", "columns", "book_list"])
@pytest.mark.parametrize("row", [[0, 1, 0, 0, 0, 0, 0, 1, 0, 0], [0] * 10, [1] * 10])
def test_label_rows_of_0s_and_1s_that_are_not_one_hot_are_refused(layout, row):
    """Issue 24, faults list: two 1s in a row, or none, is not a one-hot label."""
    labels = np.eye(10)[[3, 4, 5]]
    labels[1] = row
    with pytest.raises(ValueError, match=r"not one-hot rows \(each row: one 1, the rest 0\)"):
        as_arrays(_labels_in(layout, labels))
    labels[1] = np.eye(10)[7]  # the same data made right is read
    np.testing.assert_array_equal(as_arrays(_labels_in(layout, labels)).y, [3, 7, 5])


@pytest.mark.parametrize("y, message", [
    ([0, 1, np.nan, 3], "labels of dtype float64 are not integers"),
    ([0, 1, np.inf, 3], "labels of dtype float64 are not integers"),
    ([0, 1, -np.inf, 3], "labels of dtype float64 are not integers"),
    ([0, 1, 2.5, 3], "labels of dtype float64 are not integers"),
    ([0, 1, 2 + 1e-9, 3], "labels of dtype float64 are not integers"),
    ([0, -1, 2, 3], r"labels range over \[-1, 3\], expected \[0, 10\): 1 label out of range, first at example 1"),
    ([0.0, -1.0, 2.0, 3.0], r"labels range over \[-1.0, 3.0\], expected \[0, 10\)"),
    (["0", "1", "2", "3"], "labels of dtype <U1 are not integers"),
    ([[0], [1], [2], [3]], r"labels of shape \(4, 1\), a column; pass integer labels as \[n\]"),
])
def test_labels_that_are_not_digits_are_refused(y, message):
    with pytest.raises(ValueError, match=message):
        as_arrays((np.zeros((4, 784), np.float32), np.array(y)))


def test_whole_float_labels_are_read_as_integers():
    got = as_arrays((np.zeros((3, 784), np.float32), np.array([0.0, 9.0, 4.0])))
    np.testing.assert_array_equal(got.y, [0, 9, 4])
    assert got.y.dtype == np.int32


@pytest.mark.parametrize("label", [2 ** 31, 2 ** 40, 2.0 ** 33])
def test_labels_beyond_int32_are_refused_without_a_class_count(label):
    """With ``n_classes=None`` any label ≥ 0 is taken, but not one that would wrap around in int32."""
    with pytest.raises(ValueError, match=r"labels range over .*Labels are int32: each below 2\*\*31"):
        as_arrays((np.zeros((2, 784), np.float32), np.array([0, label])), n_classes=None)


def test_book_list_labels_of_several_shapes_are_refused_not_broadcast():
    x = np.zeros((784, 1), np.float32)
    one_hot = np.eye(10)[3][:, None]
    with pytest.raises(ValueError, match=r"labels of several shapes"):
        as_arrays([(x, one_hot), (x, np.ones((1, 1))), (x, one_hot)])


@pytest.mark.parametrize("layout", ["rows", "float64_rows", "columns", "book_list"])
def test_data_whose_only_non_finite_value_is_minus_inf_is_refused(layout):
    """Issue 24, faults list: −inf alone (no NaN, no +inf) is refused, saying where."""
    x, y = _xy(6)
    x[4, 100] = -np.inf
    given = {"rows": (x, y), "float64_rows": (x.astype(np.float64), y), "columns": (x[:, :, None], y),
             "book_list": [(xi[:, None], int(yi)) for xi, yi in zip(x, y)]}[layout]
    with pytest.raises(ValueError, match=r"1 value not finite \(0 NaN, 1 inf\) in 1 example, first at example 4"):
        as_arrays(given)
    with pytest.raises(ValueError, match="first at example 4, pixel 100"):
        check_finite(x)


@pytest.mark.parametrize("given, message", [
    ((np.zeros((3, 785)), [0, 1, 2]), "x is 785 wide, expected 784"),
    ((np.zeros((3, 783, 1)), [0, 1, 2]), "x is 783 wide, expected 784"),
    ([(np.zeros((785, 1)), 0)] * 3, "x is 785 wide, expected 784"),
    ([(np.zeros(785), 0)] * 3, "x is 785 wide, expected 784"),
    ((np.zeros((3, 28, 28)), [0, 1, 2]), r"x has shape \(3, 28, 28\); expected \[n, 784\] or \[n, 784, 1\]"),
    ((np.zeros((3, 1, 784)), [0, 1, 2]), r"x has shape \(3, 1, 784\)"),
    ([(np.zeros((28, 28)), 0)] * 3, r"x has shape \(3, 28, 28\)"),
    ((np.zeros(784), [0]), r"x has shape \(784,\)"),
])
def test_images_of_the_wrong_width_are_refused_in_every_layout(given, message):
    with pytest.raises(ValueError, match=message):
        as_arrays(given)


# --- seeds outside [0, 2**32) are refused (issue item 7) -----------------------------------

BAD_SEEDS = [2 ** 32, 2 ** 40, 2 ** 64, -1, np.uint64(2 ** 32), True, 1.0, "3", None]
SEED_MESSAGE = r"a seed must be a whole number from 0 to 4294967295 \(2\*\*32 - 1\), got"


def _net3(seed):
    return network3.Network([network3.FullyConnectedLayer(784, 5), network3.SoftmaxLayer(5, 10)], 10, seed=seed)


FACADES = {"network": lambda seed: network.Network([784, 5, 10], seed=seed),
           "network2": lambda seed: network2.Network([784, 5, 10], seed=seed),
           "network3": _net3}


@pytest.mark.parametrize("facade", list(FACADES))
@pytest.mark.parametrize("seed", [s for s in BAD_SEEDS if s is not None], ids=repr)
def test_a_network_refuses_a_seed_it_cannot_use_in_full(facade, seed):
    with pytest.raises(ValueError, match=SEED_MESSAGE):
        FACADES[facade](seed)


def _sgd(net, seed):
    x, y = _xy(20)
    if isinstance(net, network3.Network):
        return net.SGD((x, y), 1, 10, 0.1, (x, y), (x, y), seed=seed)
    return net.SGD((x, y), 1, 10, 0.1, seed=seed)


@pytest.mark.parametrize("facade", list(FACADES))
@pytest.mark.parametrize("seed", [2 ** 32, 2 ** 40, -1], ids=repr)
def test_sgd_refuses_a_seed_it_cannot_use_in_full_and_trains_nothing(facade, seed, capsys):
    net = FACADES[facade](0)
    before = jax.tree_util.tree_map(np.asarray, net.params)
    with pytest.raises(ValueError, match=SEED_MESSAGE):
        _sgd(net, seed)
    assert "Epoch" not in capsys.readouterr().out
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.asarray, net.params))


@pytest.mark.parametrize("seeds", [[2 ** 32], [0, 2 ** 32], [2 ** 40], [-1]], ids=repr)
def test_seed_keys_and_train_many_refuse_seeds_outside_32_bits(seeds):
    with pytest.raises(ValueError, match=SEED_MESSAGE):
        train.seed_keys(seeds)
    x, y = _xy(20)
    with pytest.raises(ValueError, match=SEED_MESSAGE):
        network3.train_many([network3.SoftmaxLayer(784, 10)], 10, (x, y), 1, 0.1, (x, y), (x, y), seeds=seeds)


@pytest.mark.parametrize("facade", list(FACADES))
def test_seeds_0_and_2_to_the_32_minus_1_both_work_and_differ(facade, capsys):
    first, last = FACADES[facade](0), FACADES[facade](2 ** 32 - 1)
    assert first.seed == 0 and last.seed == 2 ** 32 - 1
    assert not np.array_equal(np.asarray(first.params[0]["w"]), np.asarray(last.params[0]["w"]))
    _sgd(last, 2 ** 32 - 1)
    assert last.last_sgd_seed == 2 ** 32 - 1
    init_keys, train_keys = train.seed_keys([0, 2 ** 32 - 1])
    assert not np.array_equal(jax.random.key_data(init_keys[0]), jax.random.key_data(init_keys[1]))


# --- network2.load of a folder (issue item 10) ----------------------------------------------

def test_network2_load_of_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(network2.NetworkFileError, match=r"is a folder; give the network file saved in it"):
        network2.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        network2.load(tmp_path / "missing.json")


# --- fit's epochs: a whole number, not True, not 1.5 (issue 24, faults list) ---------------

def _tiny_fit(epochs):
    net = layers.mlp_net([4, 3, 2], activations.sigmoid)
    trainer = train.trainer_for(net, costs.quadratic, 2)
    params, keys = train.from_seeds(net.init, (4,), [0])
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    return train.fit(trainer, params, (x, np.arange(6) % 2), epochs, key=keys, eta=0.5)


@pytest.mark.parametrize("epochs", [True, False, 1.5, -1, float("nan"), float("inf"), "2", None, np.float64(0.5)],
                         ids=repr)
def test_fit_refuses_epochs_that_are_not_a_whole_number(epochs):
    with pytest.raises(ValueError, match="epochs must be a non-negative integer, got"):
        _tiny_fit(epochs)


@pytest.mark.parametrize("epochs, done", [(0, 0), (2, 2), (np.int64(2), 2), (2.0, 2)], ids=repr)
def test_fit_takes_whole_numbers_of_epochs(epochs, done):
    assert len(_tiny_fit(epochs).history.eta) == done


@pytest.mark.parametrize("facade", list(FACADES))
@pytest.mark.parametrize("epochs", [True, 1.5], ids=repr)
def test_sgd_refuses_epochs_that_are_not_a_whole_number(facade, epochs):
    x, y = _xy(20)
    net = FACADES[facade](0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        if facade == "network3":
            net.SGD((x, y), epochs, 10, 0.1, (x, y), (x, y))
        else:
            net.SGD((x, y), epochs, 10, 0.1)


# --- the expanded set: a file made with another seed is refused (issue 24, faults list) -----

def _expanded_file(path, seed, n=10, x=None, y=None):
    rng = np.random.default_rng(abs(seed))
    x = rng.integers(0, 256, (n, 784), dtype=np.uint8) if x is None else x
    y = (np.arange(n) % 10).astype(np.uint8) if y is None else y
    np.savez_compressed(path, x=x, y=y, seed=np.int64(seed))
    return x, y


@pytest.mark.parametrize("saved_seed", [1, 2 ** 32, -1])
def test_an_expanded_file_made_with_another_seed_is_refused(tmp_path, saved_seed):
    path = expand_mnist.expanded_path(0, tmp_path)
    _expanded_file(path, saved_seed)
    before = path.read_bytes()
    with pytest.raises(MNISTError, match=rf"made with seed {saved_seed}, not seed 0; delete it to rebuild"):
        expand_mnist.load_expanded(seed=0, out_dir=tmp_path)
    with pytest.raises(MNISTError, match=rf"made with seed {saved_seed}, not seed 0"):
        expand_mnist.read_expanded(path, 0, n=10)   # even where its size is the one asked for
    assert path.read_bytes() == before                 # refused, not replaced


def test_an_expanded_file_of_the_right_seed_and_size_is_read(tmp_path):
    path = tmp_path / "e.npz"
    x, y = _expanded_file(path, 3)
    got = expand_mnist.read_expanded(path, 3, n=10)
    np.testing.assert_array_equal(got.x, x.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(got.y, y)
    assert got.x.dtype == np.float32 and got.y.dtype == np.int32


@pytest.mark.parametrize("damage, message", [
    (dict(y=np.full(10, 12, np.uint8)), r"labels of dtype uint8 over \[12, 12\] are not digits"),
    (dict(y=np.zeros(10, np.float32)), "labels of dtype float32"),
    (dict(x=np.full((10, 784), np.nan, np.float32)), r"pixels of dtype float32 are not all numbers in \[0, 1\]"),
    (dict(x=np.full((10, 784), 3.0, np.float32)), r"not all numbers in \[0, 1\]"),
    (dict(x=np.zeros((10, 783), np.uint8)), r"holds x \(10, 783\)"),
])
def test_a_damaged_expanded_file_is_refused(tmp_path, damage, message):
    path = tmp_path / "e.npz"
    _expanded_file(path, 0, **damage)
    with pytest.raises(MNISTError, match=message):
        expand_mnist.read_expanded(path, 0, n=10)


@pytest.mark.parametrize("content", [b"junk" * 100, "truncated"])
def test_an_unreadable_expanded_file_is_refused_without_numpys_pickle_hint(tmp_path, content):
    path = tmp_path / "e.npz"
    _expanded_file(path, 0)
    path.write_bytes(path.read_bytes()[:200] if content == "truncated" else content)
    with pytest.raises(MNISTError, match="cannot read the expanded set .*delete it to rebuild") as e:
        expand_mnist.read_expanded(path, 0, n=10)
    assert "allow_pickle" not in str(e.value)


# --- dropout with p != 0.5 (issue 24, faults list: with p = 0.5, p and 1 - p coincide) ------

@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_drops_a_fraction_p_and_keeps_the_rest_unscaled(p):
    x = jnp.full((400, 500), 3.0)
    out = np.asarray(layers.dropout(x, p, jax.random.key(1)))
    dropped = np.mean(out == 0)
    # 200,000 Bernoulli draws: standard error sqrt(p(1-p)/n) < 0.0012; 5 of them
    assert abs(dropped - p) < 0.006, dropped
    assert set(np.unique(out)) == {0.0, 3.0}     # kept units are not rescaled (the book's dropout)


@pytest.mark.parametrize("kind", ["fully_connected", "softmax"])
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_a_dropout_layer_trains_on_a_fraction_1_minus_p_and_scales_by_1_minus_p_in_evaluation(kind, p):
    """With w all ones and b = 0, z is the number of inputs kept (training) and (1 − p)·n_in (evaluation)."""
    n_in = 1000
    init, apply = layers.LAYER_KINDS[kind](1, **({"activation": activations.linear} if kind != "softmax" else {}),
                                           p_dropout=p)
    params = {"w": jnp.ones((n_in, 1)), "b": jnp.zeros(1)}
    x = jnp.ones((200, n_in))
    evaluated = np.asarray(apply(params, x))
    np.testing.assert_allclose(evaluated, (1 - p) * n_in, rtol=1e-6)
    kept = np.asarray(apply(params, x, train=True, key=jax.random.key(2)))
    # 200,000 draws in all: the mean kept per row is (1-p)·n_in within 5 standard errors (< 0.6 %)
    assert abs(kept.mean() / n_in - (1 - p)) < 0.006, kept.mean()
    assert np.all(kept == np.round(kept)) and kept.std() > 0   # whole counts that vary from row to row


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf")], ids=repr)
@pytest.mark.parametrize("layer", ["FullyConnectedLayer", "SoftmaxLayer"])
def test_network3_layers_refuse_p_dropout_outside_0_to_1_when_made(layer, p):
    with pytest.raises(ValueError, match=r"p_dropout must be a probability in \[0, 1\)"):
        getattr(network3, layer)(100, 10, p_dropout=p)
    with pytest.raises(ValueError, match=r"p_dropout must be in \[0, 1\)"):
        layers.dense(10, p_dropout=p)


# --- conv-pool: a non-square filter (issue 24, faults list) ------------------------------

@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("filter_hw, image_hw, pool", [((5, 3), (28, 28), (2, 2)), ((3, 5), (28, 28), (2, 2)),
                                                       ((5, 3), (20, 28), (2, 3)), ((1, 4), (9, 12), (3, 1))])
def test_conv_pool_output_shape_promised_by_init_is_apply_s_for_non_square_filters(layout, filter_hw, image_hw,
                                                                                    pool):
    (fh, fw), (h, w) = filter_hw, image_hw
    init, apply = layers.conv_pool((4, 2, fh, fw), (7, 2, h, w), pool, activations.relu, layout=layout)
    out_shape, params = init(jax.random.key(0), (2 * h * w,))
    want = (4, (h - fh + 1) // pool[0], (w - fw + 1) // pool[1])
    assert tuple(out_shape) == want
    assert params["w"].shape == (4, 2, fh, fw)
    y = jax.eval_shape(lambda p, x: apply(p, x), params, jax.ShapeDtypeStruct((3, 2 * h * w), jnp.float32))
    assert y.shape == (3,) + want
    layer = network3.ConvPoolLayer((4, 2, fh, fw), (7, 2, h, w), pool)
    assert layer.n_out_values == int(np.prod(want))


def test_a_network3_net_with_a_non_square_filter_trains_and_predicts():
    x, y = _xy(20)
    net = network3.Network([network3.ConvPoolLayer((3, 1, 5, 3), (10, 1, 28, 28)),
                            network3.FullyConnectedLayer(3 * 12 * 13, 8), network3.SoftmaxLayer(8, 10)], 10, seed=0)
    net.SGD((x, y), 1, 10, 0.1, (x, y), (x, y), seed=0)
    assert net.layers[0].w.shape == (3, 1, 5, 3) and net.predict(x).shape == (20,)


# --- network2's JSON files: NaN, Infinity and other damage refused (issue 24, faults list) --

def _saved_net2(tmp_path):
    net = network2.Network([3, 4, 2], seed=0)
    path = tmp_path / "net.json"
    net.save(path)
    return net, path, json.loads(path.read_text())


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e39"])
@pytest.mark.parametrize("where", [("weights", 0), ("weights", 1), ("biases", 0), ("biases", 1)])
def test_a_network2_file_holding_nan_or_infinity_is_refused(tmp_path, where, value):
    _, path, data = _saved_net2(tmp_path)
    key, layer = where
    data[key][layer][-1][-1] = "HOLE"
    path.write_text(json.dumps(data).replace('"HOLE"', value))   # as json.dump(allow_nan=True) writes them
    with pytest.raises(network2.NetworkFileError,
                       match=rf"layer {layer} {key} hold numbers that are not finite \(NaN, Infinity, or beyond"):
        network2.load(path)


def test_a_network2_file_round_trips_exactly(tmp_path):
    net, path, _ = _saved_net2(tmp_path)
    loaded = network2.load(path)
    for a, b in zip(net.weights + net.biases, loaded.weights + loaded.biases):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("biases"), r"missing keys \['biases'\]"),
    (lambda d: d.update(cost=["CrossEntropyCost"]), r"unknown cost \['CrossEntropyCost'\]"),
    (lambda d: d.update(cost="HingeCost"), "unknown cost 'HingeCost'"),
    (lambda d: d.update(sizes=[3, True, 2]), "sizes must be a list of at least two positive integers"),
    (lambda d: d.update(sizes=[3, 4.0, 2]), "sizes must be a list of at least two positive integers"),
    (lambda d: d["weights"][0].__setitem__(1, d["weights"][0][1][:-1]), "layer 0 weights are ragged"),
    (lambda d: d["weights"][1][0].__setitem__(0, "0.5"), r'layer 1 weights hold "0.5", not a number'),
    (lambda d: d["biases"][0][0].__setitem__(0, None), "layer 0 biases hold null, not a number"),
    (lambda d: d["biases"][0][0].__setitem__(0, True), "layer 0 biases hold true, not a number"),
    (lambda d: d["weights"].pop(), "expected 2 weight and bias arrays"),
    (lambda d: d["biases"].__setitem__(1, [0.0, 0.0]), r"layer 1 has weights \(2, 4\) and biases \(2,\)"),
])
def test_a_damaged_network2_file_is_refused_saying_what_is_wrong(tmp_path, edit, message):
    _, path, data = _saved_net2(tmp_path)
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(network2.NetworkFileError, match=message):
        network2.load(path)


@pytest.mark.parametrize("text", ["[1, 2]", '{"sizes": [3, 2]', ""])
def test_a_network2_file_that_is_not_a_json_object_is_refused(tmp_path, text):
    path = tmp_path / "net.json"
    path.write_text(text)
    with pytest.raises(network2.NetworkFileError, match=str(path)):
        network2.load(path)


# --- network3's iteration numbers over several epochs (issue 24, faults list) -------------

def test_network3_prints_iteration_numbers_counted_across_epochs(capsys):
    """1,100 mini-batches of 2 per epoch (batches ≠ mini-batch size), 3 epochs: the book
    prints "Training mini-batch number N" at every N = epoch·1100 + i that is a multiple of 1000."""
    x, y = _xy(2201)   # the last, odd example is left out, as the book's num_training_batches does
    net = network3.Network([network3.SoftmaxLayer(784, 10)], 2, seed=0)
    net.SGD((x, y), 3, 2, 0.01, (x[:10], y[:10]), (x[:10], y[:10]), seed=0)
    jax.effects_barrier()
    lines = capsys.readouterr().out.splitlines()
    numbers = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("Training mini-batch number")]
    assert numbers == [0, 1000, 2000, 3000]
    assert net.history["num_training_batches"] == 1100
    best = max(range(3), key=lambda e: (net.history["validation_accuracy"][e], e))
    assert net.history["best_iteration"] == 1100 * (best + 1) - 1


def test_the_core_counts_iterations_across_epochs_for_on_iteration():
    """7 mini-batches of 4 per epoch, a callback every 3 iterations, 3 epochs: 0, 3, ..., 18 in order."""
    seen = []
    net = layers.mlp_net([4, 2], activations.sigmoid)
    trainer = train.Trainer(net.apply, costs.quadratic, 4, on_iteration=lambda i: seen.append(int(i)),
                            iteration_every=3)
    params, keys = train.from_seeds(net.init, (4,), [0])
    x = np.random.default_rng(0).random((28, 4), dtype=np.float32)
    train.fit(trainer, params, (x, np.arange(28) % 2), 3, key=keys, eta=0.5)
    jax.effects_barrier()
    assert seen == [0, 3, 6, 9, 12, 15, 18]


# --- files.atomic_write and remove_stale_parts --------------------------------------------

class _Interrupted(BaseException):
    """Stands for KeyboardInterrupt / SystemExit in the middle of a write."""


@pytest.mark.parametrize("error", [RuntimeError, OSError, _Interrupted])
@pytest.mark.parametrize("existing", [True, False])
def test_a_write_that_raises_leaves_the_old_file_intact_and_no_part(tmp_path, error, existing):
    path = tmp_path / "results.json"
    if existing:
        path.write_text("old content")

    def write(f):
        f.write(b"half of the new")
        f.flush()
        raise error("boom")

    with pytest.raises(error, match="boom"):
        files.atomic_write(path, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["results.json"] if existing else [])
    if existing:
        assert path.read_text() == "old content"


def test_a_write_over_a_folder_fails_and_leaves_no_part(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "out", lambda f: f.write(b"x"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())


def test_a_write_into_a_missing_folder_names_it_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"the folder {tmp_path / 'missing'} does not exist"):
        files.atomic_write(tmp_path / "missing" / "f.json", lambda f: f.write(b"x"))
    assert not any(tmp_path.iterdir())
    files.atomic_write(tmp_path / "made" / "f.json", lambda f: f.write(b"x"), parents=True)
    assert (tmp_path / "made" / "f.json").read_bytes() == b"x"


def test_a_bad_mode_leaves_no_part_and_no_open_file(tmp_path):
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError):
        files.atomic_write(tmp_path / "f", lambda f: None, mode="wz")
    assert not any(tmp_path.iterdir()) and len(os.listdir("/proc/self/fd")) == fds


def test_atomic_write_text_writes_utf8_whatever_the_locale(tmp_path):
    path = tmp_path / "settings.txt"
    code = f"from nndl_jax import files; files.atomic_write_text({str(path)!r}, '\\u03b7 = 0.5, \\u03bb = 5.0')"
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.getcwd())
    assert path.read_bytes() == "η = 0.5, λ = 5.0".encode()


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def test_remove_stale_parts_keeps_a_live_writers_part_and_removes_a_dead_ones(tmp_path, live_pid):
    dead = _dead_pid()
    parts = {who: tmp_path / f".state.npz.{pid}.0badcafe.part"
             for who, pid in (("live", live_pid), ("dead", dead), ("me", os.getpid()))}
    for p in parts.values():
        p.write_bytes(b"partial")
    assert files.stale_parts(tmp_path, "state.npz") == [parts["dead"]]
    assert files.remove_stale_parts(tmp_path, "state.npz") == 1
    assert not parts["dead"].exists() and parts["live"].exists() and parts["me"].exists()


def test_remove_stale_parts_of_one_file_leaves_other_files_parts(tmp_path):
    dead = _dead_pid()
    mine = tmp_path / f".state.npz.{dead}.0badcafe.part"
    others = [tmp_path / f".state.npz.old.{dead}.0badcafe.part",    # the parts of "state.npz.old"
              tmp_path / ".state.npz.k3j_x8a.part",                 # a temporary file without a pid
              tmp_path / f".results.json.{dead}.0badcafe.part"]
    for p in [mine] + others:
        p.write_bytes(b"partial")
    assert files.remove_stale_parts(tmp_path, "state.npz") == 1
    assert not mine.exists() and all(p.exists() for p in others)
    assert files.remove_stale_parts(tmp_path) == 2                 # every dead writer's part, not the pid-less one
    assert others[1].exists()


def test_remove_stale_parts_matches_names_literally(tmp_path):
    dead = _dead_pid()
    part = tmp_path / f".row[1.1].npz.{dead}.0badcafe.part"
    part.write_bytes(b"partial")
    assert files.remove_stale_parts(tmp_path, "row[1.1].npz") == 1 and not part.exists()


def test_a_checkpoint_removes_its_stale_parts_only(tmp_path):
    dead = _dead_pid()
    saved = tmp_path / "state.npz"
    checkpoint.save_tree(saved, {"a": np.zeros(2)}, fmt=checkpoint.CHECKPOINT_FORMAT)
    stale, other = tmp_path / f".state.npz.{dead}.0badcafe.part", tmp_path / f".other.npz.{dead}.0badcafe.part"
    stale.write_bytes(b"x")
    other.write_bytes(b"x")
    checkpoint.Checkpoint(saved).remove()
    assert not saved.exists() and not stale.exists() and other.exists()


# --- checkpoint.save_tree / load_tree: wrong skeletons and lying headers -------------------

def _tree():
    return {"params": [{"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(3, np.float32)}], "epoch": np.int64(4)}


def test_a_tree_round_trips_with_its_dtypes(tmp_path):
    path = checkpoint.save_tree(tmp_path / "t.npz", _tree(), {"run": "r"})
    tree, meta = checkpoint.load_tree(path, _tree())
    jax.tree_util.tree_map(np.testing.assert_array_equal, tree, _tree())
    assert tree["params"][0]["b"].dtype == np.float32 and meta == {"run": "r"}


@pytest.mark.parametrize("skeleton, message", [
    ({"params": [{"v": np.zeros((2, 3)), "b": np.zeros(3)}], "epoch": 0}, r"holds \['params'\]\[0\]\['w'\] where "
                                                                         r"\['params'\]\[0\]\['v'\] was expected"),
    ([[np.zeros((2, 3)), np.zeros(3)], 0], "saved from another structure"),     # same leaves, shapes, order
    ({"params": [{"w": np.zeros((3, 2)), "b": np.zeros(3)}], "epoch": 0}, r"holds shape \(2, 3\), expected \(3, 2\)"),
    ({"params": [{"w": np.zeros((2, 3))}], "epoch": 0}, "holds 3 arrays, expected 2"),
])
def test_load_tree_refuses_a_skeleton_of_another_structure_or_shape(tmp_path, skeleton, message):
    path = checkpoint.save_tree(tmp_path / "t.npz", _tree())
    with pytest.raises(checkpoint.TreeFileError, match=message):
        checkpoint.load_tree(path, skeleton)


def test_load_tree_without_shape_checks_still_refuses_another_structure(tmp_path):
    path = checkpoint.save_tree(tmp_path / "t.npz", {"metrics": {"a": np.zeros((3, 2))}, "eta": np.zeros((3, 2))})
    grown, _ = checkpoint.load_tree(path, {"metrics": {"a": np.zeros((0, 2))}, "eta": np.zeros((0, 2))},
                                    check_shapes=False)
    assert grown["metrics"]["a"].shape == (3, 2)
    with pytest.raises(checkpoint.TreeFileError, match="saved from another structure"):
        checkpoint.load_tree(path, {"metrics": {"b": np.zeros((0, 2))}, "eta": np.zeros((0, 2))}, check_shapes=False)


def _lying_file(path, header, arrays):
    np.savez(path, header=np.array(json.dumps(header)), **arrays)
    return path


GOOD_HEADER = {"format": checkpoint.TREE_FORMAT, "meta": {}, "leaves": [["['a']", [2], "float64"]]}


@pytest.mark.parametrize("header, arrays, message", [
    (GOOD_HEADER | {"leaves": [["['a']", [5], "float64"]]}, {"leaf_0": np.zeros(2)},
     r"its header says \['a'\] is float64 \(5,\), the file holds float64 \(2,\)"),
    (GOOD_HEADER | {"leaves": [["['a']", [2], "int32"]]}, {"leaf_0": np.zeros(2)}, "header says .* is int32"),
    (GOOD_HEADER, {"leaf_0": np.zeros(2), "leaf_1": np.zeros(3)}, "its header lists 1 arrays, the file holds 2"),
    (GOOD_HEADER | {"leaves": GOOD_HEADER["leaves"] * 2}, {"leaf_0": np.zeros(2)}, "header lists 2 arrays, the file"),
    (GOOD_HEADER, {"leaf_7": np.zeros(2)}, "header lists 1 arrays"),
    ([GOOD_HEADER], {"leaf_0": np.zeros(2)}, "unreadable .*format"),
    ({k: v for k, v in GOOD_HEADER.items() if k != "meta"}, {"leaf_0": np.zeros(2)}, "no 'meta' dict"),
    (GOOD_HEADER | {"meta": [1]}, {"leaf_0": np.zeros(2)}, "no 'meta' dict"),
    (GOOD_HEADER | {"leaves": 1}, {"leaf_0": np.zeros(2)}, r"'leaves' are not a list of \[path, shape, dtype\]"),
    (GOOD_HEADER | {"leaves": [["['a']", ["2"], "float64"]]}, {"leaf_0": np.zeros(2)}, "'leaves' are not a list"),
    (GOOD_HEADER | {"leaves": [["['a']", [2]]]}, {"leaf_0": np.zeros(2)}, "'leaves' are not a list"),
])
def test_a_tree_file_whose_header_lies_about_its_leaves_is_refused(tmp_path, header, arrays, message):
    path = _lying_file(tmp_path / "t.npz", header, arrays)
    before = path.read_bytes()
    with pytest.raises(checkpoint.TreeFileError, match=message):
        checkpoint.load_tree(path, {"a": np.zeros(2)})
    assert path.read_bytes() == before


def test_a_checkpoint_whose_header_lies_is_refused_as_unreadable_and_kept(tmp_path):
    header = GOOD_HEADER | {"format": checkpoint.CHECKPOINT_FORMAT, "leaves": [["['a']", [5], "float64"]],
                            "meta": {"identity": {"run": 1}, "epochs_done": 3}}
    path = _lying_file(tmp_path / "state.npz", header, {"leaf_0": np.zeros(2)})
    saved = checkpoint.Checkpoint(path, {"run": 1})
    with pytest.raises(checkpoint.CheckpointError, match="unreadable checkpoint .*header says") as e:
        saved.epochs_done()
    assert e.value.path == path and e.value.differences == [] and path.is_file()


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_tree_file_is_refused(tmp_path, cut):
    path = checkpoint.save_tree(tmp_path / "t.npz", _tree())
    content = path.read_bytes()
    path.write_bytes(content[:int(len(content) * cut)])
    with pytest.raises(checkpoint.TreeFileError, match="unreadable") as e:
        checkpoint.load_tree(path, _tree())
    assert "allow_pickle" not in str(e.value)


# --- the façades on bad shapes and arguments ----------------------------------------------

@pytest.mark.parametrize("a", [np.zeros((785, 1)), np.zeros((2, 784, 1)), np.zeros((28, 28)), np.zeros((784, 2)),
                               np.zeros(783)], ids=lambda a: str(a.shape))
def test_feedforward_refuses_inputs_of_the_wrong_shape(a):
    net = network.Network([784, 5, 10], seed=0)
    with pytest.raises(ValueError, match=r"feedforward expects a \(784, 1\) column or an \[n, 784\] batch, got shape"):
        net.feedforward(a)


def test_feedforward_keeps_the_layout_it_was_given():
    net = network.Network([784, 5, 10], seed=0)
    x = _xy(3)[0]
    batch = net.feedforward(x)
    assert batch.shape == (3, 10)
    np.testing.assert_allclose(net.feedforward(x[0][:, None]), batch[0][:, None], rtol=1e-6)
    np.testing.assert_allclose(net.feedforward(x[0]), batch[0], rtol=1e-6)
    np.testing.assert_allclose(net.feedforward(x[:1]), batch[:1], rtol=1e-6)
    assert net.feedforward(np.zeros((0, 784))).shape == (0, 10)     # an empty batch gives an empty batch


@pytest.mark.parametrize("facade", ["network", "network2"])
@pytest.mark.parametrize("bad, message", [
    ((np.zeros((3, 785)), [0, 1, 2]), "785 wide, expected 784"),
    ((np.zeros((3, 784)), [0, 1, 10]), r"labels range over \[0, 10\], expected \[0, 10\)"),
    (([], []), "no examples"),
    ((np.full((3, 784), np.nan), [0, 1, 2]), "not finite"),
])
def test_evaluate_and_accuracy_refuse_bad_data(facade, bad, message):
    net = FACADES[facade](0)
    with pytest.raises(ValueError, match=message):
        net.evaluate(bad) if facade == "network" else net.accuracy(bad)


def test_network3_predict_refuses_bad_shapes_and_takes_an_empty_batch():
    net = _net3(0)
    with pytest.raises(ValueError, match=r"predict expects \[n, 784\] inputs, got \(2, 784, 1\)"):
        net.predict(np.zeros((2, 784, 1)))
    assert net.predict(np.zeros((0, 784))).shape == (0,)


@pytest.mark.parametrize("i, error", [(True, TypeError), (1.0, TypeError), ("1", TypeError), (-1, IndexError),
                                      (2, IndexError)], ids=repr)
def test_test_mb_predictions_takes_only_an_index_in_range(i, error, capsys):
    net = _net3(0)
    x, y = _xy(20)
    net.SGD((x, y), 1, 10, 0.1, (x, y), (x, y), seed=0)
    with pytest.raises(error, match="test mini-batch|an int"):
        net.test_mb_predictions(i)
    assert net.test_mb_predictions(np.int64(1)).shape == (10,)


@pytest.mark.parametrize("mb", [True, None, 10.5, 0, "10"], ids=repr)
def test_network3_sgd_refuses_a_mini_batch_size_that_is_not_a_positive_integer(mb):
    x, y = _xy(20)
    with pytest.raises(ValueError, match="mini_batch_size must be a positive integer"):
        _net3(0).SGD((x, y), 1, mb, 0.1, (x, y), (x, y))


@pytest.mark.parametrize("kwargs, message", [
    (dict(early_stopping_n=True), "early_stopping_n must be a positive integer, got True"),
    (dict(early_stopping_n=float("nan")), "early_stopping_n must be a positive integer, got nan"),
    (dict(early_stopping_n=None), "early_stopping_n must be a positive integer, got None"),
    (dict(early_stopping_n=-2), "early_stopping_n must be a positive integer"),
    (dict(schedule_n=1.5), "schedule_n must be a positive integer"),
    (dict(momentum=float("nan")), r"momentum must be in \[0, 1\)"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
])
def test_network2_sgd_refuses_bad_settings_clearly(kwargs, message):
    x, y = _xy(20)
    net = network2.Network([784, 5, 10], seed=0)
    with pytest.raises(ValueError, match=message):
        net.SGD((x, y), 1, 10, 0.1, evaluation_data=(x, y), **kwargs)


@pytest.mark.parametrize("n", [True, float("nan"), 0, 2.5, None], ids=repr)
def test_network2_update_mini_batch_refuses_a_training_set_size_that_is_not_a_positive_integer(n):
    x, y = _xy(4)
    with pytest.raises(ValueError, match=r"n \(the size of the training set\) must be a positive integer"):
        network2.Network([784, 5, 10], seed=0).update_mini_batch((x, y), 0.1, 0.1, n)


@pytest.mark.parametrize("module", [mnist_loader, network2])
@pytest.mark.parametrize("j", [-1, 10, 1.5, True, "3", None], ids=repr)
def test_vectorized_result_takes_only_a_digit(module, j):
    with pytest.raises(ValueError, match="vectorized_result takes a digit 0-9"):
        module.vectorized_result(j)
    assert module.vectorized_result(np.int64(9))[9, 0] == 1.0


@pytest.mark.parametrize("bad", [dict(filter_shape=(4, 1, 5.5, 5)), dict(image_shape=(10, 1, 28.5, 28)),
                                 dict(poolsize=(2, True)), dict(filter_shape=(4, 1, float("nan"), 5)),
                                 dict(filter_shape=5)], ids=repr)
def test_conv_pool_sizes_must_be_whole_numbers(bad):
    args = dict(filter_shape=(4, 1, 5, 5), image_shape=(10, 1, 28, 28), poolsize=(2, 2)) | bad
    with pytest.raises(ValueError, match="must (hold whole numbers|be a tuple of sizes)"):
        network3.ConvPoolLayer(**args)
    with pytest.raises(ValueError, match="must (hold whole numbers|be a tuple of sizes)"):
        layers.conv_pool(**args)


@pytest.mark.parametrize("n", [True, float("nan"), 2.5, 0, None], ids=repr)
def test_network3_layer_sizes_must_be_positive_integers(n):
    with pytest.raises(ValueError, match="n_in must be a positive integer"):
        network3.FullyConnectedLayer(n, 10)
    with pytest.raises(ValueError, match="n_out must be a positive integer"):
        network3.SoftmaxLayer(10, n)


def test_network2_save_of_a_diverged_network_writes_nothing_and_keeps_the_old_file(tmp_path):
    net, path, _ = _saved_net2(tmp_path)
    before = path.read_bytes()
    net.params = [dict(p, w=p["w"] * np.nan) if i == 1 else p for i, p in enumerate(net.params)]
    with pytest.raises(ValueError, match="not saving .*net.json: the network's weights or biases are not all finite"):
        net.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["net.json"]
    with pytest.raises(ValueError, match="not all finite"):
        net.save(tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None, 2 ** 32], ids=repr)
def test_the_expansion_refuses_a_seed_that_is_not_a_whole_number(seed, tmp_path):
    with pytest.raises(ValueError, match="the expansion's seed must be a whole number from 0 to 4294967295"):
        expand_mnist.expanded_path(seed, tmp_path)
    with pytest.raises(ValueError, match="the expansion's seed must be a whole number from 0 to 4294967295"):
        expand_mnist.load_expanded(seed=seed, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_expansions_of_two_seeds_live_in_two_files(tmp_path):
    assert expand_mnist.expanded_path(0, tmp_path) != expand_mnist.expanded_path(2 ** 32 - 1, tmp_path)


@pytest.mark.parametrize("shape", [(3, 785), (3, 28, 27), (3, 784, 2), (784,)])
def test_expand_refuses_uint8_images_that_are_not_784_pixels(shape):
    with pytest.raises(ValueError, match=r"expand: uint8 images of shape .*expected \[n, 784\]"):
        expand(np.zeros(shape, np.uint8), np.zeros(shape[0], int))


def test_expand_of_no_uint8_images_says_there_are_no_examples():
    with pytest.raises(ValueError, match=r"no examples"):
        expand(np.zeros((0, 784), np.uint8), np.zeros(0, int))


def test_expand_of_uint8_and_float_images_agree():
    x, y = _xy(4)
    pixels = np.rint(x * 255).astype(np.uint8)
    a, b = expand(pixels, y, seed=3), expand(pixels.astype(np.float32) / np.float32(255), y, seed=3)
    np.testing.assert_array_equal(a.x.astype(np.float32) / np.float32(255), b.x)
    np.testing.assert_array_equal(a.y, b.y)


# --- mnist_loader: every set, image and label is the array loader's ------------------------

def test_load_data_wrapper_and_load_data_give_every_set_exactly(mnist_dir, mnist):
    wrapped = mnist_loader.load_data_wrapper(data_dir=mnist_dir)
    plain = mnist_loader.load_data(data_dir=mnist_dir)
    for name, want, pairs, (x, y) in zip(("training", "validation", "test"), mnist, wrapped, plain):
        got = as_arrays(pairs)
        np.testing.assert_array_equal(got.x, want.x, err_msg=name)
        np.testing.assert_array_equal(got.y, want.y, err_msg=name)
        np.testing.assert_array_equal(x, want.x, err_msg=name)
        np.testing.assert_array_equal(y, want.y, err_msg=name)
        assert y.dtype == np.int64 and x.dtype == np.float32
        first_x, first_y = pairs[0]
        assert first_x.shape == (784, 1)
        if name == "training":   # one-hot float64 columns, as the book's vectorized_result
            assert first_y.shape == (10, 1) and first_y.dtype == np.float64
            np.testing.assert_array_equal(np.stack([p[1] for p in pairs[:100]]),
                                          np.stack([mnist_loader.vectorized_result(int(d)) for d in want.y[:100]]))
        else:                    # plain ints
            assert all(type(p[1]) is int for p in pairs[:100])


def _dropout_net3(seed=0):
    net = network3.Network([network3.FullyConnectedLayer(784, 6, activations.linear, p_dropout=0.2),
                            network3.SoftmaxLayer(6, 10, p_dropout=0.3)], 10, seed=seed)
    rng = np.random.default_rng(seed)
    net.params[1] = {"w": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32),
                     "b": jnp.asarray(rng.normal(size=10), jnp.float32)}    # the softmax layer starts at zero
    net._sync()
    return net


def test_network3_evaluates_dropout_layers_scaled_by_their_own_1_minus_p():
    """network3's FullyConnectedLayer(p = 0.2) and SoftmaxLayer(p = 0.3): z = 0.7·(0.8·x·w1 + b1)·w2 + b2."""
    net = _dropout_net3()
    x = _xy(5)[0].astype(np.float64)
    (w1, b1), (w2, b2) = ([np.asarray(v, np.float64) for v in layer.params] for layer in net.layers)
    want = 0.7 * ((0.8 * x @ w1 + b1) @ w2) + b2
    got = np.asarray(net.net.apply(net.params, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(net.predict(x), np.argmax(want, axis=1))


def test_network3_save_and_load_keep_each_layers_dropout_rate(tmp_path):
    net = _dropout_net3()
    net.save(tmp_path / "net.npz")
    loaded = network3.load(tmp_path / "net.npz", seed=1)
    assert [getattr(layer, "p_dropout", None) for layer in loaded.layers] == [0.2, 0.3]
    x = _xy(5)[0]
    np.testing.assert_array_equal(np.asarray(loaded.net.apply(loaded.params, x)),
                                  np.asarray(net.net.apply(net.params, x)))


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        os.umask(0o077)
        files.atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("done", ["3", -1, 2.5, None, True])
def test_a_checkpoint_whose_header_gives_no_count_of_epochs_is_refused(tmp_path, done):
    path = tmp_path / "state.npz"
    checkpoint.save_tree(path, {"a": np.zeros(2)}, {"identity": {}, "epochs_done": done},
                         fmt=checkpoint.CHECKPOINT_FORMAT)
    with pytest.raises(checkpoint.CheckpointError, match="unreadable checkpoint .*epochs are done") as e:
        checkpoint.Checkpoint(path).epochs_done()
    assert e.value.differences == [] and path.is_file()


def _saved_net3_with(tmp_path, edit):
    net = _dropout_net3()
    spec = net.spec()
    edit(spec)
    path = tmp_path / "net.npz"
    checkpoint.save_tree(path, jax.device_get(net.params), {"spec": spec}, fmt=network3.FORMAT)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["layers"][0].update(p_dropout=1.5), r"p_dropout must be a probability in \[0, 1\)"),
    (lambda s: s["layers"][1].update(p_dropout=-0.5), r"p_dropout must be a probability in \[0, 1\)"),
    (lambda s: s["layers"][0].update(activation_fn="swish"), "swish"),
    (lambda s: s["layers"][0].update(n_out=7), "layer 0 gives 7 values but layer 1 expects 6"),
    (lambda s: s["layers"][0].update(n_in=True), "n_in must be a positive integer"),
    (lambda s: s.update(mini_batch_size="10"), "mini_batch_size must be a positive integer"),
    (lambda s: s["layers"][1].update(type="MaxoutLayer"), "unknown layer type 'MaxoutLayer'"),
    (lambda s: s["layers"].pop(), "the last layer must be a SoftmaxLayer"),
])
def test_a_network3_file_with_a_bad_architecture_is_refused_naming_it(tmp_path, edit, message):
    path = _saved_net3_with(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"{path}: bad architecture in the file \(.*{message}"):
        network3.load(path)


def test_a_network3_file_with_params_of_another_shape_is_refused(tmp_path):
    net = _dropout_net3()
    params = jax.device_get(net.params)
    params[0]["w"] = params[0]["w"][:, :5]
    path = tmp_path / "net.npz"
    checkpoint.save_tree(path, params, {"spec": net.spec()}, fmt=network3.FORMAT)
    with pytest.raises(ValueError, match=r"\[0\]\['w'\] holds shape \(784, 5\), expected \(784, 6\)"):
        network3.load(path)
    with pytest.raises(ValueError, match="holds shape"):
        net.load_params(path)


@pytest.mark.parametrize("layer, name, value", [(0, "w", np.nan), (1, "b", np.inf), (1, "w", -np.inf)])
def test_a_network3_file_holding_nan_or_infinity_is_refused(tmp_path, layer, name, value):
    """As network2 refuses such files: a diverged net, or a damaged one, would predict nonsense."""
    net = _dropout_net3()
    params = jax.device_get(net.params)
    params[layer][name] = params[layer][name].copy()
    params[layer][name].flat[3] = value
    path = tmp_path / "net.npz"
    checkpoint.save_tree(path, params, {"spec": net.spec()}, fmt=network3.FORMAT)
    with pytest.raises(ValueError, match=rf"{path}: layer {layer} {name} holds numbers that are not finite"):
        network3.load(path)
    with pytest.raises(ValueError, match="not finite"):
        net.load_params(path)


def _damaged_v2(tmp_path):
    """A network3 v2 file whose header is cut (the v2 reader must say what is wrong, not the v1 fallback)."""
    path = tmp_path / "net.npz"
    _dropout_net3().save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["header"] = np.array(str(arrays["header"])[:-40])
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, message", [
    (_damaged_v2, r"unreadable \(JSONDecodeError"),
    (lambda tmp_path: (tmp_path / "net.npz").write_bytes(b"x" * 100) and tmp_path / "net.npz",
     r"unreadable \(not a \.npz file\)"),
    (lambda tmp_path: (tmp_path / "net.npz").write_text("{}") and tmp_path / "net.npz",
     r"unreadable \(not a \.npz file\)"),
], ids=["damaged-v2-header", "bytes", "json"])
def test_a_network3_file_that_cannot_be_read_says_why_in_the_v2_readers_words(tmp_path, make, message):
    path = make(tmp_path)
    for read in (network3.load, _dropout_net3().load_params):
        with pytest.raises(ValueError, match=message) as refused:
            read(path)
        assert "KeyError" not in str(refused.value) and "allow_pickle" not in str(refused.value)


# --- names that files record: activations and costs round-trip ---------------------------

@pytest.mark.parametrize("fn", [activations.sigmoid, activations.tanh, activations.relu, activations.linear])
def test_a_network3_file_names_each_activation_and_loads_it_back(tmp_path, fn):
    assert activations.by_name(activations.name_of(fn)) is fn
    net = network3.Network([network3.FullyConnectedLayer(784, 4, fn), network3.SoftmaxLayer(4, 10)], 10, seed=0)
    net.save(tmp_path / "net.npz")
    assert network3.load(tmp_path / "net.npz").layers[0].activation_fn is fn


@pytest.mark.parametrize("cost", [network2.QuadraticCost, network2.CrossEntropyCost, network2.LogLikelihoodCost])
def test_a_network2_file_names_each_cost_and_loads_it_back(tmp_path, cost):
    net = network2.Network([3, 4, 2], cost=cost, seed=0)
    net.save(tmp_path / "net.json")
    loaded = network2.load(tmp_path / "net.json")
    assert loaded.cost is cost
    x = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.total_cost((x, np.arange(5) % 2), 0.0, convert=True),
                               net.total_cost((x, np.arange(5) % 2), 0.0, convert=True), rtol=1e-6)


@pytest.mark.parametrize("facade", ["network", "network2"])
@pytest.mark.parametrize("attribute, value", [
    ("weights", [np.zeros((3, 5)), np.zeros((2, 3))]),
    ("weights", [np.zeros((4, 3)), np.zeros((3, 2))]),          # transposed: the core's layout, not the book's
    ("weights", [np.zeros((3, 4))]),                              # a layer short
    ("biases", [np.zeros((4, 1)), np.zeros((2, 1))]),
    ("biases", [np.zeros((3, 1)), np.zeros((2, 1)), np.zeros((1, 1))]),
])
def test_the_books_weights_and_biases_must_fit_the_sizes(facade, attribute, value):
    net = (network.Network if facade == "network" else network2.Network)([4, 3, 2], seed=0)
    before = jax.tree_util.tree_map(np.asarray, net.params)
    with pytest.raises(ValueError, match=rf"{attribute} for sizes \[4, 3, 2\] must be 2 arrays of shapes"):
        setattr(net, attribute, value)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.asarray, net.params))


def test_the_books_weights_and_biases_can_be_set_in_its_layout():
    net = network.Network([4, 3, 2], seed=0)
    w = [np.full((3, 4), 0.5), np.full((2, 3), -1.0)]
    net.weights = w
    net.biases = [np.ones(3), np.zeros((2, 1))]                   # flat biases are taken too
    np.testing.assert_array_equal(net.weights[1], w[1])
    np.testing.assert_array_equal(net.biases[0], np.ones((3, 1)))
    z1 = 0.5 * 4 * 1.0 + 1.0                                      # every hidden z for x = 1
    want = -3 / (1 + np.exp(-z1))
    np.testing.assert_allclose(net.feedforward(np.ones(4)), np.full(2, 1 / (1 + np.exp(-want))), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 2 ** 31 - 1, 2 ** 31 + 5, 2 ** 32 - 1])
def test_every_accepted_seed_gives_the_same_keys_with_and_without_64_bit_mode(seed):
    keys = [jax.random.key_data(k) for k in train.seed_keys([seed])]
    with jax.enable_x64(True):
        keys64 = [jax.random.key_data(k) for k in train.seed_keys([seed])]
    for a, b in zip(keys, keys64):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_book_examples_are_read_as_examples_even_when_images_and_labels_have_one_shape():
    """A net with as many inputs as classes: each example's image and one-hot label are both (2, 1)."""
    x = np.array([[0.25, 0.5], [0.75, 1.0]], np.float32)
    one_hot = np.eye(2)[[1, 0]]
    examples = [(x[i][:, None], one_hot[i][:, None]) for i in range(2)]   # as zip makes them: tuples
    assert not is_pair_of_sets(examples)
    got = as_arrays(examples, n_inputs=2, n_classes=2)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, [1, 0])


# --- fit itself refuses data that would train silently wrong ------------------------------

def _fit_on(data=None, evaluation=None):
    net = layers.mlp_net([4, 3, 2], activations.sigmoid)
    trainer = train.trainer_for(net, costs.quadratic, 2)
    params, keys = train.from_seeds(net.init, (4,), [0])
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    return train.fit(trainer, params, data or (x, np.arange(6) % 2), 1, key=keys, eta=0.5, evaluation=evaluation)


_X4 = np.random.default_rng(0).random((6, 4), dtype=np.float32)


@pytest.mark.parametrize("data, message", [
    ((_X4, np.array([0, 1, 5, 0, 1, 0])), r"the training data: labels must lie in \[0, 2\) .*the largest is 5"),
    ((_X4, np.array([0, 1, -1, 0, 1, 0])), "the training data: labels must be >= 0; the smallest is -1"),
    ((_X4, np.arange(5) % 2), r"x \(6, 4\) and y \(5,\) must hold one example per row"),   # JAX would clamp y[5]
    ((np.where(_X4 > 0.9, np.nan, _X4), np.arange(6) % 2), "x holds values that are not finite"),
    ((np.where(_X4 > 0.9, -np.inf, _X4), np.arange(6) % 2), "x holds values that are not finite"),
    ((_X4, (np.arange(6) % 2).astype(np.float32)), r"integer labels \[n\] or finite float targets \[n, n_out\]"),
    ((_X4, np.eye(3, dtype=np.float32)[np.arange(6) % 3]), r"labels must lie in \[0, 2\) .*targets are 3 wide"),
    ((np.zeros((6, 5), np.float32), np.arange(6) % 2), r"examples of shape \(5,\) do not fit the network's input"),
])
def test_fit_refuses_training_data_that_would_train_silently_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        _fit_on(data)


@pytest.mark.parametrize("evaluation, message", [
    ({"validation": (_X4, np.full(6, 2))}, r"evaluation set 'validation': labels must lie in \[0, 2\)"),
    ({"test": (_X4, np.arange(5) % 2)}, r"evaluation set 'test': x \(6, 4\) and y \(5,\)"),
])
def test_fit_refuses_evaluation_sets_that_would_be_scored_silently_wrong(evaluation, message):
    with pytest.raises(ValueError, match=message):
        _fit_on(evaluation=evaluation)


def test_fit_takes_one_hot_float_targets():
    assert len(_fit_on((_X4, np.eye(2, dtype=np.float32)[np.arange(6) % 2])).history.eta) == 1


# --- the library's own checks: η and λ per net, mini-batch sizes, evaluation sets, pixels, seeds --

def _fit_two(**kwargs):
    net = layers.mlp_net([4, 3, 2], activations.sigmoid)
    trainer = train.trainer_for(net, costs.quadratic, 2)
    params, keys = train.from_seeds(net.init, (4,), [0, 1])
    args = dict(key=keys, eta=0.5) | kwargs
    return train.fit(trainer, params, args.pop("data", (_X4, np.arange(6) % 2)), 1, **args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eta=[0.5, 0.5, 0.5]), r"eta must be one value for every net or one per net \(K = 2 nets\), got 3 values"),
    (dict(lmbda=np.ones(3)), r"lmbda must be one value for every net or one per net \(K = 2 nets\), got 3 values"),
    (dict(eta=np.full((2, 2), 0.5)), r"eta must be one value .* got 4 values of shape \(2, 2\)"),
])
def test_eta_or_lmbda_of_the_wrong_length_names_the_setting_and_k(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _fit_two(**kwargs)


def test_eta_and_lmbda_take_one_value_or_one_per_net():
    fitted = _fit_two(eta=[0.5, 1.0], lmbda=[0.0], evaluation={"e": (_X4, np.arange(6) % 2)})
    np.testing.assert_array_equal(fitted.history.eta, [[0.5, 1.0]])


@pytest.mark.parametrize("mb", [2.5, True, "2", 0])
def test_trainer_for_refuses_a_mini_batch_size_that_is_not_a_whole_number(mb):
    with pytest.raises(ValueError, match=f"mini_batch_size must be a positive integer, got {mb!r}"):
        train.trainer_for(layers.mlp_net([4, 3, 2], activations.sigmoid), costs.quadratic, mb)


@pytest.mark.parametrize("evaluation, message", [
    ({"validation": (_X4[:0], np.zeros(0, np.int64))}, r"evaluation set 'validation' is empty \(no examples\)"),
    ((_X4, np.arange(6) % 2), r"evaluation must map names to \(x, y\) sets, e\.g\. .* got tuple"),
    ([("v", (_X4, np.arange(6) % 2))], "evaluation must map names to .* got list"),
])
def test_fit_refuses_an_empty_evaluation_set_and_an_evaluation_that_is_not_a_dict(evaluation, message):
    with pytest.raises(ValueError, match=message):
        _fit_two(evaluation=evaluation)


def test_fit_refuses_empty_training_data():
    with pytest.raises(ValueError, match=r"the training data is empty \(no examples\)"):
        _fit_two(data=(_X4[:0], np.zeros(0, np.int64)))


def test_fit_scales_uint8_images_as_as_arrays_does():
    """0–255 pixels given straight to fit train the very nets their as_arrays floats train."""
    pixels = np.random.default_rng(3).integers(0, 256, (6, 4), dtype=np.uint8)
    y = np.arange(6) % 2
    from_bytes = _fit_two(data=(pixels, y), evaluation={"e": (pixels, y)})
    from_floats = _fit_two(data=as_arrays((pixels, y), n_inputs=4, n_classes=2),
                           evaluation={"e": as_arrays((pixels, y), n_inputs=4, n_classes=2)})
    for a, b in zip(jax.tree_util.tree_leaves(from_bytes.params), jax.tree_util.tree_leaves(from_floats.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(from_bytes.history["e_cost"], from_floats.history["e_cost"])


@pytest.mark.parametrize("seed", [-1, "x", 1.5, True, 2 ** 32])
def test_data_expand_uses_the_one_seed_check(seed):
    with pytest.raises(ValueError, match=r"the expansion's seed must be a whole number from 0 to 4294967295 "
                                         rf"\(2\*\*32 - 1\), got {re.escape(repr(seed))}"):
        expand(np.zeros((2, 784), np.float32), np.arange(2), seed=seed)

