"""Seconds per mini-batch step (mini-batch 10) of the book's dropout net
(conv20 → conv40 → FC1000 → FC1000 → softmax, ReLU, p = 0.5, as in row 6.11)
for three ways of running SGD, measured side by side in one process:

- loop:    a Python loop over a jitted step (one net);
- scan:    the scanned epoch of ``train.Trainer`` (one net, N steps in one program);
- vmap×5:  five stacked nets in the same scanned epoch (time per step of all five).

and for both internal layouts of ``layers.conv_pool`` (NCHW, the book's, and
NHWC). Compilation is excluded (one warm-up call each). Runs unchanged on
CPU and GPU:

    python -m benchmarks.bench_conv --steps 50          # CPU, small N
    python -m benchmarks.bench_conv --steps 5000        # GPU: one epoch of 50,000 images
"""
import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import costs, layers, train
from nndl_jax.activations import relu

MB = 10


def dropout_net(layout):
    return layers.serial(
        layers.conv_pool((20, 1, 5, 5), (MB, 1, 28, 28), (2, 2), relu, layout=layout),
        layers.conv_pool((40, 20, 5, 5), (MB, 20, 12, 12), (2, 2), relu, layout=layout),
        layers.fully_connected(1000, relu, p_dropout=0.5),
        layers.fully_connected(1000, relu, p_dropout=0.5),
        layers.softmax(10, p_dropout=0.5))


def _block(tree):
    jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def bench(layout, steps, repeats):
    init, apply = dropout_net(layout)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((steps * MB, 784), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, steps * MB).astype(np.int32))
    trainer = train.Trainer(apply, costs.log_likelihood, MB, penalty="l2", shuffle=True)
    init_keys, train_keys = train.seed_keys(range(5))
    params5 = train.init_many(init, init_keys, (784,))
    params1 = jax.tree_util.tree_map(lambda a: a[:1], params5)
    times = {}

    # 1. a Python loop over a jitted step
    step = jax.jit(partial(train.step, apply=apply, cost=costs.log_likelihood,
                           penalty=costs.l2_penalty, optimizer=trainer.optimizer))
    p = train.unstack(params1)[0]
    state = jax.tree_util.tree_map(lambda a: a[0], trainer.init_opt_state(params1, 0.03))
    mask = jnp.ones(MB, bool)
    c = jnp.float32(0.0)

    def loop():
        nonlocal p, state
        for i in range(steps):
            xb, yb = x[i * MB:(i + 1) * MB], y[i * MB:(i + 1) * MB]
            p, state = step(p, state, xb, yb, mask, c, jax.random.fold_in(train_keys[0], i))
        _block(p)

    # 2. and 3. the scanned epoch for K = 1 and K = 5 nets
    def scanned(params):
        k = jax.tree_util.tree_leaves(params)[0].shape[0]
        st = trainer.init_opt_state(params, 0.03)
        params = jax.tree_util.tree_map(jnp.copy, params)
        keys, cs, active = train_keys[:k], jnp.zeros(k, jnp.float32), jnp.ones(k, bool)

        def run():
            nonlocal params, st
            params, st = trainer.epoch(params, st, x, y, keys, cs, active)
            _block(params)
        return run

    for name, fn in (("loop", loop), ("scan", scanned(params1)), ("vmap×5", scanned(params5))):
        fn()  # warm-up: compile
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best / steps
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="mini-batch steps per timing (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timings per case; the best is kept")
    p.add_argument("--layouts", nargs="+", default=list(layers.CONV_LAYOUTS), choices=layers.CONV_LAYOUTS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be positive")
    print(f"device: {jax.devices()[0]} ({jax.default_backend()}), {args.steps} steps of {MB}, "
          f"best of {args.repeats}")
    results = {layout: bench(layout, args.steps, args.repeats) for layout in args.layouts}
    print(f"\n{'layout':<7} {'loop ms/step':>13} {'scan ms/step':>13} {'vmap×5 ms/step':>15} "
          f"{'loop/scan':>10} {'vmap×5/scan':>12} {'per net ×5':>11}")
    for layout, t in results.items():
        print(f"{layout:<7} {1e3 * t['loop']:>13.3f} {1e3 * t['scan']:>13.3f} {1e3 * t['vmap×5']:>15.3f} "
              f"{t['loop'] / t['scan']:>10.2f} {t['vmap×5'] / t['scan']:>12.2f} "
              f"{1e3 * t['vmap×5'] / 5:>11.3f}")
    if len(results) == 2:
        a, b = (results[k]["scan"] for k in layers.CONV_LAYOUTS)
        faster = layers.CONV_LAYOUTS[int(b < a)]
        print(f"\nscanned epoch: {faster} is faster ({min(a, b) * 1e3:.3f} vs {max(a, b) * 1e3:.3f} ms/step)")
    return results


if __name__ == "__main__":
    main()
