"""Chapter 5: why are deep neural networks hard to train?

Deeper sigmoid networks (network2's defaults: cross-entropy, weights
N(0, 1/n_in), L2 with λ = 5.0) barely beat one hidden layer (rows 5.1–5.4),
because the gradient vanishes towards the early layers: the norm of ∂C/∂b^l,
averaged over the first 1000 training images, falls by a factor of about 4
per layer at initialization (5.5–5.7) and stays ordered during 500 epochs of
batch gradient descent (5.8, the book's fig/generate_gradient.py). 5.9 is the
bar chart of six neurons' ∂C/∂b per layer, 5.10 the chapter's analytic
bounds: max σ′ = 1/4 and the widest input range over which |w σ′(wa + b)| ≥ 1.

    python -m experiments.chap5            # the full chapter (see --help)
    python -m experiments.chap5 --quick    # CI: small subsets, few epochs

Repeated runs (``--seeds``) are K stacked networks trained as one vmapped
program (``train.fit``); the gradient norms are computed by a jitted, vmapped
function of the params, after every epoch (``on_epoch``'s ``record["params"]``).
"""
import math
import time

import numpy as np

from experiments import checkpoints, driver, progress, report, session, store
from nndl_jax.data import load_mnist

# JAX starts only when a row computes: the functions that train or take gradients
# import it (and the parts of nndl_jax built on it), so `--help` and the row table
# answer without it.

# network2's defaults and the chapter's settings.
ETA, LMBDA, MINI_BATCH, EPOCHS = 0.1, 5.0, 10, 30
GRADIENT_IMAGES, GRADIENT_EPOCHS = 1000, 500  # fig/generate_gradient.py: batch GD on training_data[:1000]
INIT_SEEDS = 32  # the norms at init are cheap: rows 5.5–5.7 average 32 fresh initializations

# The chapter's rows: what each measures, its settings, the book's number(s).
# "direction": which way the measured runs are better; gradient norms have no "best".
ROWS = [
    dict(id="5.1", experiment="[784,30,10] val accuracy (peak of {epochs} epochs)", sizes=[784, 30, 10],
         book=96.48),
    dict(id="5.2", experiment="[784,30,30,10] val accuracy", sizes=[784, 30, 30, 10], book=96.90),
    dict(id="5.3", experiment="[784,30,30,30,10] val accuracy", sizes=[784, 30, 30, 30, 10], book=96.57),
    dict(id="5.4", experiment="[784,30,30,30,30,10] val accuracy", sizes=[784, 30, 30, 30, 30, 10], book=96.53),
    dict(id="5.5", experiment="||dC/db^l|| at init, 2 hidden layers", hidden=2, book=[0.0657, 0.3092]),
    dict(id="5.6", experiment="||dC/db^l|| at init, 3 hidden layers", hidden=3, book=[0.01184, 0.05997, 0.28314]),
    dict(id="5.7", experiment="||dC/db^l|| at init, 4 hidden layers", hidden=4,
         book=[0.00298, 0.01708, 0.06954, 0.28514]),
    dict(id="5.8", experiment="||dC/db^l|| after 500 epochs batch GD (eta 0.1, lmbda 5, mb 1000)",
         book={2: [0.00343, 0.00963], 3: [8.6e-5, 2.2e-4, 1.26e-3], 4: [8.2e-6, 2.6e-5, 1.8e-4, 9.2e-4]}),
    dict(id="5.9", experiment="six neurons' dC/db in [784,30,30,10] at init: mean |.| per layer",
         sizes=[784, 30, 30, 10], neurons=6),
    dict(id="5.10", experiment="max sigma'; widest |w sigma'(wa+b)| >= 1 range",
         book=dict(max_sigma_prime=0.25, w=6.9, width=0.45)),
]
ROW = {r["id"]: r for r in ROWS}
DEPTH_ROWS = ("5.1", "5.2", "5.3", "5.4")
NORM_ROWS = {2: "5.5", 3: "5.6", 4: "5.7"}


# --- the measurements ----------------------------------------------------------

def bias_gradient_norms(params, x, y, *, apply, cost=None):
    """||∂C/∂b^l|| for each hidden layer l, with ∂C/∂b = (1/n) Σ_x ∂C_x/∂b over
    the n examples (the book's get_average_gradient) and ``cost`` (None: the
    cross-entropy). The L2 penalty touches only weights, so it is left out.
    Returns [num_hidden_layers]."""
    import jax.numpy as jnp

    grads = _average_cost_gradient(params, x, y, apply, cost)
    return jnp.stack([jnp.linalg.norm(g["b"]) for g in grads[:-1]])


def bias_gradients(params, x, y, *, apply, cost=None):
    """The averaged ∂C/∂b of every hidden layer (a list of vectors); ``cost``
    None: the cross-entropy."""
    return [g["b"] for g in _average_cost_gradient(params, x, y, apply, cost)[:-1]]


def _average_cost_gradient(params, x, y, apply, cost):
    """∂C/∂params with C the mean of ``cost`` (None: the cross-entropy) over the examples."""
    import jax
    import jax.numpy as jnp

    from nndl_jax import costs, train

    cost = costs.cross_entropy if cost is None else cost
    return jax.grad(lambda p: jnp.mean(train.example_costs(p, x, y, apply=apply, cost=cost)))(params)


def sigmoid_prime_max(num=200_001):
    """max_z σ′(z), on a grid of z in [-10, 10] (the chapter: 1/4, at z = 0)."""
    z = np.linspace(-10.0, 10.0, num)
    s = 1.0 / (1.0 + np.exp(-z))
    return float(np.max(s * (1.0 - s)))


def width_of_large_gradient(w, du=1e-5):
    """The width of the set of inputs a with |w σ′(wa + b)| ≥ 1, measured on a
    grid: with u = wa + b it is (length of {u : σ′(u) ≥ 1/|w|}) / |w|, and b
    only shifts the set. Zero for |w| ≤ 4, where σ′ ≤ 1/4 never reaches 1/|w|.
    ``w`` may be an array of weights."""
    u = np.arange(-10.0, 10.0, du)
    s = 1.0 / (1.0 + np.exp(-u))
    slopes = np.sort(s * (1.0 - s))
    count = slopes.size - np.searchsorted(slopes, 1.0 / np.abs(w), side="left")
    return count * du / np.abs(w)


def width_closed_form(w):
    """The problem's bound (2/|w|) ln(|w|(1 + √(1 − 4/|w|))/2 − 1), for |w| > 4."""
    w = abs(w)
    return 2.0 / w * math.log(w * (1.0 + math.sqrt(1.0 - 4.0 / w)) / 2.0 - 1.0)


def widest_range(ws=None):
    """(|w| at which the width peaks, the peak width), measured on a grid of |w|."""
    ws = np.arange(4.0, 20.0, 0.001) if ws is None else np.asarray(ws)
    widths = width_of_large_gradient(ws)
    i = int(np.argmax(widths))
    return float(ws[i]), float(widths[i])


# --- the experiments -------------------------------------------------------------

def _net(sizes):
    """The chapter's sigmoid network of ``sizes`` as a ``layers.Net`` (its compiled programs are shared)."""
    from nndl_jax import layers
    from nndl_jax.activations import sigmoid

    return layers.mlp_net(sizes, sigmoid, init=layers.default_weight_init)


def depth_accuracy(args, splits, row_id, sizes, n_train, epochs):
    """Train K = --seeds networks of shape ``sizes`` as one program; per-epoch
    validation accuracy [epochs, K]."""
    from nndl_jax import costs, train

    net = _net(sizes)
    init_keys, train_keys = train.seed_keys(driver.seeds(args))
    params = train.init_many(net.init, init_keys, (sizes[0],))
    trainer = train.trainer_for(net, costs.cross_entropy, MINI_BATCH, penalty="l2")
    tr, va = splits.training, splits.validation
    n_val = len(va.y) if not args.quick else min(len(va.y), 1000)
    ckpt = checkpoints.row_checkpoint(args, row_id, {"row": row_id, "sizes": list(sizes),
                                                "seeds": driver.seeds(args), "n_train": n_train})
    show = lambda record: progress.numbers(record["evaluation_accuracy"], "{}") + f" / {n_val}"  # noqa: E731
    _, _, hist = train.fit(trainer, params, (tr.x[:n_train], tr.y[:n_train]), epochs,
                           key=train_keys, eta=ETA, lmbda=LMBDA,
                           evaluation={"evaluation": (va.x[:n_val], va.y[:n_val])},
                           on_epoch=progress.progress(row_id, epochs, show, log=progress.metrics_log(args, row_id)),
                           checkpoint=ckpt)
    return 100.0 * np.asarray(hist["evaluation_accuracy"]) / n_val


def gradient_norms_during_training(args, x, y, hidden, epochs):
    """The book's training_speed experiment: K nets [784, 30×hidden, 10],
    batch gradient descent (one mini-batch of all n images) for ``epochs``
    epochs; ||∂C/∂b^l|| at init and after every epoch: [epochs + 1, K, hidden]."""
    import jax

    from nndl_jax import costs, train

    sizes = [784] + [30] * hidden + [10]
    net = _net(sizes)
    init_keys, train_keys = train.seed_keys(driver.seeds(args))
    params = train.init_many(net.init, init_keys, (784,))
    norms_k = jax.jit(jax.vmap(lambda p: bias_gradient_norms(p, x, y, apply=net.apply)))
    # Full batch: the order inside the one mini-batch does not change the step.
    trainer = train.trainer_for(net, costs.cross_entropy, x.shape[0], penalty="l2", shuffle=False)
    norms = [norms_k(params)]
    show = progress.progress(f"{hidden} hidden layers", epochs, every=max(1, epochs // 5),
                           log=progress.metrics_log(args, f"5.8@{hidden}"),
                           show=lambda record: "mean ||dC/db^l|| " + progress.numbers(np.asarray(norms[-1]).mean(0),
                                                                                     "{:.3g}"))

    def on_epoch(e, record):
        norms.append(norms_k(record["params"]))  # dispatched before the next epoch donates params
        show(e, record)

    train.fit(trainer, params, (x, y), epochs, key=train_keys, eta=ETA, lmbda=LMBDA, on_epoch=on_epoch)
    return np.stack([np.asarray(n) for n in norms])


def norms_at_init(x, y, hidden, seeds):
    """||∂C/∂b^l|| at initialization of [784, 30×hidden, 10] for each seed: [K, hidden]."""
    import jax

    from nndl_jax import train

    net = _net([784] + [30] * hidden + [10])
    init_keys, _ = train.seed_keys(seeds)
    params = train.init_many(net.init, init_keys, (784,))
    return np.asarray(jax.jit(jax.vmap(lambda p: bias_gradient_norms(p, x, y, apply=net.apply)))(params))


def initial_gradient(args, x, y, neurons=6):
    """∂C/∂b of the first ``neurons`` neurons of each hidden layer of
    [784,30,30,10] at init, for each seed: [K, 2, neurons]."""
    import jax

    from nndl_jax import train

    net = _net(ROW["5.9"]["sizes"])
    init_keys, _ = train.seed_keys(driver.seeds(args))
    params = train.init_many(net.init, init_keys, (784,))
    grads = jax.jit(jax.vmap(lambda p: bias_gradients(p, x, y, apply=net.apply)))(params)
    return np.stack([np.asarray(g)[:, :neurons] for g in grads], axis=1)


# --- figures -----------------------------------------------------------------------

def _plot_depths(args, rows):
    """depth_accuracy.png: validation accuracy per epoch of every depth row
    (5.1–5.4) in results.json, this run's and earlier runs'."""
    fig, path = report.figure(args, "depth_accuracy")
    if fig is None:
        return
    ax = fig.gca()
    for r in rows:
        if r["id"] not in DEPTH_ROWS or "per_epoch" not in r:
            continue
        acc = np.asarray(r["per_epoch"]).T                                     # [epochs, seeds]
        e = np.arange(1, acc.shape[0] + 1)
        ax.plot(e, acc.mean(1), label=f"{ROW[r['id']]['sizes']} (book {ROW[r['id']]['book']}%)")
        ax.fill_between(e, acc.min(1), acc.max(1), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)",
           title="Deeper sigmoid nets (mean over seeds, band: min–max)")
    ax.legend(fontsize=8)
    report.save(fig, path)


def _plot_training_speed(args, hidden, norms):
    fig, path = report.figure(args, f"training_speed_{hidden}_layers")
    if fig is None:
        return
    ax = fig.gca()
    book = report.book_curve(f"norms_during_training_{hidden}_layers")
    e = np.arange(norms.shape[0])
    for layer in range(hidden):
        color = f"C{layer}"
        ax.plot(e, norms[:, :, layer].mean(1), color=color, label=f"hidden layer {layer + 1}")
        ax.fill_between(e, norms[:, :, layer].min(1), norms[:, :, layer].max(1), color=color, alpha=0.2)
        if book is not None:
            ax.plot(np.arange(len(book)), [b[layer] for b in book], color=color, ls="--", lw=1,
                    label=f"book, layer {layer + 1}")
    ax.set_yscale("log")
    ax.set(xlabel="epochs of batch gradient descent", ylabel="||dC/db^l||",
           title=f"Speed of learning, {hidden} hidden layers (band: min–max over seeds)")
    ax.legend(fontsize=7, ncol=2)
    report.save(fig, path)


def _plot_initial_gradient(args, measured, book):
    fig, path = report.figure(args, "initial_gradient")
    if fig is None:
        return
    axes = fig.subplots(1, 2, sharey=True)
    n = measured.shape[-1]
    for layer, ax in enumerate(axes):
        ax.bar(np.arange(n) - 0.2, measured[0, layer], width=0.4, label=f"measured (seed {args.seed})")
        if book is not None:
            ax.bar(np.arange(n) + 0.2, book[layer], width=0.4, label="book")
        ax.set(title=f"hidden layer {layer + 1}", xlabel="neuron")
    axes[0].set_ylabel("dC/db at init")
    axes[0].legend(fontsize=8)
    report.save(fig, path)


# --- the rows --------------------------------------------------------------------------

def settings(args, splits):
    """The chapter's settings for this run (shortened with --quick)."""
    return dict(eta=ETA, lmbda=LMBDA, mini_batch_size=MINI_BATCH,
                n_train=1000 if args.quick else len(splits.training.y) if splits else 0,
                epochs=2 if args.quick else EPOCHS, gradient_images=GRADIENT_IMAGES,
                gradient_epochs=5 if args.quick else GRADIENT_EPOCHS)


def depth_units(args, splits, row_id, run):
    """5.1–5.4: the seeds the driver gives of a deeper net trained as one
    program: one unit record a seed (its validation curve), composed by ``compose``."""
    spec = ROW[row_id]
    seeds = driver.seeds(args)
    acc = depth_accuracy(args, splits, row_id, spec["sizes"], run["n_train"], run["epochs"])
    return [dict(row=row_id, seed=s, per_epoch=acc[:, k].tolist(), epochs=run["epochs"])
            for k, s in enumerate(seeds)], {}


def compose(units, results=None):
    """A depth row (5.1–5.4) from its seeds' unit records ({row: [a record a seed]}),
    wherever each was trained: the peak validation accuracy (and its curves)."""
    (row_id, records), = units.items()
    spec, epochs = ROW[row_id], records[0]["epochs"]
    acc = np.asarray([u["per_epoch"] for u in records], dtype=float).T    # [epochs, seeds]
    return [report.row(row_id, spec["experiment"].format(epochs=epochs), spec["book"], acc.max(0),
                       final=report.summarize(acc[-1]), peak_epoch=acc.argmax(0).tolist(), per_epoch=acc.T.tolist(),
                       epochs=epochs, note=f"final epoch: {acc[-1].mean():.2f} ± {acc[-1].std():.2f}%")], {}


def norm_rows(args, x, y, hidden, run):
    """5.5–5.7 (the norms at init, over INIT_SEEDS fresh nets) and 5.8's rows for
    this depth (after ``gradient_epochs`` of batch gradient descent), from one training."""
    t0 = time.time()
    norms = gradient_norms_during_training(args, x, y, hidden, run["gradient_epochs"])
    payload = {f"norms_during_training_{hidden}_layers": report.significant(norms)}  # [epoch, seed, layer]
    rows = []
    row_id = NORM_ROWS[hidden]
    if driver.wanted(args, row_id):
        init_seeds = [args.seed + k for k in range(args.seeds if args.quick else max(INIT_SEEDS, args.seeds))]
        at_init = norms[0] if args.quick else norms_at_init(x, y, hidden, init_seeds)
        payload[f"norms_at_init_{hidden}_layers"] = dict(seeds=init_seeds, norms=at_init.tolist())
        for layer, book in enumerate(ROW[row_id]["book"]):
            rows.append(report.row(f"{row_id}.{layer + 1}", f"{ROW[row_id]['experiment']}: layer {layer + 1}",
                                   book, at_init[:, layer], unit="", direction="none", seconds=time.time() - t0,
                                   note="" if layer else f"over {len(init_seeds)} seeds from --seed; "
                                   f"the {args.seeds} trained nets: "
                                   + ", ".join(f"{v:.4g}" for v in norms[0].mean(0))))
    if driver.wanted(args, "5.8"):
        for layer, book in enumerate(ROW["5.8"]["book"][hidden]):
            rows.append(report.row(f"5.8.{hidden}.{layer + 1}",
                                   f"||dC/db|| after {norms.shape[0] - 1} epochs GD, {hidden}L, layer {layer + 1}",
                                   book if not args.quick else None, norms[-1, :, layer], unit="", direction="none",
                                   note="book: its last record (after 499 epochs)" if layer == 0 else ""))
    _plot_training_speed(args, hidden, norms)
    return rows, payload


def initial_gradient_rows(args, x, y):
    """5.9: six neurons' ∂C/∂b per hidden layer at init, beside the book's bar chart."""
    measured = initial_gradient(args, x, y, ROW["5.9"]["neurons"])
    book = report.book_curve("initial_gradient")
    rows = [report.row(f"5.9.{layer + 1}", f"{ROW['5.9']['experiment']}, layer {layer + 1}",
                       None if book is None else float(np.mean(np.abs(book[layer]))),
                       np.abs(measured[:, layer]).mean(-1), unit="", direction="none") for layer in range(2)]
    _plot_initial_gradient(args, measured, book)
    return rows, {"initial_gradient": measured.tolist()}  # [seed, layer, neuron]


def analytic_rows(args):
    """5.10: the chapter's bounds, measured on grids."""
    book = ROW["5.10"]["book"]
    w_star, width = widest_range()
    return [report.row("5.10.1", "max sigma'(z)", book["max_sigma_prime"], sigmoid_prime_max(), unit="",
                       exact=True),   # the same in --quick: computed, not trained
            report.row("5.10.2", "|w| where the |w sigma'| >= 1 range is widest", book["w"], w_star, unit="",
                       exact=True),
            report.row("5.10.3", "that widest range of a", book["width"], width, unit="",
                       closed_form=width_closed_form(w_star), exact=True)]


def jobs(args, splits, run):
    """The rows asked for, as the driver's jobs."""
    out = [driver.Job(r, [r], lambda a, r=r: depth_units(a, splits, r, run), settings={"epochs": run["epochs"]},
                      compose=compose) for r in DEPTH_ROWS if driver.wanted(args, r)]
    if splits is not None:
        import jax.numpy as jnp

        x = jnp.asarray(splits.training.x[:GRADIENT_IMAGES])
        y = jnp.asarray(splits.training.y[:GRADIENT_IMAGES])
    for hidden, row_id in NORM_ROWS.items():
        at_init, trained = driver.wanted(args, row_id), driver.wanted(args, "5.8")
        if at_init or trained:  # one training of this depth serves both rows
            ids = [f"{row_id}.{k + 1}" for k in range(hidden)] * at_init + [
                f"5.8.{hidden}.{k + 1}" for k in range(hidden)] * trained
            out.append(driver.Job("+".join([row_id] * at_init + [f"5.8@{hidden}"] * trained), ids,
                                  lambda a, h=hidden: norm_rows(a, x, y, h, run),
                                  settings={"gradient_epochs": run["gradient_epochs"]}))
    if driver.wanted(args, "5.9"):
        out.append(driver.Job("5.9", ["5.9.1", "5.9.2"], lambda a: initial_gradient_rows(a, x, y)))
    if driver.wanted(args, "5.10"):
        out.append(driver.Job("5.10", ["5.10.1", "5.10.2", "5.10.3"], analytic_rows))
    return driver.asked_jobs(args, out)


def planned_jobs(args):
    """The jobs asked for, listed without data (for ``--part`` and ``--plan``)."""
    return jobs(args, None, settings(args, None))


def run(args):
    need_data = any(driver.wanted(args, r["id"]) for r in ROWS if r["id"] != "5.10")
    progress.say_start(args, loading="MNIST" if need_data else None)
    splits = load_mnist(args.data_dir) if need_data else None
    run = settings(args, splits)
    rows = []
    for job in jobs(args, splits, run):
        rows += driver.run_jobs(args, [job])
        if job.id in DEPTH_ROWS:
            _plot_depths(args, store.recorded_rows(args))
    return rows, {"settings": run}


def command_line(argv=None, **how):
    """The chapter's command line parsed (``driver.parse_args``); ``how``:
    ``plan_only`` (for the planner: parsed, nothing started), ``book_plan``, ``run_session``."""
    titles = {r["id"]: r["experiment"].replace(" (peak of {epochs} epochs)", ", peak") for r in ROWS}
    return driver.parse_args("chap5", __doc__, argv, row_ids=titles, **how)


def main(argv=None, book_plan=None, run_session=None):
    args = command_line(argv, book_plan=book_plan, run_session=run_session)
    rows, payload = run(args)
    return driver.finish(args, rows, **payload)


if __name__ == "__main__":
    raise SystemExit(session.main_entry(main))
