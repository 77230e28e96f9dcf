"""The K axis of stacked nets sharded over several devices gives the same
training as one device, and a checkpoint written on one device count resumes
on another. Each run is a subprocess (the device count is fixed when JAX
starts): 4 host CPU devices against 1, and 2 against 1."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# argv: devices, out.npz, [checkpoint path, "stop" to interrupt after the first epoch]
SCRIPT = textwrap.dedent("""
    import json, sys
    from nndl_jax import devices
    devices.use_cpu_devices(int(sys.argv[1]))
    import jax, jax.numpy as jnp, numpy as np
    from nndl_jax import network3, train
    from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer, ReLU
    assert len(jax.devices()) == int(sys.argv[1]), jax.devices()
    rng = np.random.default_rng(0)
    x = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60).astype(np.int32)
    layers = [ConvPoolLayer((2, 1, 5, 5), (10, 1, 28, 28), (2, 2), ReLU),
              FullyConnectedLayer(288, 10, ReLU, p_dropout=0.5), SoftmaxLayer(10, 10)]
    net = network3.build(layers)
    init_keys, train_keys = train.seed_keys(range(3))
    params = train.init_many(net.init, init_keys, (784,))
    trainer = train.Trainer(net.apply, network3.costs.log_likelihood, 10, penalty="l2", shuffle=True,
                            over_k="auto")
    ckpt = train.Checkpoint(sys.argv[3], {"test": "devices"}) if len(sys.argv) > 3 else None
    def stop(e, record):
        if len(sys.argv) > 4 and e == 0:
            raise SystemExit(3)
    shards = []
    out, _, hist = train.fit(trainer, params, (x, y), 3, key=train_keys, eta=0.05, lmbda=0.1, n_penalty=6,
                             evaluation={"v": (x[:20], y[:20])}, checkpoint=ckpt,
                             on_epoch=lambda e, r: (shards.append(len(r["params"][0]["w"].sharding.device_set)),
                                                    stop(e, r)))
    np.savez(sys.argv[2], *[np.asarray(a) for a in jax.tree_util.tree_leaves(out)],
             accuracy=np.asarray(hist["v_accuracy"]))
    # train_many spreads K=3 nets over 3 of the devices (devices.devices_for), one net each
    many = (network3.train_many(layers, 10, (x, y), 1, 0.05, (x[:20], y[:20]), (x[:20], y[:20]), seeds=[0, 1, 2])
            if ckpt is None else {"params": [{"w": np.zeros((0,))}], "devices": None})
    print(json.dumps({"devices_used": shards, "resumed": hist.resumed_epochs,
                      "many_k": int(many["params"][0]["w"].shape[0]), "many_devices": many["devices"]}))
""")


def run(n_devices, out, *ckpt, expect=0):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), NNDL_JAX_COMPILATION_CACHE="0")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n_devices), str(out), *map(str, ckpt)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if expect == 0 else None


def leaves(path):
    with np.load(path) as f:
        return [f[name] for name in f.files]


def assert_same_training(a, b, atol=0.0):
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def test_sharded_k_axis_matches_one_device_and_resumes_across_device_counts(tmp_path):
    """4 devices (K = 3 padded to 4, one net each) against 1 device; then a run
    interrupted after epoch 1 of 3 on 2 devices and resumed on 1 (and the other
    way round) against the uninterrupted 1-device run: bit for bit (issue 31),
    since 1 and 2 devices run the same per-net program. A process of 4 CPU
    devices (on 2 cores) ended one conv bias 6e-8 away (its last bit) in
    jaxlib 0.10.2, whether its 3 nets ran one a device or two a device on two
    of them: not explained yet, so 4 devices are compared to float32 rounding
    (atol 1e-6)."""
    one = run(1, tmp_path / "one.npz")
    four = run(4, tmp_path / "four.npz")
    assert four["devices_used"] == [3, 3, 3] and one["devices_used"] == [1, 1, 1]
    assert four["many_k"] == 3 and four["many_devices"] == 3
    assert_same_training(tmp_path / "one.npz", tmp_path / "four.npz", atol=1e-6)

    for first, then in ((2, 1), (1, 2)):
        ckpt = tmp_path / f"{first}to{then}.ckpt.npz"
        run(first, tmp_path / "stopped.npz", ckpt, "stop", expect=3)
        resumed = run(then, tmp_path / f"{first}to{then}.npz", ckpt)
        assert resumed["resumed"] == 1 and len(resumed["devices_used"]) == 2
        assert_same_training(tmp_path / "one.npz", tmp_path / f"{first}to{then}.npz")
