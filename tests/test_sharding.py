"""The K axis of stacked nets sharded over several devices gives the same
training as one device. Runs in a subprocess with 4 host CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4), since the device count
is fixed when JAX starts."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from nndl_jax import network3, train
    from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer, ReLU
    assert len(jax.local_devices()) == 4, jax.local_devices()
    rng = np.random.default_rng(0)
    x = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60).astype(np.int32)
    layers = [ConvPoolLayer((2, 1, 5, 5), (10, 1, 28, 28), (2, 2), ReLU),
              FullyConnectedLayer(288, 10, ReLU, p_dropout=0.5), SoftmaxLayer(10, 10)]
    init, apply = network3.build(layers)
    init_keys, train_keys = train.seed_keys(range(4))
    params = train.init_many(init, init_keys, (784,))
    trainer = train.Trainer(apply, network3.costs.log_likelihood, 10, penalty="l2", shuffle=True)
    runs = {}
    for name, devices in (("one", jax.devices()[:1]), ("sharded", None)):
        out, _, _ = train.fit(trainer, params, (x, y), 2, key=train_keys, eta=0.05, lmbda=0.1,
                              n_penalty=6, devices=devices)
        runs[name] = out
    leaf = runs["sharded"][0]["w"]
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(runs["one"]), jax.tree_util.tree_leaves(runs["sharded"])))
    # train_many spreads K=3 nets over 3 of the 4 devices (train.devices_for), one net each
    many = network3.train_many(layers, 10, (x, y), 1, 0.05, (x[:20], y[:20]), (x[:20], y[:20]),
                               seeds=[0, 1, 2])
    print(json.dumps({"diff": diff, "devices": len(leaf.sharding.device_set),
                      "shard_shape": list(leaf.sharding.shard_shape(leaf.shape)),
                      "one_devices": len(runs["one"][0]["w"].sharding.device_set),
                      "many_k": int(many["params"][0]["w"].shape[0]), "many_devices": many["devices"]}))
""")


def test_sharded_k_axis_matches_unsharded_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=REPO)  # ~1 min quiet; generous for a loaded machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["shard_shape"] == [1, 2, 1, 5, 5]  # one net per device
    assert result["one_devices"] == 1
    # same maths, possibly another reduction order: float32 tolerance
    assert result["diff"] < 1e-5, result
    assert result["many_k"] == 3 and result["many_devices"] == 3
