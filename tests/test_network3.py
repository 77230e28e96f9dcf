"""The network3 façade: the book's layers and calls, printing, the best-validation
rule, save/load, and the ensemble's plurality vote."""
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from nndl_jax import network3, scoring
from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer, sigmoid


def _conv_net(mb=10, seed=0):
    return Network([ConvPoolLayer((4, 1, 5, 5), (mb, 1, 28, 28), (2, 2), ReLU),
                    FullyConnectedLayer(4 * 12 * 12, 20, ReLU, p_dropout=0.5),
                    SoftmaxLayer(20, 10, p_dropout=0.5)], mb, seed=seed)


@pytest.fixture(scope="module")
def small(mnist):
    cut = lambda d, n: (d.x[:n], d.y[:n])  # noqa: E731
    return cut(mnist.training, 200), cut(mnist.validation, 100), cut(mnist.test, 100)


def test_layers_hold_book_shapes():
    net = _conv_net()
    conv, fc, soft = net.layers
    assert conv.w.shape == (4, 1, 5, 5) and conv.b.shape == (4,)
    assert fc.w.shape == (576, 20) and fc.b.shape == (20,)
    assert soft.w.shape == (20, 10) and not soft.w.any() and not soft.b.any()


def test_mismatched_layer_sizes_are_an_error():
    with pytest.raises(ValueError, match="layer 0 gives 576 values but layer 1 expects 500"):
        Network([ConvPoolLayer((4, 1, 5, 5), (10, 1, 28, 28)), SoftmaxLayer(500, 10)], 10)
    with pytest.raises(ValueError, match="SoftmaxLayer"):
        Network([FullyConnectedLayer(784, 10)], 10)


def test_shuffle_defaults_to_false_as_in_the_book():
    assert inspect.signature(Network.SGD).parameters["shuffle"].default is False


def test_sgd_prints_the_books_lines_and_trains(small, capsys):
    training, validation, test = small
    net = Network([FullyConnectedLayer(784, 30, sigmoid), SoftmaxLayer(30, 10)], 10, seed=1)
    w0 = net.layers[0].w.copy()
    assert net.SGD(training, 3, 10, 0.5, validation, test) is None  # as the book's: nothing for the REPL to echo
    text = capsys.readouterr().out
    for line in ("Epoch 0: validation accuracy ", "Epoch 2: validation accuracy ",
                 "This is the best validation accuracy to date.",
                 "The corresponding test accuracy is ", "Finished training network.",
                 "Best validation accuracy of ", "Corresponding test accuracy of "):
        assert line in text
    h = net.history
    assert h["seed"] == net.last_sgd_seed and h["num_training_batches"] == 20  # 200 images / 10
    best = max(range(3), key=lambda e: (h["validation_accuracy"][e], e))       # the last of the best (>=)
    assert h["best_iteration"] == 20 * (best + 1) - 1
    assert f"obtained at iteration {h['best_iteration']}" in text
    assert h["test_accuracy_at_best"] == h["test_accuracy"][best]
    assert not np.allclose(net.layers[0].w, w0)
    assert net.layers[0].params[0] is net.layers[0].w and net.layers[0].params[1] is net.layers[0].b
    assert h["validation_accuracy"][-1] > 0.3          # it learned something in 3 epochs
    assert net.accuracy(test) == pytest.approx(h["test_accuracy"][-1])


def test_sgd_rejects_a_different_mini_batch_size(small):
    net = Network([FullyConnectedLayer(784, 30), SoftmaxLayer(30, 10)], 10)
    with pytest.raises(ValueError, match="mini-batches of 10"):
        net.SGD(small[0], 1, 20, 0.1, small[1], small[2])


def test_best_validation_uses_the_books_tie_rule():
    val = np.array([[0.90, 0.5], [0.95, 0.7], [0.95, 0.6], [0.93, 0.7]])
    test = np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]])
    best, epoch, at_best = scoring.best_validation(val, test)
    # net 0: 0.95 at epochs 1 and 2: >= takes the later one; net 1: 0.7 at 1 and 3
    np.testing.assert_array_equal(epoch, [2, 3])
    np.testing.assert_allclose(best, [0.95, 0.7])
    np.testing.assert_allclose(at_best, [0.3, 0.4])


def test_save_load_round_trip_and_errors(tmp_path, small):
    net = _conv_net(seed=3)
    path = tmp_path / "net.npz"
    net.save(path)
    again = network3.load(path)
    for a, b in zip(net.layers, again.layers):
        np.testing.assert_array_equal(a.w, b.w)
        np.testing.assert_array_equal(a.b, b.b)
    np.testing.assert_array_equal(net.predict(small[2][0]), again.predict(small[2][0]))
    assert not list(tmp_path.glob(".*part"))                 # no temporary file left behind
    other = Network([FullyConnectedLayer(784, 30), SoftmaxLayer(30, 10)], 10)
    with pytest.raises(ValueError, match="different architecture"):
        other.load_params(path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable network3 file"):
        network3.load(bad)
    with pytest.raises(FileNotFoundError):
        network3.load(tmp_path / "missing.npz")


def test_plurality_vote_on_hand_made_predictions():
    preds = jnp.array([[1, 2, 3, 4, 0],
                       [1, 5, 3, 6, 0],
                       [2, 5, 7, 6, 9],
                       [2, 2, 7, 8, 9],
                       [1, 9, 8, 8, 9]], jnp.int32)
    # ex 0: 1 ×3; ex 1: 2 and 5 twice each, 2 voted first (net 0);
    # ex 2: 3 and 7 twice, 3 first; ex 3: 6 and 8 twice, 6 first (net 1); ex 4: 9 ×3
    np.testing.assert_array_equal(np.asarray(scoring.plurality_vote(preds, 10)), [1, 2, 3, 6, 9])


def test_ensemble_trains_k_nets_and_votes(small):
    training, validation, test = small
    layers = [FullyConnectedLayer(784, 20), SoftmaxLayer(20, 10)]
    out = network3.ensemble(layers, 10, training, 2, 0.5, validation, test, seeds=[0, 1, 2])
    assert out["predictions"].shape == (3, 100)
    assert out["validation_accuracy"].shape == (2, 3)
    assert not np.array_equal(out["predictions"][0], out["predictions"][1])  # different seeds
    np.testing.assert_array_equal(out["vote"], np.asarray(scoring.plurality_vote(out["predictions"], 10)))
    assert out["vote_accuracy"] == pytest.approx(np.mean(out["vote"] == test[1]))
    # each net's final test accuracy matches its own predictions
    np.testing.assert_allclose(out["test_accuracy"][-1], np.mean(out["predictions"] == test[1], axis=1))
