"""Seconds per mini-batch step (mini-batch 10) of the book's dropout net
(conv20 → conv40 → FC1000 → FC1000 → softmax, ReLU, p = 0.5, as in row 6.11)
for four ways of running SGD, measured side by side in one process:

- loop:    a Python loop over a jitted step (one net);
- scan:    the scanned epoch of ``train.Trainer`` (one net, N steps in one program);
- vmap×5:  five stacked nets in the same scanned epoch, vmapped (``over_k="vmap"``);
- map×5:   the same five nets one after another in one program (``over_k="map"``);

times for the five nets are per step of all five. Each is run for every
internal layout of ``layers.conv_pool``: NCHW (the book's, gradients by
``jax.grad``), NHWC (``layers.conv2d_nhwc``, whose VJP is written in XLA's
canonical form) and NHWC-jaxgrad (the same layout with ``jax.grad`` of the plain
convolution: what NHWC was before, for comparison). Compilation is excluded
(one warm-up call each). Runs unchanged on CPU and GPU:

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
_CONV2D_NHWC = layers.conv2d_nhwc


LAYOUTS = ("NCHW", "NHWC", "NHWC-jaxgrad")


def dropout_net(layout):
    if layout == "NHWC-jaxgrad":  # conv_pool looks conv2d_nhwc up when it is traced
        layers.conv2d_nhwc = layers._conv_nhwc  # the plain convolution, differentiated by jax.grad
        layout = "NHWC"
    else:
        layers.conv2d_nhwc = _CONV2D_NHWC
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
    trainers = {mode: train.Trainer(apply, costs.log_likelihood, MB, penalty="l2", shuffle=True,
                                    over_k=mode) for mode in ("vmap", "map")}
    trainer = trainers["vmap"]
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

    # 2.-4. the scanned epoch for K = 1 and K = 5 nets
    def scanned(params, trainer=trainer):
        k = jax.tree_util.tree_leaves(params)[0].shape[0]
        st = trainer.init_opt_state(params, 0.03)
        params = jax.tree_util.tree_map(jnp.copy, params)
        keys, cs, active = train_keys[:k], jnp.zeros(k, jnp.float32), jnp.ones(k, bool)

        def run():
            nonlocal params, st
            params, st = trainer.epoch(params, st, x, y, keys, cs, active)
            _block(params)
        return run

    cases = (("loop", loop), ("scan", scanned(params1)), ("vmap×5", scanned(params5)),
             ("map×5", scanned(params5, trainers["map"])))
    for name, fn in cases:
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
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be positive")
    print(f"device: {jax.devices()[0]} ({jax.default_backend()}), {args.steps} steps of {MB}, "
          f"best of {args.repeats}; layout 'auto' is {layers.conv_layout('auto')} here, "
          f"over_k 'auto' is {train.k_axis_mode('auto')}", flush=True)
    results = {}
    for layout in args.layouts:
        results[layout] = bench(layout, args.steps, args.repeats)
        print(f"  {layout}: " + ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in results[layout].items()),
              flush=True)
    layers.conv2d_nhwc = _CONV2D_NHWC
    print(f"\n{'layout':<13} {'loop ms/step':>13} {'scan ms/step':>13} {'vmap×5 ms/step':>15} "
          f"{'map×5 ms/step':>14} {'loop/scan':>10} {'vmap×5/scan':>12} {'map×5/scan':>11}")
    for layout, t in results.items():
        print(f"{layout:<13} {1e3 * t['loop']:>13.3f} {1e3 * t['scan']:>13.3f} {1e3 * t['vmap×5']:>15.3f} "
              f"{1e3 * t['map×5']:>14.3f} {t['loop'] / t['scan']:>10.2f} {t['vmap×5'] / t['scan']:>12.2f} "
              f"{t['map×5'] / t['scan']:>11.2f}")
    best = min(results, key=lambda lay: results[lay]["scan"])
    print(f"\nfastest scanned epoch: {best} ({1e3 * results[best]['scan']:.3f} ms/step); "
          + ", ".join(f"{lay} is {results[lay]['scan'] / results[best]['scan']:.2f}x slower"
                      for lay in results if lay != best))
    return results


if __name__ == "__main__":
    main()
