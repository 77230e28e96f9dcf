"""Seconds per epoch of the book's chapter-1 training, several ways, side by side.

    python -m benchmarks.bench_epoch [--quick] [--repeats 3] [--json FILE]

[784,30,10], sigmoid, quadratic cost, η = 3.0, mini-batches of 10, one epoch
over the 50,000 training images (5,000 steps). Timed in one process:

  scan        the scanned epoch: ``train.Trainer`` with K = 1 (one compiled
              program per epoch, mini-batches gathered on the device)
  scan-xTdz   the same, with every layer's weight gradient made as xᵀ·dz
              (``layers.weight_gradient`` before it chose by the layer's width)
  scan-pre    a variant for comparison: the data permuted once per epoch and
              reshaped to [batches, 10, 784], the scan running over that
              (no gather inside the step); same mini-batches as ``scan``
  loop        a Python loop over a jitted ``train.step`` (the mini-batch is
              sliced on the device inside the jitted step; one dispatch per step)
  numpy-ex    NumPy float64, per example: ``backprop.backprop_loop`` (the book's
              network.py algorithm), timed on a fraction of the epoch and scaled
  numpy-mat   NumPy, matrix-based over the mini-batch: ``backprop.sgd_epoch``,
              in float64 (the book's dtype) and float32
  vmap-8      the scanned epoch of 8 networks at once (K = 8); the time per
              network is the epoch's time / 8
  vmap-8-dev  the same 8 networks split over two CPU devices, 4 vmapped on
              each (``devices.over_devices(..., within="vmap")``)
  map-8-dev   the same 8 networks through ``Trainer(over_k="devices")``: 4 on
              each device, one after another
  --k-axis    only the ways of running K = 8 nets, timed in interleaved rounds
              with ratios (``k_axis_rows``): the trainer's vmap on one device
              (what fully connected rows run: the same numbers on any layout),
              the same vmap with the K axis sharded over two devices (before
              issue 31: numbers that depend on the device count), and the
              per-net program over two devices (``over_k="devices"``)
  book-call   the book's own call, ``network.Network([784, 30, 10]).SGD(
              training_data, 1, 10, 3.0)`` with the book's list of 50,000
              ``(x, y)`` pairs: a fresh network each time, so it includes
              converting the pairs and compiling the epoch
  book-again  a second ``SGD`` call on the same network (nothing to compile)
  as-arrays   ``data.as_arrays`` of the list of pairs alone (inside both)

Compiles are warmed up before timing; each figure is the median of
``--repeats`` runs. ``--quick`` times a fraction of the epoch (5,000 images)
and scales to 50,000 (the book-call rows then scale their fixed costs too). Runs unchanged on a
GPU (the NumPy rows stay on the CPU).
XLA flags come from the environment, e.g.
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``.
"""
import argparse
import contextlib
import io
import json
import os
import platform
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import backprop, costs, devices, layers, mnist_loader, network, train
from nndl_jax.activations import sigmoid
from nndl_jax.data import as_arrays, load_mnist

SIZES, M, ETA = (784, 30, 10), 10, 3.0


def median_time(fn, repeats):
    """Median wall time of ``fn()`` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def epoch_prepermuted(params, opt_state, x, y, key, c, *, apply, cost, optimizer, m):
    """The epoch with the data permuted once and scanned over as [batches, m, 784]
    (n divisible by m here, so no mask is needed beyond all-ones)."""
    shuffle_key, dropout_key = jax.random.split(key)
    order = jax.random.permutation(shuffle_key, x.shape[0])
    xb = x[order].reshape(-1, m, x.shape[1])
    yb = y[order].reshape(-1, m)
    mask = jnp.ones((m,), bool)

    def body(carry, batch):
        i, bx, by = batch
        return train.step(*carry, bx, by, mask, c, jax.random.fold_in(dropout_key, i), apply=apply,
                          cost=cost, penalty=None, optimizer=optimizer), None

    carry, _ = jax.lax.scan(body, (params, opt_state), (jnp.arange(xb.shape[0]), xb, yb))
    return carry


@contextlib.contextmanager
def every_weight_gradient_as_xT_dz():
    """While tracing: ``layers.weight_gradient`` makes every layer's gradient
    as xᵀ·dz, the layout it used for every width before ``NARROW_LAYER``
    (only for comparison; the layers read it when traced)."""
    saved = layers.NARROW_LAYER
    layers.NARROW_LAYER = 0
    try:
        yield
    finally:
        layers.NARROW_LAYER = saved


def k_axis_epoch(mode, placed, x, y, k=8):
    """A function running one epoch of K [784,30,10] nets through ``train.Trainer(over_k=mode)``:
    with ``placed``, the K axis sharded over every device (``devices.Layout``), else as
    ``train.fit`` lays it out for the mode (``devices.layout_for``)."""
    init, apply = layers.mlp(SIZES, sigmoid, init=layers.large_weight_init)
    init_keys, train_keys = train.seed_keys(range(k))
    trainer = train.Trainer(apply, costs.quadratic, M, over_k=mode)
    params = train.init_many(init, init_keys, (784,))
    layout = devices.Layout(k, tuple(jax.devices())) if placed else devices.layout_for(k, mode=trainer.k_mode)
    state = list(layout.place((params, trainer.init_opt_state(params, ETA), train_keys, jnp.zeros(k),
                               jnp.ones(k, bool))))

    def run():
        state[0], state[1] = block(trainer.epoch(state[0], state[1], x, y, *state[2:]))
    return run


def k_axis_rows(args):
    """Seconds per network and epoch of K = 8 nets, each way, interleaved over
    ``--repeats`` rounds (a shared machine: compare the ratios)."""
    data = load_mnist(args.data_dir).training
    n = 5000 if args.quick else len(data.y)
    x, y = jnp.asarray(data.x[:n]), jnp.asarray(data.y[:n])
    cases = {"vmap-8 (1 device)": k_axis_epoch("vmap", False, x, y),
             "vmap-8 sharded (before)": k_axis_epoch("vmap", True, x, y),
             "per-net, devices": k_axis_epoch("devices", False, x, y)}
    times = {name: [] for name in cases}
    for run in cases.values():
        run()                                   # compile
    for _ in range(args.repeats):
        for name, run in cases.items():
            times[name].append(median_time(run, 1) * len(data.y) / n / 8)
    print(f"jax {jax.__version__}, {len(jax.devices())} CPU devices, load average {os.getloadavg()[0]:.1f}; "
          f"{n} images timed, scaled to 50,000; median of {args.repeats} interleaved rounds")
    base = float(np.median(times["vmap-8 sharded (before)"]))
    for name, t in times.items():
        print(f"{name:<26} {float(np.median(t)):8.3f} s/epoch per net  {float(np.median(t)) / base:5.2f}x before")
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="time 5,000 images and scale (CI)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median)")
    p.add_argument("--numpy-batches", type=int, default=1000,
                   help="mini-batches timed for the per-example NumPy row (scaled to the epoch)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--devices", type=int, default=2, help="CPU devices for vmap-8-dev (default 2)")
    p.add_argument("--k-axis", action="store_true", help="only the K = 8 rows, interleaved, with ratios")
    args = p.parse_args(argv)
    devices.use_cpu_devices(args.devices)  # before JAX starts; K = 1 runs on the first
    if args.k_axis:
        return k_axis_rows(args)

    data = load_mnist(args.data_dir).training
    n = 5000 if args.quick else len(data.y)
    scale = len(data.y) / n                         # figures are per 50,000-image epoch
    numpy_batches = min(100 if args.quick else args.numpy_batches, n // M)
    x_np, y_np = data.x[:n], data.y[:n]
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"os.cpu_count() = {os.cpu_count()}, jax {jax.__version__}, devices {jax.devices()}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"[784,30,10], mb {M}, η {ETA}: timing {n} images ({n // M} steps), "
          f"median of {args.repeats}, scaled to a 50,000-image epoch\n", flush=True)

    init, apply = layers.mlp(SIZES, sigmoid, init=layers.large_weight_init)
    init_keys, train_keys = train.seed_keys(range(8))
    trainer = train.Trainer(apply, costs.quadratic, M)
    results = {}

    # (1) the scanned epoch, K = 1; (1a) the same with every weight gradient as xᵀ·dz
    # (its own Trainer, traced while patched); (5) K = 8.
    for name, k, trace_as in (("scan", 1, contextlib.nullcontext), ("scan-xTdz", 1, every_weight_gradient_as_xT_dz),
                              ("vmap-8", 8, contextlib.nullcontext)):
        with trace_as():
            tr = trainer if name != "scan-xTdz" else train.Trainer(apply, costs.quadratic, M)
            params = train.init_many(init, init_keys[:k], (784,))
            state = [params, tr.init_opt_state(params, ETA)]
            c, active = jnp.zeros(k), jnp.ones(k, bool)

            def run_scan(k=k, tr=tr, state=state, c=c, active=active):
                state[0], state[1] = block(tr.epoch(state[0], state[1], x, y, train_keys[:k], c, active))

            run_scan()                              # compile
        results[name] = median_time(run_scan, args.repeats) * scale / k

    # (5b) 8 nets over the CPU devices, vmapped within each.
    if len(jax.devices()) >= 2:
        one_epoch = partial(train.epoch, apply=apply, cost=costs.quadratic, penalty=None,
                            optimizer=trainer.optimizer, mini_batch_size=M, shuffle=True)
        spread = jax.jit(devices.over_devices(one_epoch, (0, 0, None, None, 0, 0),
                                              within="vmap"), donate_argnums=(0, 1))
        params = train.init_many(init, init_keys, (784,))
        dev = list(devices.layout_for(8).place((params, trainer.init_opt_state(params, ETA), train_keys,
                                        jnp.zeros(8))))

        def run_dev():
            dev[0], dev[1] = block(spread(dev[0], dev[1], x, y, dev[2], dev[3]))

        run_dev()
        results["vmap-8-dev"] = median_time(run_dev, args.repeats) * scale / 8

        # (5c) the trainer's over_k="devices": 4 nets one after another on each device.
        by_device = train.Trainer(apply, costs.quadratic, M, over_k="devices")
        dev_map = list(devices.layout_for(8).place((params, by_device.init_opt_state(params, ETA), train_keys,
                                            jnp.zeros(8), jnp.ones(8, bool))))

        def run_dev_map():
            dev_map[0], dev_map[1] = block(by_device.epoch(dev_map[0], dev_map[1], x, y, *dev_map[2:]))

        run_dev_map()
        results["map-8-dev"] = median_time(run_dev_map, args.repeats) * scale / 8

    # (1b) the pre-permuted scan.
    one = partial(epoch_prepermuted, apply=apply, cost=costs.quadratic, optimizer=trainer.optimizer, m=M)
    pre = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0, 0)), donate_argnums=(0, 1))
    params = train.init_many(init, init_keys[:1], (784,))
    state = [params, trainer.init_opt_state(params, ETA)]

    def run_pre():
        state[0], state[1] = block(pre(state[0], state[1], x, y, train_keys[:1], jnp.zeros(1)))

    run_pre()
    results["scan-pre"] = median_time(run_pre, args.repeats) * scale

    # (2) a Python loop over a jitted step; the mini-batch is gathered inside the step.
    single = jax.tree_util.tree_map(lambda a: a[0], train.init_many(init, init_keys[:1], (784,)))
    ref64 = [{"w": np.asarray(q["w"], np.float64), "b": np.asarray(q["b"], np.float64)} for q in single]
    opt1 = trainer.optimizer.init(single)
    opt1.hyperparams["learning_rate"] = jnp.asarray(ETA, jnp.float32)

    @partial(jax.jit, donate_argnums=(0, 1))
    def step_i(params, opt_state, idx, mask, i):
        return train.step(params, opt_state, x[idx[i]], y[idx[i]], mask[i], jnp.float32(0), None,
                          apply=apply, cost=costs.quadratic, penalty=None, optimizer=trainer.optimizer)

    batches = jax.jit(partial(train.minibatch_indices, n, M, shuffle=True))
    loop_state = [single, opt1]

    def run_loop():
        idx, mask = batches(jax.random.key(0))
        p_, o_ = loop_state
        for i in range(idx.shape[0]):
            p_, o_ = step_i(p_, o_, idx, mask, i)
        loop_state[0], loop_state[1] = block((p_, o_))

    run_loop()
    results["loop"] = median_time(run_loop, args.repeats) * scale

    # (3) and (4): the NumPy references (the same initial network, dataset order).
    onehot = np.eye(10)[y_np]

    def run_example():
        params_ = ref64
        for k in range(0, numpy_batches * M, M):
            grads = backprop.backprop_loop(params_, x_np[k:k + M].astype(np.float64), onehot[k:k + M])
            params_ = [{key: q[key] - ETA * g[key] for key in q} for q, g in zip(params_, grads)]

    results["numpy-ex"] = median_time(run_example, 1) * (len(data.y) / M) / numpy_batches
    for dtype, name in ((np.float64, "numpy-mat"), (np.float32, "numpy-mat-f32")):
        ref = [{key: v.astype(dtype) for key, v in q.items()} for q in ref64]
        xd, yd = x_np.astype(dtype), onehot.astype(dtype)
        results[name] = median_time(lambda ref=ref, xd=xd, yd=yd, dtype=dtype:
                                    backprop.sgd_epoch(ref, xd, yd, dtype(ETA), M),
                                    max(1, args.repeats // 2 if not args.quick else args.repeats)) * scale

    # (6) the book's call on the book's list of pairs.
    pairs = mnist_loader.load_data_wrapper(args.data_dir)[0][:n]

    def book_call(net=None):
        with contextlib.redirect_stdout(io.StringIO()):  # "Epoch 0 complete"
            (net or network.Network([784, 30, 10])).SGD(pairs, 1, 10, 3.0)

    book_call()                                     # JAX's own first-use costs
    results["book-call"] = median_time(book_call, args.repeats) * scale
    net = network.Network([784, 30, 10])
    book_call(net)
    results["book-again"] = median_time(lambda: book_call(net), args.repeats) * scale
    results["as-arrays"] = median_time(lambda: as_arrays(pairs), args.repeats) * scale

    labels = {
        "scan": "scanned epoch, train.Trainer K=1",
        "scan-xTdz": "the same, every weight gradient as xT.dz (before)",
        "scan-pre": "scanned epoch, data pre-permuted [batches,10,784]",
        "loop": "Python loop over a jitted train.step",
        "numpy-ex": f"NumPy f64 per example (book; {numpy_batches} batches timed, scaled)",
        "numpy-mat": "NumPy f64 matrix-based (backprop.sgd_epoch)",
        "numpy-mat-f32": "NumPy f32 matrix-based (backprop.sgd_epoch)",
        "vmap-8": "scanned epoch of 8 nets vmapped, per network",
        "vmap-8-dev": "8 nets, 4 vmapped on each of 2 CPU devices, per network",
        "map-8-dev": "8 nets, Trainer(over_k='devices'): 4 in turn on each device",
        "book-call": "Network([784,30,10]).SGD(pairs, 1, 10, 3.0), fresh net",
        "book-again": "the same net's second SGD call (no compile)",
        "as-arrays": "data.as_arrays(list of 50,000 pairs) alone",
    }
    print(f"{'row':<14} {'what':<62} {'s/epoch':>9} {'÷ scan':>8}")
    for name, label in labels.items():
        if name in results:
            print(f"{name:<14} {label:<62} {results[name]:>9.3f} {results[name] / results['scan']:>8.2f}")
    print(f"\nscan is {results['numpy-ex'] / results['scan']:.1f}x faster than NumPy per example "
          f"(target >= 25; {results['numpy-ex'] / results['scan-xTdz']:.1f}x with every weight gradient "
          f"as xT.dz), {results['numpy-mat'] / results['scan']:.1f}x than NumPy matrix f64 "
          f"(target > 1), {results['loop'] / results['scan']:.1f}x than the Python loop (target >= 2)")
    print(f"the book's call is {results['numpy-ex'] / results['book-call']:.1f}x faster than NumPy per "
          f"example with a fresh net (compile included), {results['numpy-ex'] / results['book-again']:.1f}x "
          f"on its second call (target >= 25); 8 stacked nets per network: "
          f"{results['vmap-8'] / results['scan']:.2f}x one net's time, over 2 devices "
          f"{results.get('vmap-8-dev', float('nan')) / results['scan']:.2f}x vmapped within each, "
          f"{results.get('map-8-dev', float('nan')) / results['scan']:.2f}x in turn (target <= 0.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds_per_epoch": results, "images_timed": n, "quick": args.quick,
                       "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                       "xla_flags": os.environ.get("XLA_FLAGS", ""), "repeats": args.repeats}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
