"""devices.over_devices: K conv nets spread over two host CPU devices, each
device running the one-net epoch, train the same as one device running them
one after another, bit for bit (the same per-net program). Runs in a
subprocess, since the device count is fixed when JAX starts. And the K-axis
helpers' arguments: ``in_axes`` as JAX spells them."""
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
        one = partial(train.epoch, apply=apply, cost=costs.log_likelihood, penalty=costs.l2_penalty,
                      optimizer=trainer.optimizer, mini_batch_size=5, shuffle=True)
        axes = (0, 0, None, None, 0, 0)
        # the reference: all K nets one after another on the first device
        ref, _ = jax.jit(lambda *a: devices.map_over_nets(one, axes, a))(params, state, x, y, train_keys, c)
        run = jax.jit(devices.over_devices(one, axes))
        # (the epoch's e and order arguments are left out: shared defaults)
        layout = devices.Layout(k, tuple(jax.devices()))
        got, _ = run(*layout.put((params, state)), x, y, *layout.put((train_keys, c)))  # k per device: k/2
        w = got[0]["w"]
        out[k] = {"diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
                      jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got))),
                  "moved": float(jnp.max(jnp.abs(w - params[0]["w"]))),
                  "devices": len(w.sharding.device_set), "k": int(w.shape[0])}
    # the trainer's over_k="devices" through fit: K = 3 padded to 4, two nets per device, and
    # the evaluation spread the same way; against the same nets one after another on one
    # device (over_k="map" in fit, its layout forced to the first device)
    xe, ye = x[:11], y[:11]
    init_keys, train_keys = train.seed_keys(range(3))
    params = train.init_many(init, init_keys, (64,))
    fits = {}
    for mode in ("map", "devices"):
        trainer = train.Trainer(apply, costs.log_likelihood, 5, penalty="l2", over_k=mode)
        real = devices.devices_for
        if mode == "map":
            devices.devices_for = lambda *a, **kw: real(*a, **kw)[:1]
        try:
            fits[mode] = train.fit(trainer, params, (x, y), 2, key=train_keys, eta=0.1, lmbda=0.5,
                                   evaluation={"e": (xe, ye)})
        finally:
            devices.devices_for = real
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
        assert result[k]["diff"] == 0, result          # the same per-net program: bit for bit
    assert "multiple" in result["uneven"], result
    fit = result["fit"]  # the trainer's over_k="devices" (auto on two CPU devices) through fit
    assert fit["mode"] == "devices" and fit["used"] == 2 and fit["used_one"] == 1, fit
    assert fit["k"] == 3, fit                                  # the padding net is dropped
    assert fit["diff"] == 0 and fit["cost_diff"] == 0, fit     # bit for bit (issue 31)
    assert fit["accuracy_equal"], fit


def test_use_cpu_devices_rejects_a_count_below_one():
    with pytest.raises(ValueError, match="at least one"):
        devices.use_cpu_devices(0)


@pytest.mark.parametrize("in_axes", [(True, False), (1, None), (0, "x")])
def test_k_nets_takes_in_axes_of_0_and_none_only(in_axes):
    with pytest.raises(ValueError, match="in_axes entries must be 0 .* or None"):
        devices.k_nets(lambda p, x: p, in_axes, "map")


def test_layout_pads_with_the_last_net_or_holds_all_k_nets_on_every_device():
    """K = 3 over 2 devices: padded to 4 with a copy of the last net; the K-wide
    vmapped program's layout over several devices (``copies``): all 3 on each."""
    import numpy as np
    a = np.arange(3)
    pad = devices.Layout(3, ("d0", "d1"))
    copies = devices.Layout(3, ("d0", "d1"), copies=True)
    assert pad.k_all == 4 and np.asarray(pad.pad(a)).tolist() == [0, 1, 2, 2]
    assert copies.k_all == 6 and np.asarray(copies.pad(a)).tolist() == [0, 1, 2, 0, 1, 2]
    assert np.asarray(copies.unpad(copies.pad(a))).tolist() == [0, 1, 2]
    assert devices.layout_for(3, ["d0", "d1"], mode="vmap") == devices.Layout(3, ("d0",))
    assert devices.layout_for(3, ["d0", "d1"], mode="devices") == devices.Layout(3, ("d0", "d1"))
