"""Chapter 3: improving the way neural networks learn.

    python -m experiments.chap3 [--quick] [--only 3.2 3.4 ...] [--seeds 3] [--out DIR]

The single sigmoid neuron that learns slowly with the quadratic cost (3.1),
then the book's network2 runs: cross-entropy, overfitting on 1,000 images, L2
regularization, the two weight initializations (30 and 100 hidden neurons),
several learning rates, more training data (with the SVM beside it), the
hyper-parameter walk-through, early stopping (no-improvement-in-10, 20, 50)
and the learning-rate schedule; and the chapter's exercises L1 regularization
(a λ sweep against λ = 0) and momentum (a μ sweep). Every row trains its runs
(seeds, and where the book compares settings, the settings too) as K stacked
networks in one vmapped program (``train.fit``).

A row trained with seeds is made of units, one a seed (``3.4@12345678``,
``driver.Job``): the seeds one process holds train side by side as above,
each seed's record (its per-epoch curves) goes into results.json's
``"units"``, and the row (mean ± sd, best of k, the per-seed lists and
curves) is composed from them by ``compose`` wherever they meet: at the end of
a run, in ``nndl-jax merge`` of parts that trained some seeds each, in a
report. More data (3.14@n, 3.15@n) and early stopping (3.20@n) stay whole
jobs, one per size or n. The figures are drawn from the rows (``redraw``), so
merge draws them again from the merged rows.

3.1's stall is measured by a stated rule (``stall_epochs``): the first epoch
whose fall in cost is at least half the largest per-epoch fall of the run.

Accuracies are the best epoch's (the book quotes peaks, "95.42 percent at its
peak"); the final epoch's value is recorded beside it in the JSON. Each row
says whether it is measured on the test set or the validation set, as the book
did. Rows 3.2-3.9 use ``large_weight_initializer`` (N(0, 1)) as the book's
text does until the weight-initialization section; later rows use network2's
default N(0, 1/n_in).

--quick runs every row through the same code on 500 training images, 500
evaluation images and a few epochs (more_data: two sizes, 3,000 examples each
instead of 1,500,000); its numbers say nothing about the book's. 3.1 (one
neuron, 300 steps) runs at the book's setting in --quick too.

--x64 computes in float64 throughout (data, params, η, λ), as the book's NumPy
code does.

--book-seed S replays the rows whose book curves come from seeded scripts
(3.4-3.7: fig/overfitting.py; 3.10, 3.10-100: weight_initialization.py; 3.18:
multiple_eta.py; 3.14: more_data.py) with the book's own random streams from
seed S, in float64 (--book-seed implies --x64), as rows ``<row>@book``
(``experiments/book_replay.py``): jobs of the row driver like every other row
(a checkpoint every epoch, --resume / --restart, --part, --plan). Only those
rows are replayed: --only with another row and --book-seed is refused.
"""
import hashlib
import json

import numpy as np

from experiments import book_replay, checkpoints, driver, progress, report, session, store
from nndl_jax.data import N_TEST, N_TRAIN, N_VALIDATION, Dataset, load_mnist

# JAX starts only when a row trains: train_configs, _net, train_neuron and run_neuron
# import it (and the parts of nndl_jax built on it), so `--help` and the row table
# answer without it.

# The book's rows. n_train None: all 50,000 training images. eval: the set the
# book measured on. configs: settings trained side by side (× seeds) in one program.
ROWS = [
    dict(id="3.1", kind="neuron", what="one sigmoid neuron, input 1 → target 0: the learning slowdown",
         epochs=300, configs=[dict(cost="quadratic", eta=0.15, w=0.6, b=0.9, quote="output"),
                              dict(cost="quadratic", eta=0.15, w=2.0, b=2.0, quote="stall"),
                              dict(cost="cross_entropy", eta=0.005, w=0.6, b=0.9, quote="output"),
                              dict(cost="cross_entropy", eta=0.005, w=2.0, b=2.0, quote="stall")],
         book={("quadratic", "output"): 0.09, ("quadratic", "stall"): 150}, book_start={0.6: 0.82, 2.0: 0.98}),
    dict(id="3.2", kind="accuracy", what="cross-entropy [784,30,10], η 0.5, 30 epochs, large init (test)",
         sizes=[784, 30, 10], epochs=30, eval="test", configs=[dict(eta=0.5, lmbda=0.0, init="large")],
         book=95.49, also={"3.5": ("same run: training accuracy (book 97.86 %), test peak 95.33 %", 97.86)}),
    dict(id="3.3", kind="accuracy", what="cross-entropy [784,100,10], η 0.5, 30 epochs, large init (test)",
         sizes=[784, 100, 10], epochs=30, eval="test", configs=[dict(eta=0.5, lmbda=0.0, init="large")],
         book=96.82),
    dict(id="3.4", kind="curves", what="overfitting: 1,000 images, 400 epochs, η 0.5, λ 0 (test, peak)",
         sizes=[784, 30, 10], epochs=400, n_train=1000, eval="test",
         configs=[dict(eta=0.5, lmbda=0.0, init="large")], book=82.27, curve="overfitting",
         hint_peak=" (book ~280)", hint_cost=" (book ~15)"),
    dict(id="3.6", kind="curves", what="L2 on 1,000 images: λ 0.1, 400 epochs, η 0.5 (test, peak)",
         sizes=[784, 30, 10], epochs=400, n_train=1000, eval="test",
         configs=[dict(eta=0.5, lmbda=0.1, init="large")], book=87.1, curve="regularized"),
    dict(id="3.7", kind="accuracy", what="L2 full data: λ 5.0, η 0.5, 30 epochs, [784,30,10] (test)",
         sizes=[784, 30, 10], epochs=30, eval="test", configs=[dict(eta=0.5, lmbda=5.0, init="large")],
         book=96.49),
    dict(id="3.8", kind="accuracy", what="[784,100,10], λ 5.0, η 0.5, 30 epochs (validation)",
         sizes=[784, 100, 10], epochs=30, eval="validation",
         configs=[dict(eta=0.5, lmbda=5.0, init="large")], book=97.92),
    dict(id="3.9", kind="accuracy", what="[784,100,10], λ 5.0, η 0.1, 60 epochs (validation)",
         sizes=[784, 100, 10], epochs=60, eval="validation",
         configs=[dict(eta=0.1, lmbda=5.0, init="large")], book=98.04),
    dict(id="3.10", kind="weight_init", what="weight init [784,30,10], η 0.1, λ 5.0, 30 epochs (validation)",
         sizes=[784, 30, 10], epochs=30, eval="validation",
         configs=[dict(eta=0.1, lmbda=5.0, init="default"), dict(eta=0.1, lmbda=5.0, init="large")],
         book={"default": {"epoch 1": 92.70, "final": 96.50}, "large": {"epoch 1": 86.43, "final": 96.37}},
         curve="weight_initialization_30"),
    dict(id="3.10-100", kind="weight_init", what="weight init [784,100,10], η 0.1, λ 5.0, 30 epochs (validation)",
         sizes=[784, 100, 10], epochs=30, eval="validation", label=" [784,100,10]",
         configs=[dict(eta=0.1, lmbda=5.0, init="default"), dict(eta=0.1, lmbda=5.0, init="large")],
         book={"default": {"epoch 1": 92.95, "final": 97.81}, "large": {"epoch 1": 89.94, "final": 97.42}},
         curve="weight_initialization_100"),
    dict(id="3.12", kind="sweep", sweep="lmbda", penalty="l1",
         what="L1 regularization: λ sweep against λ 0, [784,30,10], η 0.5, 30 epochs (validation)",
         sizes=[784, 30, 10], epochs=30, eval="validation", figure="l1_sweep",
         configs=[dict(eta=0.5, lmbda=lmbda, init="default") for lmbda in (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)]),
    dict(id="3.18", kind="multiple_eta", what="training cost, η ∈ {0.025, 0.25, 2.5}, λ 5.0, 30 epochs",
         sizes=[784, 30, 10], epochs=30, eval=None,
         configs=[dict(eta=e, lmbda=5.0, init="default") for e in (0.025, 0.25, 2.5)],
         book=[0.339, 0.33, 0.861], curve="multiple_eta"),
    dict(id="3.14", kind="more_data", what="more data: validation accuracy vs training-set size",
         sizes=[784, 30, 10], eval="validation", examples=1_500_000, eta=0.5, init="large",
         train_sizes=[100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000],
         book=[69.09, 76.37, 85.29, 88.85, 91.27, 93.24, 94.89, 95.85, 95.97], curve="more_data"),
    dict(id="3.15", kind="svm", what="more data: SVC(gamma='auto') validation accuracy vs size",
         eval="validation", train_sizes=[100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000],
         book=[25.07, 48.93, 75.13, 83.87, 88.49, 91.46, 92.45, 93.47, 94.48], curve="more_data_svm"),
    dict(id="3.16", kind="transcript", what="walk-through: [784,30,10], η 10, λ 1000, full data (validation)",
         sizes=[784, 30, 10], epochs=30, eval="validation",
         configs=[dict(eta=10.0, lmbda=1000.0, init="default")], book={"a": [1030, 990, 1009, 967]},
         book_of=10000),
    dict(id="3.17", kind="transcript", what="walk-through: [784,10], 1,000 images, validation[:100]",
         sizes=[784, 10], epochs=30, n_train=1000, n_eval=100, eval="validation",
         configs=[dict(name="a", eta=10.0, lmbda=1000.0, init="default"),
                  dict(name="b", eta=10.0, lmbda=20.0, init="default"),
                  dict(name="c", eta=100.0, lmbda=20.0, init="default"),
                  dict(name="d", eta=1.0, lmbda=20.0, init="default")],
         book={"a": [10, 10, 10], "b": [12, 14, 25, 18], "c": [10, 10, 10], "d": [62, 42, 43, 61]},
         book_of=100),
    dict(id="3.20", kind="stopping", what="early stopping, no-improvement-in-n, n = 10, 20, 50, η 0.5, λ 5.0 (val)",
         sizes=[784, 30, 10], epochs=400, eval="validation", early_stopping_n=(10, 20, 50),
         configs=[dict(eta=0.5, lmbda=5.0, init="default")], book=None),
    dict(id="3.21", kind="stopping", what="schedule: halve η on no-improvement-in-10 until η/128 (val)",
         sizes=[784, 30, 10], epochs=400, eval="validation", schedule_n=10,
         configs=[dict(eta=0.5, lmbda=5.0, init="default")], book=None),
    dict(id="3.22", kind="sweep", sweep="momentum",
         what="momentum SGD: μ sweep, [784,30,10], η 0.1, λ 5.0, 30 epochs (validation)",
         sizes=[784, 30, 10], epochs=30, eval="validation", figure="momentum_sweep",
         configs=[dict(eta=0.1, lmbda=5.0, init="default", momentum=mu) for mu in (0.0, 0.25, 0.5, 0.75, 0.9)]),
]

ROW = {spec["id"]: spec for spec in ROWS}

# --quick: sizes chosen so that most rows share one compiled program (500 images).
QUICK = dict(n_train=500, n_eval=500, epochs=3, long_epochs=6, examples=3000, train_sizes=[100, 500],
             svm_sizes=[100, 300], stop_epochs=12)


# --- data and training ---------------------------------------------------------------

def _subset(d, n):
    return d if n is None or n >= len(d.y) else Dataset(d.x[:n], d.y[:n])


def row_sizes(quick, spec):
    """The most training and evaluation images a row uses (None: the whole
    set), cut down in --quick mode."""
    n_train, n_eval = spec.get("n_train"), spec.get("n_eval")
    if quick:
        n_train = min(n_train or QUICK["n_train"], QUICK["n_train"])
        n_eval = min(n_eval or QUICK["n_eval"], QUICK["n_eval"])
    return n_train, n_eval


def row_data(args, splits, spec):
    """(training, evaluation) for a row, cut down in --quick mode."""
    n_train, n_eval = row_sizes(args.quick, spec)
    ev = None if spec.get("eval") is None else _subset(getattr(splits, spec["eval"]), n_eval)
    return _subset(splits.training, n_train), ev


def recorded_sizes(quick, spec):
    """(training, evaluation) images of a recorded row, as ``row_data`` cut
    MNIST's splits for it: what its curves of counts are out of."""
    n_train, n_eval = row_sizes(quick, spec)
    whole = {"test": N_TEST, "validation": N_VALIDATION}.get(spec.get("eval"))
    return min(n_train or N_TRAIN, N_TRAIN), None if whole is None else min(n_eval or whole, whole)


def row_epochs(args, spec):
    if not args.quick:
        return spec["epochs"]
    if "early_stopping_n" in spec or "schedule_n" in spec:
        return QUICK["stop_epochs"]
    return QUICK["long_epochs"] if spec["epochs"] > 100 else QUICK["epochs"]


MONITORS = ("evaluation_cost", "evaluation_accuracy", "training_cost", "training_accuracy")


def metrics_name(spec):
    """The name of a training's per-epoch log (``OUT/metrics/<name>.jsonl``):
    the row's id, or the table's id of one momentum of the μ sweep (3.22@0.5),
    each trained apart."""
    return spec["id"] + (f"@{spec['momentum']:g}" if spec.get("sweep") == "momentum" else "")


def train_configs(args, spec, training, evaluation, epochs, monitor, final_eval=None,
                  early_stopping_n=0, schedule_n=0):
    """Train every config of ``spec`` × every seed as one stacked program
    (``train.fit``, checkpointed every epoch under the row's id).

    ``monitor``: the sets whose accuracy and cost are recorded every epoch, by
    metric name ("evaluation_accuracy", "training_cost", ...). Returns the
    History's arrays reshaped to [epochs, configs, seeds] (and with
    ``final_eval``, "final_accuracy" [configs, seeds]: the number correct on
    it after the last epoch), the stop epochs [configs, seeds] and the seeds."""
    import jax
    import jax.numpy as jnp

    from nndl_jax import costs, layers, train
    from nndl_jax.activations import sigmoid

    seeds = driver.seeds(args)
    configs = spec["configs"]
    init_keys, train_keys = train.seed_keys(seeds)
    params = [train.init_many(layers.mlp_net(spec["sizes"], sigmoid, init=layers.INITIALIZERS[c["init"]]).init,
                              init_keys, (spec["sizes"][0],)) for c in configs]
    params = jax.tree_util.tree_map(lambda *p: jnp.concatenate(p), *params)
    per_net = lambda name: np.repeat([c[name] for c in configs], len(seeds))  # noqa: E731
    trainer = train.trainer_for(layers.mlp_net(spec["sizes"], sigmoid), costs.cross_entropy, 10,
                                penalty=spec.get("penalty", "l2"), momentum=spec.get("momentum", 0.0))
    sets = {name: data for name, data in (("evaluation", evaluation), ("training", training))
            if any(m.startswith(name) for m in monitor) or (name == "evaluation" and data is not None
                                                            and (early_stopping_n or schedule_n))}
    rules = ([train.early_stopping(early_stopping_n)] if early_stopping_n else []) + (
        [train.plateau_schedule(schedule_n)] if schedule_n else [])
    of = len(evaluation.y) if evaluation is not None else None
    lmbda = jnp.asarray(per_net("lmbda"), jax.tree_util.tree_leaves(params)[0].dtype)  # float64 with --x64
    def show(record):
        if "evaluation_accuracy" in record:
            return "evaluation_accuracy " + progress.numbers(record["evaluation_accuracy"], "{}") + f" / {of}"
        if "training_cost" in record:
            return "training_cost " + progress.numbers(record["training_cost"], "{:.4g}")
        return ""
    checkpoint_name = f"{spec['id']}@{hashlib.sha1(json.dumps(configs, sort_keys=True).encode()).hexdigest()[:8]}"
    ckpt = checkpoints.row_checkpoint(args, checkpoint_name, {"row": spec["id"], "sizes": list(spec["sizes"]),
                                                         "configs": configs, "seeds": seeds})
    params, _, hist = train.fit(
        trainer, params, training, epochs, key=jnp.concatenate([train_keys] * len(configs)),
        eta=per_net("eta"), lmbda=lmbda, evaluation=sets, rules=rules,
        on_epoch=progress.progress(spec["id"], epochs, show, every=max(1, epochs // 30),
                                 log=progress.metrics_log(args, metrics_name(spec))),
        checkpoint=ckpt)
    shape = (len(configs), len(seeds))
    # keyed by the checkpoint's folder: "3.2@<configs>", or "3.2@<seeds>@<configs>" for the seeds of a part
    driver.add_payload(args, store.divergence(ckpt.path.parent.name, hist.diverged_at))
    arrays = {k: (v.reshape((len(v),) + shape) if v.size else v) for k, v in hist.as_arrays().items()}
    if final_eval is not None:
        correct, _ = trainer.evaluate(params, jnp.asarray(final_eval.x, lmbda.dtype),
                                      jnp.asarray(final_eval.y), lmbda)
        arrays["final_accuracy"] = np.asarray(correct).reshape(shape)
    return arrays, hist.stopped_at.reshape(shape), seeds


def pct(correct, n):
    return 100.0 * np.asarray(correct, float) / n


# --- units: one seed of a row --------------------------------------------------------

def monitored(spec):
    """(the metrics row ``spec`` measures every epoch, those its unit records keep)."""
    kind = spec["kind"]
    if kind == "curves":
        return MONITORS, MONITORS
    if kind == "multiple_eta":
        return ("training_cost",), ("training_cost",)
    if kind == "stopping":
        return ("evaluation_accuracy",), ("evaluation_accuracy", "eta")
    if "also" in spec:
        return ("evaluation_accuracy", "training_accuracy"), ("evaluation_accuracy", "training_accuracy")
    return ("evaluation_accuracy",), ("evaluation_accuracy",)


def seed_records(args, spec, arrays, stopped, seeds, **shared):
    """One unit record per seed of row ``spec`` (``<row>@<seed>``): its slice
    of ``arrays`` ({metric: [epochs, configs, seeds]}) and ``stopped``
    ([configs, seeds]), with ``shared`` (the epochs, the sets' sizes)."""
    return [dict(shared, row=spec["id"], seed=s, quick=bool(args.quick),
                 history={k: np.asarray(v)[:, :, i].tolist() for k, v in arrays.items()},
                 stopped_at=np.asarray(stopped)[:, i].tolist()) for i, s in enumerate(seeds)]


def stacked(records):
    """The unit records of one row, in seed order, as ``train_configs`` gives
    them: ({metric: [epochs, configs, seeds]}, stopped [configs, seeds], seeds)."""
    arrays = {k: np.stack([np.asarray(r["history"][k]) for r in records], axis=-1) for k in records[0]["history"]}
    return arrays, np.stack([np.asarray(r["stopped_at"]) for r in records], axis=-1), [r["seed"] for r in records]


def trained_units(args, splits, spec):
    """Every config of row ``spec`` × the seeds the driver gives (``driver.seeds``)
    trained as one program: one unit record per seed."""
    training, ev = row_data(args, splits, spec)
    epochs, (monitor, kept) = row_epochs(args, spec), monitored(spec)
    rule = {k: spec[k] for k in ("early_stopping_n", "schedule_n") if k in spec}
    h, stopped, seeds = train_configs(args, spec, training, ev, epochs, monitor, **rule)
    return seed_records(args, spec, {k: h[k] for k in kept}, stopped, seeds, epochs=epochs,
                        n_train=len(training.y), n_eval=None if ev is None else len(ev.y))


def run_sweep(args, splits, spec):
    """One setting swept (``spec["sweep"]``: λ of L1, or momentum μ): one unit
    record per seed, its accuracy curve for every value. Values that only
    change η or λ train as one program; each momentum is its own trainer."""
    training, ev = row_data(args, splits, spec)
    epochs, configs = row_epochs(args, spec), spec["configs"]
    curves, stops = [None] * len(configs), [None] * len(configs)
    for momentum in dict.fromkeys(c.get("momentum", 0.0) for c in configs):
        where = [i for i, c in enumerate(configs) if c.get("momentum", 0.0) == momentum]
        h, stopped, seeds = train_configs(args, dict(spec, configs=[configs[i] for i in where], momentum=momentum),
                                          training, ev, epochs, ("evaluation_accuracy",))
        for j, i in enumerate(where):
            curves[i], stops[i] = h["evaluation_accuracy"][:, j], stopped[j]
    return seed_records(args, spec, {"evaluation_accuracy": np.stack(curves, axis=1)}, np.stack(stops), seeds,
                        epochs=epochs, n_train=len(training.y), n_eval=len(ev.y))


def compose(units, results=None):
    """Chapter 3's rows from their units' records ({row: [a record a seed, in
    seed order]}), wherever each seed was trained: at the end of a run, in
    ``nndl-jax merge``, in a report (``results`` is not needed)."""
    rows = []
    for row_id, records in units.items():
        rows += rows_of(ROW[row_id], records)
    return rows, {}


def rows_of(spec, records):
    """The table rows of row ``spec`` from its seeds' records: the settings
    (epochs) and --quick's SHORTENED note in them, as a run records them."""
    h, stopped, seeds = stacked(records)
    first = records[0]
    rows = ROW_MAKERS[spec["kind"]](spec, h, stopped, seeds, first)
    for r in rows:
        r.setdefault("epochs", first["epochs"])
        if first.get("quick") and "SHORTENED" not in r["note"]:
            r["note"] = store.SHORTENED + ("; " + r["note"] if r["note"] else "")
    return rows


def whole_rows(args, splits, spec):
    """A row that is one job, not units (3.20@n): trained, then its rows made at once."""
    return rows_of(spec, trained_units(args, splits, spec))


# --- the kinds of row ----------------------------------------------------------------

def stall_epochs(cost):
    """How long learning stalls, by a stated rule: the first epoch whose fall
    in cost, C(e) − C(e+1), is at least half the largest per-epoch fall of the
    run (0 when the neuron learns fastest at the start)."""
    fall = -np.diff(np.asarray(cost, float))
    return int(np.argmax(fall >= fall.max() / 2))


def train_neuron(cost, starts, etas, epochs, seed):
    """One sigmoid neuron per start ``(w, b)``, stacked, trained on the single
    example x = 1, y = 0 for ``epochs`` one-step epochs with ``cost``.
    Returns its output and cost at epochs 0..epochs, each [epochs + 1, starts]."""
    import jax
    import jax.numpy as jnp

    from nndl_jax import layers, train
    from nndl_jax.activations import sigmoid

    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # float32, or float64 with --x64
    x, y = jnp.ones((1, 1), dtype), jnp.zeros((1, 1), dtype)
    trainer = train.trainer_for(layers.mlp_net([1, 1], sigmoid), cost, 1)
    params = [{"w": jnp.asarray([[[w]] for w, _ in starts], dtype),
               "b": jnp.asarray([[b] for _, b in starts], dtype)}]
    no_penalty = jnp.zeros(len(starts), dtype)
    outputs, cost_values = [], []

    def measure(p):
        outputs.append(np.asarray(cost.output(trainer.predict(p, x)))[:, 0, 0])
        cost_values.append(np.asarray(trainer.evaluate(p, x, y, no_penalty)[1]))

    measure(params)
    train.fit(trainer, params, (x, y), epochs, key=jax.random.key(seed), eta=np.asarray(etas),
              on_epoch=lambda e, record: measure(record["params"]))
    return np.asarray(outputs), np.asarray(cost_values)


def neuron_groups(spec):
    """3.1's configs by cost, in the order they train, each with its table id (3.1a-d)."""
    letters, out = iter("abcdefgh"), {}
    for cost_name in dict.fromkeys(c["cost"] for c in spec["configs"]):
        out[cost_name] = [(f"{spec['id']}{next(letters)}", c) for c in spec["configs"] if c["cost"] == cost_name]
    return out


def run_neuron(args, splits, spec):
    """The book's single-neuron demonstration: one input 1, target 0, one
    gradient step per epoch from the book's starting weight and bias, the
    quadratic cost beside the cross-entropy (each with the book's η). The
    starts of one cost train together as K stacked one-neuron networks."""
    from nndl_jax import costs

    del splits  # no MNIST here
    epochs = spec["epochs"]  # 300 steps of one neuron: the same in --quick
    rows = []
    for cost_name, group in neuron_groups(spec).items():
        outputs, cost_curve = train_neuron(costs.by_name(cost_name), [(c["w"], c["b"]) for _, c in group],
                                           [c["eta"] for _, c in group], epochs, args.seed)
        for i, (row_id, c) in enumerate(group):
            stall = stall_epochs(cost_curve[:, i])
            start = f"w {c['w']:g}, b {c['b']:g}"
            book_start = spec["book_start"][c["w"]]
            measured, unit, what = ((outputs[-1, i], "", f"output after {epochs} epochs") if c["quote"] == "output"
                                    else (stall, " epochs", "stall in epochs (rule in the note)"))
            rows.append(report.row(
                row_id, f"{cost_name}, η {c['eta']:g}, {start}: {what}",
                spec["book"].get((cost_name, c["quote"])), measured, unit=unit,
                note=f"output {outputs[0, i]:.3f} at epoch 0 (book {book_start}), {outputs[-1, i]:.3f} "
                     f"after {epochs}; stall {stall} epochs (first epoch whose fall in cost is at least "
                     "half the run's largest)", cost=cost_name, eta=c["eta"], w0=c["w"], b0=c["b"],
                output_start=outputs[0, i], output_final=outputs[-1, i], stall_epochs=stall,
                output=outputs[:, i], cost_curve=cost_curve[:, i], dtype=str(outputs.dtype)))
    return rows


def accuracy_rows(spec, h, stopped, seeds, unit):
    """The peak accuracy on the row's set (and 3.5: the training accuracy at the last epoch)."""
    n_eval, n_train = unit["n_eval"], unit["n_train"]
    acc = pct(h["evaluation_accuracy"][:, 0], n_eval)                  # [epochs, seeds]
    rows = [report.row(spec["id"], spec["what"], spec["book"], acc.max(axis=0),
                       note=f"peak over epochs on {spec['eval']} ({n_eval} images, {n_train} "
                            "training); final epoch: " + ", ".join(f"{a:.2f}" for a in acc[-1]),
                       set=spec["eval"], peak_epoch=acc.argmax(axis=0) + 1, final=acc[-1], seeds=seeds)]
    for rid, (what, book) in spec.get("also", {}).items():
        tr = pct(h["training_accuracy"][:, 0], n_train)
        rows.append(report.row(rid, what, book, tr[-1], set="training",
                               note="training accuracy at the last epoch; test peak "
                                    + ", ".join(f"{a:.2f}" for a in acc.max(axis=0)),
                               test_peak=acc.max(axis=0), seeds=seeds))
    return rows


def curves_rows(spec, h, stopped, seeds, unit):
    """The test peak, with the four monitored curves (3.4, 3.6)."""
    m = {k: h[k][:, 0] for k in MONITORS}                               # [epochs, seeds]
    acc = pct(m["evaluation_accuracy"], unit["n_eval"])
    return [report.row(
        spec["id"], spec["what"], spec["book"], acc.max(axis=0), set=spec["eval"], seeds=seeds,
        note=f"test peak after {', '.join(str(e) for e in acc.argmax(axis=0) + 1)} epochs{spec.get('hint_peak', '')}; "
             f"test cost lowest after {', '.join(str(e) for e in m['evaluation_cost'].argmin(axis=0) + 1)} epochs"
             f"{spec.get('hint_cost', '')}; final training accuracy "
             f"{', '.join(f'{a:.1f}' for a in pct(m['training_accuracy'][-1], unit['n_train']))} %",
        peak_epoch=acc.argmax(axis=0) + 1, test_cost_min_epoch=m["evaluation_cost"].argmin(axis=0) + 1,
        curves={k: v for k, v in m.items()})]


def weight_init_rows(spec, h, stopped, seeds, unit):
    """Each initialization's accuracy after epoch 1 (3.10a, b) and at the last epoch (3.10c, d)."""
    acc = pct(h["evaluation_accuracy"], unit["n_eval"])                     # [epochs, 2, seeds]
    rows = []
    for c, cfg in enumerate(spec["configs"]):
        name = cfg["init"]
        label = f"{name} init{spec.get('label', '')}"
        rows.append(report.row(f"{spec['id']}{'a' if c == 0 else 'b'}",
                               f"{label}: accuracy after epoch 1 (validation)",
                               spec["book"][name]["epoch 1"], acc[0, c], set=spec["eval"], seeds=seeds))
        rows.append(report.row(f"{spec['id']}{'c' if c == 0 else 'd'}", f"{label}: final accuracy (validation)",
                               spec["book"][name]["final"], acc[-1, c], set=spec["eval"], seeds=seeds,
                               curve=acc[:, c]))
    return rows


def multiple_eta_rows(spec, h, stopped, seeds, unit):
    """Each η's training cost at the last epoch, with its curve (3.18a-c)."""
    cost = h["training_cost"]                                                 # [epochs, 3, seeds]
    return [report.row(f"{spec['id']}{'abc'[c]}", f"η = {cfg['eta']}: training cost at the last epoch",
                       spec["book"][c], cost[-1, c], unit="", direction="lower", set="training", seeds=seeds,
                       curve=cost[:, c]) for c, cfg in enumerate(spec["configs"])]


def transcript_rows(spec, h, stopped, seeds, unit):
    """The walk-through's accuracies at the last epoch, with the first seed's transcript."""
    acc, n_eval = h["evaluation_accuracy"], unit["n_eval"]                     # [epochs, configs, seeds]
    rows = []
    for c, cfg in enumerate(spec["configs"]):
        name = cfg.get("name", "a")
        book = spec["book"].get(name)
        shown = acc[:4, c, 0].tolist() + ["…"] + acc[-1:, c, 0].tolist() + [f"/ {n_eval}"]
        rows.append(report.row(
            f"{spec['id']}{name if len(spec['configs']) > 1 else ''}",
            f"η {cfg['eta']:g}, λ {cfg['lmbda']:g}: accuracy at the last epoch",
            None if book is None else 100.0 * book[-1] / spec["book_of"], pct(acc[-1, c], n_eval),
            set=spec["eval"], seeds=seeds, transcript=acc[:, c], book_transcript=book,
            note=f"seed {seeds[0]} transcript: {' '.join(map(str, shown))}; "
                 f"book: {' '.join(map(str, book or []))} (book's last number is its last epoch shown)"))
    return rows


def stopping_spec(spec, n):
    """Row 3.20 for one n of its no-improvement-in-n rule: row "3.20@n"."""
    return dict(spec, id=f"{spec['id']}@{n}", early_stopping_n=n,
                what=spec["what"].replace("no-improvement-in-n, n = 10, 20, 50", f"no-improvement-in-{n}"))


def stopping_rows(spec, h, stopped, seeds, unit):
    """The best accuracy before the rule stopped each seed, and how long each ran (3.20@n, 3.21)."""
    acc = pct(h["evaluation_accuracy"][:, 0], unit["n_eval"])                  # [epochs, seeds]
    ran = np.where(stopped[0] >= 0, stopped[0] + 1, len(acc))
    best = [float(np.nanmax(acc[:r, s])) for s, r in enumerate(ran)]
    rule = (f"no-improvement-in-{spec['early_stopping_n']}" if "early_stopping_n" in spec
            else f"halve η at no-improvement-in-{spec['schedule_n']}, stop at η/128")
    return [report.row(spec["id"], spec["what"], None, best, set=spec["eval"], seeds=seeds,
                       note=f"{rule}: ran {', '.join(map(str, ran))} epochs (limit {unit['epochs']}; stopped: "
                            f"{', '.join(str(bool(s >= 0)) for s in stopped[0])}); measured = best accuracy",
                       stopped_after_epochs=ran, eta=h["eta"][:, 0], curve=acc)]


def sweep_rows(spec, h, stopped, seeds, unit):
    """The peak accuracy at each value of the swept setting, against its first value (λ 0, μ 0)."""
    name, symbol = spec["sweep"], {"lmbda": "λ", "momentum": "μ"}[spec["sweep"]]
    acc = {c[name]: pct(h["evaluation_accuracy"][:, i], unit["n_eval"])        # value -> [epochs, seeds]
           for i, c in enumerate(spec["configs"])}
    base_value = spec["configs"][0][name]
    base = acc[base_value].max(axis=0)
    rows = []
    for value, a in acc.items():
        peak = a.max(axis=0)
        rows.append(report.row(
            f"{spec['id']}@{value:g}", f"{spec['what'].split(':')[0]}: {symbol} {value:g}, peak accuracy",
            None, peak, set=spec["eval"], seeds=seeds, **{name: value}, curve=a,
            peak_epoch=a.argmax(axis=0) + 1, final=a[-1],
            note=f"peak − peak at {symbol} {base_value:g}: {peak.mean() - base.mean():+.2f} (mean over seeds; "
                 f"per seed {', '.join(f'{d:+.2f}' for d in peak - base)}); final epoch "
                 + ", ".join(f"{v:.2f}" for v in a[-1])))
    return rows


ROW_MAKERS = {"accuracy": accuracy_rows, "curves": curves_rows, "weight_init": weight_init_rows,
              "multiple_eta": multiple_eta_rows, "transcript": transcript_rows, "stopping": stopping_rows,
              "sweep": sweep_rows}


# --- more data and the SVM: one job per training-set size --------------------------------

def run_more_data(args, splits, spec, size):
    """3.14 at one training-set size: the book's fixed number of examples seen
    (``examples // size`` epochs), λ scaled with the size; accuracy at the last epoch."""
    examples = QUICK["examples"] if args.quick else spec["examples"]
    ev = _subset(splits.validation, QUICK["n_eval"] if args.quick else None)
    epochs = examples // size
    sub = dict(spec, id=f"{spec['id']}@{size}", configs=[dict(eta=spec["eta"], lmbda=size * 1e-4, init=spec["init"])])
    print(f"\nTraining network with data set size {size} ({epochs} epochs)", flush=True)
    h, _, seeds = train_configs(args, sub, _subset(splits.training, size), None, epochs, (), final_eval=ev)
    acc = pct(h["final_accuracy"][0], len(ev.y))
    book = spec["book"][spec["train_sizes"].index(size)]
    return [report.row(f"{spec['id']}@{size}", f"more data: {size} images, {epochs} epochs, "
                       f"λ {size * 1e-4:g} (validation, last epoch)", book, acc,
                       set="validation", seeds=seeds, epochs=epochs, lmbda=size * 1e-4)]


def svm_sizes(args, spec):
    return QUICK["svm_sizes"] if args.quick else spec["train_sizes"]


def run_svm(args, splits, spec, size):
    """3.15 at one training-set size: the book's SVC on the first ``size`` images."""
    from sklearn import svm as sk_svm
    ev = _subset(splits.validation, QUICK["n_eval"] if args.quick else None)
    clf = sk_svm.SVC(gamma="auto")  # the 2015 default: RBF, C = 1, gamma = 1/784
    print(f"  [{spec['id']}] SVC on {size} images ...", flush=True)
    clf.fit(splits.training.x[:size], splits.training.y[:size])
    acc = 100.0 * float(np.mean(clf.predict(ev.x) == ev.y))
    book = spec["book"][spec["train_sizes"].index(size)] if size in spec["train_sizes"] else None
    return [report.row(f"{spec['id']}@{size}", f"SVC(gamma='auto') on {size} images (validation)",
                       book, acc, set="validation", note="deterministic (no seed)")]


# --- the figures, drawn from the rows ------------------------------------------------------

def neuron_figures(args, spec, rows):
    """neuron_<cost>.png for each cost of 3.1 whose rows are in ``rows``: output
    and cost against epoch for each start, the book's quoted outputs as
    crosses, the stall rule's epoch as a dotted line."""
    written = []
    for cost_name, group in neuron_groups(spec).items():
        if not all(row_id in rows for row_id, _ in group):
            continue
        fig, path = report.figure(args, f"neuron_{cost_name}")
        if fig is None:
            return written
        out_ax, cost_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for row_id, c in group:
            output, cost = np.asarray(rows[row_id]["output"]), np.asarray(rows[row_id]["cost_curve"])
            epochs, label = np.arange(len(output)), f"w {c['w']:g}, b {c['b']:g}"
            line, = out_ax.plot(epochs, output, lw=1.5, label=label)
            out_ax.plot([0], [spec["book_start"][c["w"]]], "x", color=line.get_color(), ms=7)
            cost_ax.plot(epochs, cost, lw=1.5, color=line.get_color(), label=label)
            cost_ax.axvline(stall_epochs(cost), ls=":", color=line.get_color())
            book_final = spec["book"].get((cost_name, "output")) if c["quote"] == "output" else None
            if book_final is not None:
                out_ax.plot([epochs[-1]], [book_final], "x", color=line.get_color(), ms=7, label="book")
        out_ax.set(xlabel="epoch", ylabel="output", ylim=(0, 1), title=f"{cost_name}, η {group[0][1]['eta']:g}")
        cost_ax.set(xlabel="epoch", ylabel="cost", title="cost (dotted: end of the stall)")
        out_ax.legend(fontsize=7)
        report.save(fig, path)
        written.append(path.name)
    return written


def curves_figures(args, spec, rows):
    """<curve>_<metric>.png for 3.4 or 3.6: each monitored curve of every seed, with the book's."""
    r = rows.get(spec["id"])
    if r is None:
        return []
    n_train, n_eval = recorded_sizes(r.get("quick"), spec)
    book = report.book_curve(spec["curve"])
    panels = [("evaluation_cost", "cost on the test data", 1.0, 1.0),
              ("evaluation_accuracy", "accuracy (%) on the test data", 100.0 / n_eval, 100.0 / 10000),
              ("training_cost", "cost on the training data", 1.0, 1.0),
              ("training_accuracy", "accuracy (%) on the training data", 100.0 / n_train, 100.0 / 1000)]
    written = []
    for i, (name, label, scale, book_scale) in enumerate(panels):
        fig, path = report.figure(args, f"{spec['curve']}_{name}")
        if fig is None:
            break
        ax, curve = fig.gca(), np.asarray(r["curves"][name], float)            # [epochs, seeds]
        for s, seed in enumerate(r["seeds"]):
            ax.plot(np.arange(len(curve)), curve[:, s] * scale, lw=1, label=f"measured (seed {seed})")
        if book is not None:
            ax.plot(np.asarray(book[i], float) * book_scale, "k--", lw=1, label="book")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{spec['id']}: {spec['what']}")
        ax.legend(fontsize=7)
        report.save(fig, path)
        written.append(path.name)
    return written


def weight_init_figure(args, spec, rows):
    """weight_initialization_<n>.png for 3.10 or 3.10-100: each initialization's
    validation accuracy, the mean of its seeds, beside the book's."""
    finals = [rows.get(f"{spec['id']}{'cd'[c]}") for c in range(len(spec["configs"]))]
    fig, path = report.figure(args, spec["curve"]) if all(finals) else (None, None)
    if fig is None:
        return []
    ax, book = fig.gca(), report.book_curve(spec["curve"])
    for cfg, r in zip(spec["configs"], finals):
        name, acc = cfg["init"], np.asarray(r["curve"], float)                   # [epochs, seeds]
        ax.plot(np.arange(1, len(acc) + 1), acc.mean(axis=1), lw=1.5,
                label=f"{name} init (measured, mean of {len(r['seeds'])})")
        if book is not None:
            ax.plot(np.arange(1, 31), np.asarray(book[f"{name}_weight_initialization"][1], float) / 100, "--", lw=1,
                    label=f"{name} init (book)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{spec['id']}: {spec['what']}")
    ax.legend(fontsize=7)
    report.save(fig, path)
    return [path.name]


def multiple_eta_figure(args, spec, rows):
    """multiple_eta.png: each η's training cost, the mean of its seeds, beside the book's."""
    made = [rows.get(f"{spec['id']}{'abc'[c]}") for c in range(len(spec["configs"]))]
    fig, path = report.figure(args, spec["curve"]) if all(made) else (None, None)
    if fig is None:
        return []
    ax, book = fig.gca(), report.book_curve(spec["curve"])
    for c, (cfg, r) in enumerate(zip(spec["configs"], made)):
        cost = np.asarray(r["curve"], float)                                    # [epochs, seeds]
        line, = ax.plot(np.arange(len(cost)), cost.mean(axis=1), lw=1.5, label=f"η = {cfg['eta']} (measured)")
        if book is not None:
            ax.plot(book[c][2], "--", color=line.get_color(), lw=1, label=f"η = {cfg['eta']} (book)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost on the training data")
    ax.legend(fontsize=7)
    report.save(fig, path)
    return [path.name]


def sweep_figure(args, spec, rows):
    """l1_sweep.png or momentum_sweep.png: the accuracy at each value of the swept setting, the mean of its seeds."""
    name, symbol = spec["sweep"], {"lmbda": "λ", "momentum": "μ"}[spec["sweep"]]
    made = [rows.get(f"{spec['id']}@{c[name]:g}") for c in spec["configs"]]
    fig, path = report.figure(args, spec["figure"]) if all(made) else (None, None)
    if fig is None:
        return []
    for cfg, r in zip(spec["configs"], made):
        a = np.asarray(r["curve"], float)                                       # [epochs, seeds]
        fig.gca().plot(np.arange(1, len(a) + 1), a.mean(axis=1), lw=1.5,
                       label=f"{symbol} = {cfg[name]:g} (mean of {len(r['seeds'])})")
    fig.gca().set(xlabel="epoch", ylabel=f"{spec['eval']} accuracy (%)", title=f"{spec['id']}: {spec['what']}")
    fig.gca().legend(fontsize=7)
    report.save(fig, path)
    return [path.name]


def _log_figure(args, name, series, title):
    """Accuracy against training-set size, linear and log x axis: ``series`` is
    a list of (label, sizes, values, style). The names written."""
    written = []
    for scale in ("linear", "log"):
        fig, path = report.figure(args, f"{name}_{scale}")
        if fig is None:
            return written
        ax = fig.gca()
        for label, sizes, values, style in series:
            ax.plot(sizes, values, style, label=label)
        ax.set_xscale(scale)
        ax.set_xlabel("training set size")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title)
        ax.legend(fontsize=7)
        report.save(fig, path)
        written.append(path.name)
    return written


def more_data_figures(args, spec, rows):
    """more_data_{linear,log}.png from every 3.14 size in ``rows``, with the book's curves."""
    sizes = [n for n in spec["train_sizes"] if f"{spec['id']}@{n}" in rows]
    if not sizes:
        return []
    series = [("network (measured, mean)", sizes, [rows[f"{spec['id']}@{n}"]["measured"]["mean"] for n in sizes],
               "o-")]
    book, svm = report.book_curve(spec["curve"]), report.book_curve("more_data_svm")
    if book is not None:
        series.append(("network (book)", spec["train_sizes"], book, "k--"))
    if svm is not None:
        series.append(("SVM (book)", spec["train_sizes"], svm, "k:"))
    return _log_figure(args, "more_data", series, spec["what"])


def svm_figures(args, spec, rows):
    """more_data_svm_{linear,log}.png from every 3.15 size in ``rows``."""
    sizes = sorted({n for n in [*spec["train_sizes"], *QUICK["svm_sizes"]] if f"{spec['id']}@{n}" in rows})
    if not sizes:
        return []
    series = [("SVM (measured)", sizes, [rows[f"{spec['id']}@{n}"]["measured"] for n in sizes], "o-")]
    book = report.book_curve(spec["curve"])
    if book is not None:
        series.append(("SVM (book)", spec["train_sizes"], book, "k:"))
    return _log_figure(args, "more_data_svm", series, spec["what"])


FIGURES = {"neuron": neuron_figures, "curves": curves_figures, "weight_init": weight_init_figure,
           "multiple_eta": multiple_eta_figure, "sweep": sweep_figure, "more_data": more_data_figures,
           "svm": svm_figures}


def redraw(args, results):
    """Every figure of the chapter whose rows ``results`` holds, drawn from those
    rows into ``args.out``: at the end of a run (this run's rows and earlier
    runs'), and by ``nndl-jax merge`` from the merged rows. The names written."""
    rows = {r["id"]: r for r in (results or {}).get("rows", [])}
    return [name for spec in ROWS for name in FIGURES.get(spec["kind"], lambda *a: [])(args, spec, rows)]


# --- the jobs ------------------------------------------------------------------------------

def table_ids(spec):
    """The ids of the table rows that row ``spec`` writes."""
    kind, rid, configs = spec["kind"], spec["id"], spec.get("configs", [])
    if kind in ("neuron", "weight_init", "multiple_eta"):
        return [rid + c for c in "abcd"[:len(configs) * (2 if kind == "weight_init" else 1)]]
    if kind == "accuracy":
        return [rid, *spec.get("also", {})]
    if kind == "transcript" and len(configs) > 1:
        return [rid + c.get("name", "a") for c in configs]
    if kind == "sweep":
        return [f"{rid}@{c[spec['sweep']]:g}" for c in configs]
    return [rid]


def jobs(args, splits):
    """The rows asked for, as the driver's jobs: a row trained with seeds is a
    job of units (one a seed, composed by ``compose``); 3.1 (one neuron, no
    seeds) is one job; more data (3.14, 3.15) and early stopping (3.20) are one
    job per training-set size or n."""
    def job(job_id, ids, runner, *extra, **settings):
        return driver.Job(job_id, ids, lambda a: runner(a, splits, *extra), settings=settings)

    out = []
    for spec in ROWS:
        rid, kind = spec["id"], spec["kind"]
        if not (driver.wanted(args, rid) or set(spec.get("also", ())) & set(args.only or ())):
            continue
        if kind == "more_data":
            examples = QUICK["examples"] if args.quick else spec["examples"]
            out += [job(f"{rid}@{n}", [f"{rid}@{n}"], run_more_data, spec, n, epochs=examples // n)
                    for n in (QUICK["train_sizes"] if args.quick else spec["train_sizes"])]
        elif kind == "svm":
            out += [job(f"{rid}@{n}", [f"{rid}@{n}"], run_svm, spec, n) for n in svm_sizes(args, spec)]
        elif kind == "stopping" and isinstance(spec.get("early_stopping_n"), tuple):
            out += [job(f"{rid}@{n}", [f"{rid}@{n}"], whole_rows, stopping_spec(spec, n),
                        epochs=row_epochs(args, spec)) for n in spec["early_stopping_n"]]
        elif kind == "neuron":
            out.append(job(rid, table_ids(spec), run_neuron, spec, epochs=row_epochs(args, spec)))
        else:
            out.append(driver.Job(rid, table_ids(spec), lambda a, spec=spec: (
                run_sweep if spec["kind"] == "sweep" else trained_units)(a, splits, spec),
                settings={"epochs": row_epochs(args, spec)}, compose=compose, unit_rows=[rid]))
    return driver.asked_jobs(args, out)


def planned_jobs(args):
    """The jobs asked for, listed without data (for ``--part`` and ``--plan``);
    with ``--book-seed``, the replays'."""
    if getattr(args, "book_seed", None) is not None:
        return book_replay.jobs(args, None)
    return jobs(args, None)


def run(args):
    progress.say_start(args)
    splits = load_mnist(args.data_dir)
    if getattr(args, "book_seed", None) is not None:  # the seeded rows, with the book's own random streams
        return book_replay.run(args, splits)
    rows = []
    for job in jobs(args, splits):
        spec = ROW[job.id.split("@")[0]]
        print(f"\n== {job.id}: {spec['what']}", flush=True)
        rows += driver.run_jobs(args, [job])
    redraw(args, store.read_results(args.out))
    return rows


def command_line(argv=None, **how):
    """The chapter's command line parsed (``driver.parse_args``); ``how``:
    ``plan_only`` (for the planner: parsed, nothing started), ``book_plan``, ``run_session``."""
    row_ids = {spec["id"]: spec["what"] for spec in ROWS}
    row_ids |= {i: title for spec in ROWS for i, (title, _) in spec.get("also", {}).items() if i not in row_ids}
    return driver.parse_args("chap3", __doc__, argv, row_ids=row_ids, add_arguments=book_replay.add_arguments,
                             derive=book_replay.implied, **how)


def main(argv=None, book_plan=None, run_session=None):
    args = command_line(argv, book_plan=book_plan, run_session=run_session)
    book_replay.check_rows(args)  # before MNIST loads
    return driver.finish(args, run(args))


if __name__ == "__main__":
    raise SystemExit(session.main_entry(main))
