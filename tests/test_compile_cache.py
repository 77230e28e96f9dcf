"""One bounded cache of compiled programs keyed by what the network is (a
hashable ``layers.Net``), the book's repeated calls on one list converted once,
and JAX's persistent compilation cache in the user cache folder."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nndl_jax import compile_cache, layers, network, network2, train
from nndl_jax.activations import sigmoid

REPO = Path(__file__).resolve().parents[1]


def pairs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((784, 1)).astype(np.float32), np.eye(10)[rng.integers(10)].reshape(10, 1))
            for _ in range(n)]


def test_equal_descriptions_are_one_network_and_initializers_do_not_split_trainers():
    a, b = layers.mlp_net([784, 30, 10], sigmoid), layers.mlp_net([784, 30, 10], sigmoid)
    assert a == b and hash(a) == hash(b)
    large = layers.mlp_net([784, 30, 10], sigmoid, init=layers.large_weight_init)
    assert large != a and large.without_init() == a.without_init()
    assert layers.mlp_net([784, 31, 10], sigmoid) != a
    m = layers.mlp_net([784, 30, 10], sigmoid)
    assert train.trainer_for(a, network2.costs.cross_entropy, 10) is train.trainer_for(
        large, network2.costs.cross_entropy, 10)
    assert train.trainer_for(m, network2.costs.cross_entropy, 10) is not train.trainer_for(
        m, network2.costs.cross_entropy, 5)


def test_three_identical_book_networks_compile_their_training_once():
    """Issue 23's bug 4: three ``network2.Network([784, 30, 10], seed=1)`` runs
    gave three misses. Now: one trainer (one miss, then hits) and one compiled
    epoch; a redraw with the large initializer keeps it too."""
    data = pairs()
    before = train._cached_trainer.cache_info()
    nets = [network2.Network([784, 30, 10], seed=1) for _ in range(3)]
    nets[2].large_weight_initializer()
    for net in nets:
        net.SGD(data, 1, 10, 0.5, seed=4)
    after = train._cached_trainer.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 2
    trainer = nets[0]._trainer(10, True, penalty="l2", momentum=0.0)
    assert trainer.epoch._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(nets[0].params[0]["w"]), np.asarray(nets[1].params[0]["w"]))


def test_the_cache_of_trainers_is_bounded():
    assert train._cached_trainer.cache_info().maxsize == train.TRAINER_CACHE_SIZE
    assert train._cached_evaluation.cache_info().maxsize == train.TRAINER_CACHE_SIZE


def test_the_same_list_is_converted_once_and_a_changed_list_again():
    data = pairs(50)
    first = network.device_arrays(data, n_inputs=784, n_classes=10)
    assert network.device_arrays(data, n_inputs=784, n_classes=10) is first
    changed = (np.full((784, 1), 0.5, np.float32), data[3][1])
    data[3] = changed                                     # an item replaced
    second = network.device_arrays(data, n_inputs=784, n_classes=10)
    assert second is not first and float(second.x[3, 0]) == 0.5
    data[0][0][:] = 0.25                                  # an image edited in place (a sampled one)
    third = network.device_arrays(data, n_inputs=784, n_classes=10)
    assert third is not second and float(third.x[0, 7]) == 0.25
    data.append(pairs(1, seed=9)[0])                      # an item added
    assert len(network.device_arrays(data, n_inputs=784, n_classes=10).y) == 51
    assert network.device_arrays(data, n_inputs=784, n_classes=5 + 5) is network.device_arrays(
        data, n_inputs=784, n_classes=10)


def test_sgd_twice_on_the_same_list_trains_on_what_the_list_holds_now():
    """The reuse never gives a wrong answer: after the list changes, SGD trains
    on the new data (equal to a run on a fresh copy of the new list)."""
    data = pairs(40)
    net = network.Network([784, 5, 10], seed=3)
    net.SGD(data, 1, 10, 3.0, seed=1)
    data[:20] = pairs(20, seed=5)
    net.SGD(data, 1, 10, 3.0, seed=2)
    fresh = network.Network([784, 5, 10], seed=3)
    fresh.SGD(list(pairs(40)), 1, 10, 3.0, seed=1)
    fresh.SGD(list(data), 1, 10, 3.0, seed=2)
    np.testing.assert_array_equal(np.asarray(net.params[0]["w"]), np.asarray(fresh.params[0]["w"]))


@pytest.mark.parametrize("value,expected", [("0", None), ("off", None), ("", None), ("/some/folder", "/some/folder")])
def test_the_persistent_cache_folder_can_be_chosen_or_turned_off(monkeypatch, value, expected):
    monkeypatch.setenv(compile_cache.COMPILATION_CACHE_ENV, value)
    assert compile_cache.compilation_cache_dir() == expected


def test_the_persistent_cache_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.COMPILATION_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.compilation_cache_dir() == str(tmp_path / "nndl-jax" / "xla")


SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from nndl_jax import network
    rng = np.random.default_rng(0)
    data = [(rng.random((784, 1)).astype(np.float32), int(rng.integers(10))) for _ in range(30)]
    network.Network([784, 7, 10], seed=1).SGD(data, 1, 10, 3.0)
    print("cache:", jax.config.jax_compilation_cache_dir)
""")


@pytest.mark.parametrize("setting", ["folder", "0"])
def test_a_process_writes_its_programs_to_the_persistent_cache_unless_turned_off(tmp_path, setting):
    folder = tmp_path / "xla"
    env = dict(os.environ, PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE=str(folder) if setting == "folder" else "0")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if setting == "folder":
        assert f"cache: {folder}" in proc.stdout and any(folder.iterdir())
    else:
        assert "cache: None" in proc.stdout and not folder.exists()
