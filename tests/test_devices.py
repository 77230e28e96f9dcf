"""devices.over_devices: K conv nets spread over two host CPU devices, each
device running the one-net epoch, train the same as one device running them
one after another. Runs in a subprocess, since the device count is fixed when
JAX starts."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nndl_jax import devices

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, jax
    from nndl_jax import devices
    devices.use_cpu_devices(2)
    import jax.numpy as jnp, numpy as np
    from functools import partial
    from nndl_jax import costs, layers, train
    from nndl_jax.activations import relu
    assert len(jax.local_devices()) == 2
    init, apply = layers.serial(layers.conv_pool((3, 1, 3, 3), (5, 1, 8, 8), (2, 2), relu),
                                layers.fully_connected(6, relu, p_dropout=0.5), layers.softmax(10))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((23, 64), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, 23).astype(np.int32))
    out = {}
    for k in (2, 4):
        init_keys, train_keys = train.seed_keys(range(k))
        params = train.init_many(init, init_keys, (64,))
        trainer = train.Trainer(apply, costs.log_likelihood, 5, penalty="l2", over_k="map")
        state = trainer.init_opt_state(params, 0.1)
        c = jnp.full(k, 0.01, jnp.float32)
        ref, _ = trainer.epoch(jax.tree_util.tree_map(jnp.copy, params), jax.tree_util.tree_map(jnp.copy, state),
                               x, y, train_keys, c, jnp.ones(k, bool))
        one = partial(train.epoch, apply=apply, cost=costs.log_likelihood, penalty=costs.l2_penalty,
                      optimizer=trainer.optimizer, mini_batch_size=5, shuffle=True)
        run = jax.jit(devices.over_devices(one, (True, True, False, False, True, True)))
        # (the epoch's e and order arguments are left out: shared defaults)
        layout = devices.Layout(k, tuple(jax.devices()))
        got, _ = run(*layout.place((params, state)), x, y, *layout.place((train_keys, c)))
        w = got[0]["w"]
        out[k] = {"diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
                      jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got))),
                  "moved": float(jnp.max(jnp.abs(w - params[0]["w"]))),
                  "devices": len(w.sharding.device_set), "k": int(w.shape[0])}
    # the trainer's over_k="devices" through fit: K = 3 padded to 4, two nets per device, and
    # the evaluation spread the same way; against over_k="map" (the same padded, sharded
    # stack, each net after the other in one partitioned program)
    xe, ye = x[:11], y[:11]
    init_keys, train_keys = train.seed_keys(range(3))
    params = train.init_many(init, init_keys, (64,))
    fits = {}
    for mode in ("map", "devices"):
        trainer = train.Trainer(apply, costs.log_likelihood, 5, penalty="l2", over_k=mode)
        fits[mode] = train.fit(trainer, params, (x, y), 2, key=train_keys, eta=0.1, lmbda=0.5,
                               evaluation={"e": (xe, ye)})
    a, b = fits["map"], fits["devices"]
    out["fit"] = {"diff": max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(
                      jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params))),
                  "cost_diff": float(np.max(np.abs(np.asarray(a.history["e_cost"])
                                                   - np.asarray(b.history["e_cost"])))),
                  "accuracy_equal": bool(np.array_equal(a.history["e_accuracy"], b.history["e_accuracy"])),
                  "k": int(b.params[0]["w"].shape[0]), "mode": devices.k_axis_mode("auto"),
                  "used": len(devices.devices_for(3)), "used_one": len(devices.devices_for(1))}
    try:
        p3, s3, k3, c3 = jax.tree_util.tree_map(lambda a: a[:3], (params, state, train_keys, c))
        run(p3, s3, x, y, k3, c3)
        out["uneven"] = "no error"
    except ValueError as e:
        out["uneven"] = str(e)
    print(json.dumps(out))
""")


def test_over_devices_trains_like_one_device_for_one_and_two_nets_per_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True,
                          timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for k in ("2", "4"):  # one net per device (called directly), two per device (lax.map)
        assert result[k]["k"] == int(k) and result[k]["devices"] == 2, result
        assert result[k]["moved"] > 1e-3, result       # it trained
        assert result[k]["diff"] < 1e-5, result        # same maths: float32 tolerance
    assert "multiple" in result["uneven"], result
    fit = result["fit"]  # the trainer's over_k="devices" (auto on two CPU devices) through fit
    assert fit["mode"] == "devices" and fit["used"] == 2 and fit["used_one"] == 1, fit
    assert fit["k"] == 3, fit                                  # the padding net is dropped
    assert fit["diff"] < 1e-5 and fit["cost_diff"] < 1e-5, fit  # float32 tolerance
    assert fit["accuracy_equal"], fit


def test_use_cpu_devices_rejects_a_count_below_one():
    with pytest.raises(ValueError, match="at least one"):
        devices.use_cpu_devices(0)
