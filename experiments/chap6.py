"""Chapter 6: convolutional networks (the book's network3.py and conv.py).

Every row uses mini-batches of 10, a softmax output with the log-likelihood
cost, network3's initialization and no shuffling, and reports the test
accuracy at the epoch of best validation accuracy (the book's ``>=`` rule),
as mean ± spread and best-of-k over the seeds, which train together as one
compiled program. Run as a command, the chapter asks JAX for one CPU device
per core, and the seeds of a row are spread over them (two cores: two nets
side by side; ``devices.k_axis_mode``). Rows 6.11
and 6.12 share max(--seeds, 5) dropout nets (seeds --seed, --seed + 1, ...):
each net, once trained, is recorded as its own row ``6.11@<seed>`` (with its
test predictions); 6.11 then reports the nets, 6.12 their plurality vote
(ties: the earliest net's label, as the book's Counter.most_common), both
written once every net is recorded. ``--nets`` trains some of them, so the
ensemble can be trained over several sittings or machines into one --out.
Row 6.13 trains nothing: it counts the parameters of each chapter-6 net
from its freshly initialized params, beside the book's arithmetic (a conv
layer of 20 5×5 maps: 520; a fully connected layer of 30 neurons on 784
pixels: 23,550).

Extra options (besides the shared ones below):
  --epochs N       run every row for N epochs instead of the book's 60 / 40
  --train-size N   use the first N training images (expanded rows: their
                   5N-image expansion) instead of 50,000 / 250,000
  --eval-size N    validate and test on the first N images of each set
                   instead of 10,000 (the time probe's: experiments/probe.py)
  --nets I [I ...] rows 6.11/6.12: train only these of the ensemble's nets
                   (0 is seed --seed); the others are taken from --out
  --devices N      CPU devices for JAX (every chapter takes it; here the default
                   is one per core this process may run on); 1 for a lone net,
                   whose step then has both cores' threads to itself
The first three are recorded in the JSON and printed in the table's notes, so a
shortened run is never passed off as the book's setting.

    python -m experiments.chap6 --quick
    python -m experiments.chap6 --only 6.1 6.2 --seeds 3
    python -m experiments.chap6 --only 6.11 6.12 --epochs 10 --train-size 10000
    python -m experiments.chap6 --only 6.11 6.12 --nets 0 1 --out reproduced/chap6 --resume
    python -m experiments.chap6 --only 6.11 6.12 --nets 4 --devices 1 --out reproduced/chap6 --resume
"""
import argparse
import time
from pathlib import Path

import numpy as np

from experiments import checkpoints, driver, progress, report, session
from nndl_jax import data

# JAX starts only when a row computes: the table names each row's architecture, and
# the functions that build, train or count nets import network3 (and JAX), so
# `--help` and the row table answer without it.

MB = 10

# The book's rows: architecture (``architecture``), activation, hidden size n, η, λ,
# the book's epochs, whether on the expanded data, the book's test accuracy (%).
ROWS = [
    dict(id="6.1", experiment="Shallow: FC(784→100) + softmax, sigmoid",
         arch="shallow", activation="sigmoid", n=100, eta=0.1, lmbda=0.0, epochs=60, expanded=False, book=97.8),
    dict(id="6.2", experiment="conv(20) + FC(2880→100) + softmax, sigmoid",
         arch="conv", activation="sigmoid", n=100, eta=0.1, lmbda=0.0, epochs=60, expanded=False, book=98.78),
    dict(id="6.3", experiment="Omit FC: conv(20) + softmax, sigmoid",
         arch="conv_only", activation="sigmoid", n=0, eta=0.1, lmbda=0.0, epochs=60, expanded=False, book=None),
    dict(id="6.4", experiment="Two conv: conv(20) conv(40) FC(640→100), sigmoid",
         arch="dbl_conv", activation="sigmoid", n=100, eta=0.1, lmbda=0.0, epochs=60, expanded=False, book=99.06),
    dict(id="6.5", experiment="Two conv, tanh (book: qualitative only)",
         arch="dbl_conv", activation="tanh", n=100, eta=0.1, lmbda=0.0, epochs=60, expanded=False, book=None),
    dict(id="6.6", experiment="Two conv, ReLU, η=0.03, λ=0.1",
         arch="dbl_conv", activation="relu", n=100, eta=0.03, lmbda=0.1, epochs=60, expanded=False, book=99.23),
    dict(id="6.7", experiment="Two conv, ReLU, expanded data (250k)",
         arch="dbl_conv", activation="relu", n=100, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.37),
    dict(id="6.8a", experiment="Expanded, FC 300",
         arch="dbl_conv", activation="relu", n=300, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.46),
    dict(id="6.8b", experiment="Expanded, FC 1000",
         arch="dbl_conv", activation="relu", n=1000, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.43),
    dict(id="6.9", experiment="Expanded, two FC 100-100",
         arch="dbl_conv_2fc", activation="relu", n=100, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.43),
    dict(id="6.10a", experiment="Expanded, two FC 300-300",
         arch="dbl_conv_2fc", activation="relu", n=300, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.48),
    dict(id="6.10b", experiment="Expanded, two FC 1000-1000",
         arch="dbl_conv_2fc", activation="relu", n=1000, eta=0.03, lmbda=0.1, epochs=60, expanded=True, book=99.47),
    dict(id="6.11", experiment="Dropout p=0.5: FC 1000-1000, expanded, 40 epochs",
         arch="dropout", activation="relu", n=1000, eta=0.03, lmbda=0.0, epochs=40, expanded=True, book=99.6),
    dict(id="6.12", experiment="Ensemble of 5 dropout nets (6.11), plurality vote",
         arch="dropout", activation="relu", n=1000, eta=0.03, lmbda=0.0, epochs=40, expanded=True, book=99.67),
    dict(id="6.13", experiment="Parameter counts, from the initialized params", arch="counts",
         activation="sigmoid", n=30, eta=None, lmbda=None, epochs=0, expanded=False,
         book={"conv": 520, "fc": 23550, "ratio": 40}),
]
ROW = {r["id"]: r for r in ROWS}
ENSEMBLE_SIZE = 5
QUICK = {"train_size": 100, "eval_size": 100, "epochs": 1, "seeds": 1}


def base_id(row_id):
    """"6.8a" -> "6.8": --only selects a row and all its variants."""
    return row_id.rstrip("ab")


# What --only accepts, with --help's titles: every row id, and "6.8" / "6.10" for both variants.
ROW_IDS = {r["id"]: r["experiment"] for r in ROWS} | {
    base_id(r["id"]): "both of " + " and ".join(v["id"] for v in ROWS if base_id(v["id"]) == base_id(r["id"]))
    for r in ROWS if base_id(r["id"]) != r["id"]}


def architecture(arch, activation, n, mb=MB):
    """The book's conv.py networks as network3 layers."""
    from nndl_jax import network3
    from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer

    act = network3.activations.by_name(activation)
    conv1 = ConvPoolLayer((20, 1, 5, 5), (mb, 1, 28, 28), (2, 2), act)
    conv2 = ConvPoolLayer((40, 20, 5, 5), (mb, 20, 12, 12), (2, 2), act)
    if arch == "shallow":
        return [FullyConnectedLayer(784, n, act), SoftmaxLayer(n, 10)]
    if arch == "conv":
        return [conv1, FullyConnectedLayer(20 * 12 * 12, n, act), SoftmaxLayer(n, 10)]
    if arch == "conv_only":
        return [conv1, SoftmaxLayer(20 * 12 * 12, 10)]
    if arch == "dbl_conv":
        return [conv1, conv2, FullyConnectedLayer(40 * 4 * 4, n, act), SoftmaxLayer(n, 10)]
    if arch == "dbl_conv_2fc":
        return [conv1, conv2, FullyConnectedLayer(640, n, act), FullyConnectedLayer(n, n, act),
                SoftmaxLayer(n, 10)]
    if arch == "dropout":
        return [conv1, conv2, FullyConnectedLayer(640, n, act, p_dropout=0.5),
                FullyConnectedLayer(n, n, act, p_dropout=0.5), SoftmaxLayer(n, 10, p_dropout=0.5)]
    raise ValueError(f"unknown architecture {arch!r}")


def add_arguments(p):
    """The options only this chapter takes: a shortened run, recorded in the
    JSON and flagged SHORTENED in the table, so nothing passes for the book's setting."""
    p.add_argument("--epochs", type=driver.positive_int, default=None,
                   help="epochs per row instead of the book's (default: the book's; --quick: 1)")
    p.add_argument("--train-size", type=int, default=None,
                   help="training images instead of the book's 50,000 (expanded rows: 5x this)")
    p.add_argument("--eval-size", type=driver.positive_int, default=None,
                   help="validation and test images instead of the book's 10,000 of each")
    p.add_argument("--nets", type=int, nargs="+", default=None, metavar="I",
                   help="rows 6.11/6.12: train only these of the ensemble's nets (0 = seed --seed, "
                        "1 = --seed + 1, ...), each recorded as row 6.11@<seed>; 6.11 and 6.12 are "
                        "written once all the nets are recorded in --out (default: every net)")


def load(args):
    """The three sets, cut to the run's sizes, and the expanded training set."""
    progress.say_start(args)
    splits = data.load_mnist(args.data_dir)
    n_train = args.train_size or (QUICK["train_size"] if args.quick else len(splits.training.y))
    n_eval = args.eval_size or (QUICK["eval_size"] if args.quick else None)
    cut = lambda d, n: data.Dataset(d.x[:n], d.y[:n])  # noqa: E731
    training = cut(splits.training, n_train)
    return training, cut(splits.validation, n_eval), cut(splits.test, n_eval)


def epochs_for(args, r):
    """The epochs row ``r`` runs: --epochs, else 1 with --quick, else the book's."""
    return args.epochs or (QUICK["epochs"] if args.quick else r["epochs"])


def settings_note(args, r, n_train, n_eval=None):
    """"SHORTENED: ..." when this run's epochs or data are not the book's, else ""
    (``n_eval``: the validation and test images, None: the book's)."""
    notes, row_epochs, expanded = [], r["epochs"], r["expanded"]
    if epochs_for(args, r) != row_epochs:
        notes.append(f"{progress.plural(epochs_for(args, r), 'epoch')} (book {row_epochs})")
    book_n = 250_000 if expanded else 50_000
    if n_train != book_n:
        notes.append(f"{n_train} training images (book {book_n})")
    if n_eval is not None and n_eval != data.N_VALIDATION:
        notes.append(f"{n_eval} validation and test images (book {data.N_VALIDATION})")
    return "SHORTENED: " + ", ".join(notes) if notes else ""


def jobs(args, sets):
    """The rows asked for, as the driver's jobs (6.11 and 6.12: one ensemble)."""
    training, validation, test = sets
    expanded = {}

    def data_for(r):
        if not r["expanded"]:
            return training
        if "set" not in expanded:
            t0 = time.time()
            expanded["set"] = data.expand(training.x, training.y, seed=0)
            print(f"expanded {len(training.y)} training images to {len(expanded['set'].y)} "
                  f"({time.time() - t0:.1f} s)", flush=True)
        return expanded["set"]

    out = []
    for r in ROWS:
        if not (driver.wanted(args, base_id(r["id"])) or driver.wanted(args, r["id"])) or r["id"] == "6.12":
            continue
        n_train = None if training is None else len(training.y) * (5 if r["expanded"] else 1)
        same = {"epochs": epochs_for(args, r), "train_size": n_train,
                "eval_size": None if validation is None else len(validation.y)}
        if r["arch"] == "counts":  # no training: count the params of freshly initialized nets
            out.append(driver.Job("6.13", [], lambda a, r=r: parameter_count_rows(r, a.seed)))
        elif r["arch"] == "dropout":   # 6.11 and 6.12: one ensemble, its nets rows of their own
            out.append(driver.Job("6.11", ["6.11", "6.12"], lambda a, r=r: ensemble_units(
                a, r, data_for(r), validation, test), settings=same, seeds=ensemble_seeds(args), seeds_apart=True,
                compose=lambda units, results, a=args: compose(units, results, test, a), unit_rows=["6.11"],
                units_are_rows=True, noun=("nets", "the ensemble's")))
        else:
            out.append(driver.Job(r["id"], [r["id"]], lambda a, r=r: trained_units(a, r, data_for(r), validation,
                                                                                    test), settings=same,
                                  compose=lambda units, results: compose(units, results)))
    return driver.asked_jobs(args, out)


def trained_units(args, r, train_set, validation, test):
    """The seeds the driver gives of row ``r`` trained as one program: one unit
    record a seed (its test accuracy at the best validation epoch, its
    per-net figures and curves), composed into the row by ``compose``."""
    net_layers = architecture(r["arch"], r["activation"], r["n"])
    seeds, epochs = driver.seeds(args), epochs_for(args, r)
    out = train_row(args, r["id"], r, net_layers, seeds, train_set, validation, test, epochs)
    if r["arch"] != "shallow" and args.seed in seeds:   # the filters of the first net (seed --seed)
        _filters(args, r["id"], net_layers, out["params"], net=seeds.index(args.seed))
    return net_units(r, out, seeds, epochs, train_set), {}


def net_units(r, out, seeds, epochs, train_set):
    """One unit record per net of ``train_many``'s ``out``: what a row records per net, and its curves."""
    shared = row_settings(r, out, seeds, epochs, train_set)
    measured = 100 * out["test_at_best"]
    return [{key: (np.asarray(v)[k].item() if key in PER_NET else v) for key, v in shared.items()}
            | {"row": r["id"], "seed": s, "test_at_best": measured[k].item(),
               "validation_accuracy": np.asarray(out["validation_accuracy"])[:, k].tolist(),
               "test_accuracy": np.asarray(out["test_accuracy"])[:, k].tolist()} for k, s in enumerate(seeds)]


def compose(units, results, test=None, args=None):
    """A row from its units' records ({row: [a record a seed]}), wherever each
    seed was trained: a trained row's nets, or the ensemble (6.11 and 6.12
    from its nets' rows; ``test``: the test set, else read as the run read it)."""
    if "6.11" in units:
        return compose_ensemble(units["6.11"], results, test, args)
    (row_id, nets), = units.items()
    r, first = ROW[row_id], nets[0]
    note = settings_note(argparse.Namespace(epochs=first["epochs"], quick=first.get("quick")), r, first["train_size"],
                         first.get("eval_size"))
    if row_id == "6.5":
        note = (note + "; " if note else "") + ("book: tanh trains a little faster, final "
                                               "accuracy very similar to sigmoid (6.4)")
    common = {key: first[key] for key in ("eta", "lmbda", "epochs", "book_epochs", "train_size")}
    timed = {(n.get("run"), tuple(n.get("trained_with") or [])): n for n in nets}.values()
    if any("earlier_seconds" in n for n in timed):
        common |= dict(earlier_seconds=sum(n.get("earlier_seconds", 0.0) for n in timed),
                       untimed_epochs=max(n.get("untimed_epochs", 0) for n in timed))
    row = report.row(row_id, r["experiment"], r["book"], [n["test_at_best"] for n in nets], note=note,
                     seeds=[n["seed"] for n in nets], **common, seconds=sum(n["seconds"] for n in timed),
                     **{key: [n[key] for n in nets] for key in PER_NET}, devices=max(n["devices"] for n in nets))
    curves = {key: np.stack([n[key] for n in nets], axis=1) for key in ("validation_accuracy", "test_accuracy")}
    return [row], {"curves": {row_id: curves}}


def planned_jobs(args):
    """The jobs asked for, listed without data (for ``--part`` and ``--plan``)."""
    return jobs(args, (None, None, None))


def run(args):
    training, validation, test = load(args)
    settings = {"epochs_override": args.epochs, "train_size": len(training.y), "eval_size": len(test.y),
                "mini_batch_size": MB}
    return driver.run_jobs(args, jobs(args, (training, validation, test))), {"settings": settings}


def train_row(args, checkpoint_name, r, net_layers, seeds, train_set, validation, test, epochs):
    """Train the nets of ``seeds`` for row ``r`` (checkpointed as ``checkpoint_name``),
    printing a line per epoch (after the first, an estimate of the time left):
    ``network3.train_many``'s dict."""
    from nndl_jax import network3

    print(f"\n{checkpoint_name}: {r['experiment']} — {progress.plural(len(seeds), 'net')}, "
          f"{progress.plural(epochs, 'epoch')}, {len(train_set.y)} images, η={r['eta']}, λ={r['lmbda']}", flush=True)
    ckpt = checkpoints.row_checkpoint(args, checkpoint_name, {
        "row": checkpoint_name, "layers": [layer.spec() for layer in net_layers], "seeds": seeds,
        "epochs": epochs, "expanded": r["expanded"]})
    printer = _progress(checkpoint_name, epochs, len(validation.y), len(test.y),
                        log=progress.metrics_log(args, checkpoint_name))
    return network3.train_many(net_layers, MB, train_set, epochs, r["eta"], validation, test, r["lmbda"],
                               seeds=seeds, on_epoch=printer, checkpoint=ckpt)


def row_settings(r, out, seeds, epochs, train_set):
    """What every trained row records beside its measured figure."""
    common = dict(seeds=seeds, eta=r["eta"], lmbda=r["lmbda"], epochs=epochs, book_epochs=r["epochs"],
                  train_size=len(train_set.y), seconds=out["seconds"], best_epoch=out["best_epoch"],
                  best_validation=100 * out["best_validation"], diverged_at=out["diverged_at"],
                  devices=out["devices"])
    if out["earlier_seconds"]:  # resumed: the time of its earlier sittings
        common |= dict(earlier_seconds=out["earlier_seconds"])
    return common


def asked_nets(args):
    """``--nets``, or the ensemble's nets that ``--only 6.11@<seed>`` names
    (the table's ids of single nets), as indices into `ensemble_seeds`."""
    named = [a for a in args.asked or () if a.startswith("6.11@")]
    if not named or args.nets is not None:
        return args.nets
    seeds = ensemble_seeds(args)
    unknown = [a for a in named if not a[5:].isdigit() or int(a[5:]) not in seeds]
    if unknown:
        raise session.Refusal(f"chap6: --only {' '.join(unknown)}: the ensemble's nets are "
                             + " ".join(f"6.11@{s}" for s in seeds))
    return [seeds.index(int(a[5:])) for a in named]


def ensemble_seeds(args):
    """The seeds of rows 6.11/6.12's dropout nets: --seed, --seed + 1, ...,
    max(--seeds, 5) of them (the vote takes the first five)."""
    return [args.seed + k for k in range(max(args.seeds, ENSEMBLE_SIZE))]


PER_NET = ("best_epoch", "best_validation", "diverged_at")   # [K] in a run's settings, one value a net


def net_row_id(seed):
    """The row that records one dropout net of the ensemble."""
    return f"6.11@{seed}"


def ensemble_units(args, r11, train_set, validation, test):
    """The dropout nets of rows 6.11/6.12 the driver gives (``driver.seeds``:
    --nets, a part's share, those --resume has not recorded) trained as one
    K-net run; each net is a row of its own, ``6.11@<seed>`` (its test accuracy
    at the best validation epoch, its curves and its 10,000 test predictions),
    and the unit the driver (or ``nndl-jax merge``) composes 6.11 and 6.12 from
    once every net is recorded (``compose_ensemble``). The seeds decide the
    nets: a net trained alone or beside others is the same net."""
    from nndl_jax import network3

    epochs, todo, every = epochs_for(args, r11), driver.seeds(args), ensemble_seeds(args)
    net_layers = architecture(r11["arch"], r11["activation"], r11["n"])
    out = train_row(args, "6.11", r11, net_layers, todo, train_set, validation, test, epochs)
    preds = np.asarray(network3.predictions(net_layers, out["params"], test.x))
    note = settings_note(args, r11, len(train_set.y), len(test.y))
    rows, curves = [], {}
    for k, (s, unit) in enumerate(zip(todo, net_units(r11, out, todo, epochs, train_set))):
        per_net = {key: v for key, v in unit.items() if key not in ("validation_accuracy", "test_accuracy",
                                                                    "test_at_best", "row")}
        rows.append(report.row(net_row_id(s), f"{r11['experiment']}: net {every.index(s)} (seed {s})", None,
                               unit["test_at_best"], note=note, **per_net
                               | {"row": "6.11", "seeds": [s], "trained_with": todo,
                                  "test_predictions": predictions_record(preds[k:k + 1])[0]}))
        curves[net_row_id(s)] = {key: unit[key] for key in ("validation_accuracy", "test_accuracy")}
    if every[0] in todo:   # the filters of the first net, as for every other row
        _filters(args, "6.11", net_layers, out["params"], net=todo.index(every[0]))
    return rows, {"curves": curves}


def compose_ensemble(nets, results, test=None, args=None):
    """Rows 6.11 and 6.12 from the recorded rows of the ensemble's nets (and
    their curves in ``results``); ``test``: the test set (else read as the
    run read it, for 6.12's vote); ``args``: draw the vote's errors into its --out."""
    r11, r12 = ROW["6.11"], ROW["6.12"]
    test = _test_set(results) if test is None else test
    seeds = [n["seeds"][0] for n in nets]
    # the training time of every run that trained some of the nets, each counted once; the runs
    # other than the latest (the one composing, in a chapter run) are "earlier"
    runs = {(n["run"], tuple(n["trained_with"])): n for n in nets}.values()
    latest = max(n["run"] for n in nets)
    earlier = sum(n["seconds"] if n["run"] != latest else n.get("earlier_seconds", 0.0) for n in runs)
    common = dict(eta=r11["eta"], lmbda=r11["lmbda"], epochs=nets[0]["epochs"], book_epochs=r11["epochs"],
                  train_size=nets[0]["train_size"], seconds=sum(n["seconds"] for n in runs),
                  nets=[n["id"] for n in nets], devices=max(n["devices"] for n in nets))
    if earlier:
        common["earlier_seconds"] = earlier
    note = settings_note(argparse.Namespace(epochs=nets[0]["epochs"], quick=nets[0].get("quick")), r11,
                         nets[0]["train_size"], nets[0].get("eval_size"))
    curves = {"6.11": {key: np.stack([results["curves"][n["id"]][key] for n in nets], axis=1)
                       for key in ("validation_accuracy", "test_accuracy")}}
    row11 = report.row("6.11", r11["experiment"], r11["book"], [n["measured"] for n in nets], note=note,
                       seeds=seeds, **common, **{key: [n[key] for n in nets] for key in PER_NET})
    ens = nets[:ENSEMBLE_SIZE]
    vote = recorded_vote({"test_predictions": [n["test_predictions"] for n in ens]})
    errors = np.flatnonzero(vote != test.y)
    row12 = report.row("6.12", r12["experiment"], r12["book"], 100 * float(np.mean(vote == test.y)),
                       note=(note + "; " if note else "") + f"{len(errors)} errors of {len(test.y)}"
                       + " (book: 33 of 10,000)",
                       seeds=seeds[:ENSEMBLE_SIZE], **common | {"nets": [n["id"] for n in ens]}, errors=len(errors),
                       test_predictions=[n["test_predictions"] for n in ens])
    if args is not None:
        _ensemble_errors(args, test, vote, errors)
    return [row11, row12], {"curves": curves}


def _test_set(results):
    """The test images a run of these ``results`` evaluated on (its ``settings``' eval_size)."""
    size = (results.get("settings") or {}).get("eval_size")
    test = data.load_mnist(None).test
    return data.Dataset(test.x[:size], test.y[:size])


def redraw(args, results):
    """The figures drawn from rows, drawn again from ``results`` into
    ``args.out`` (``nndl-jax merge``): the ensemble's errors. The names written."""
    rows = {r["id"]: r for r in results["rows"]}
    if "6.12" not in rows:
        return []
    test = _test_set(results)
    vote = recorded_vote(rows["6.12"])
    _ensemble_errors(args, test, vote, np.flatnonzero(vote != test.y))
    return ["ensemble_errors.png"] if (Path(args.out) / "ensemble_errors.png").exists() else []


def layer_parameter_counts(net_layers, key):
    """The number of parameters (weights and biases) in each layer of a
    network3 net, counted from the leaves of its initialized params."""
    import jax

    from nndl_jax import network3

    init = network3.build(net_layers).init
    _, params = init(key, (784,))
    return [sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(p)) for p in params]


def parameter_count_rows(r, seed):
    """Row 6.13: the book's arithmetic (a conv layer of 20 5×5 feature maps
    against a fully connected layer of 30 neurons on the 784 pixels), counted
    from params initialized from ``seed``, then the total of every chapter-6 net
    (rows whose nets differ only in activation, η, λ or data share one line)."""
    import jax

    key = jax.random.key(seed)
    conv = layer_parameter_counts(architecture("conv_only", r["activation"], 0), key)[0]
    fc = layer_parameter_counts(architecture("shallow", r["activation"], r["n"]), key)[0]
    book = r["book"]
    rows = [report.row("6.13a", "conv(20 maps, 5×5) layer: shared weights + biases", book["conv"], conv, unit="",
                       note=f"{conv} = 20 × (5×5 + 1)", count=conv, exact=True),
            report.row("6.13b", "FC(784→30) layer: weights + biases", book["fc"], fc, unit="",
                       note=f"{fc} = 784×30 + 30", count=fc, exact=True),
            report.row("6.13c", "ratio FC(784→30) / conv(20, 5×5)", book["ratio"], fc / conv, unit="",
                       note="the book: about 40 times as many parameters", exact=True)]
    nets = {}
    for spec in ROWS:
        if spec["arch"] != "counts":
            nets.setdefault((spec["arch"], spec["n"]), []).append(spec["id"])
    for (arch, n), ids in nets.items():
        per_layer = layer_parameter_counts(architecture(arch, "sigmoid", n), key)
        rows.append(report.row(f"6.13@{ids[0]}", f"total parameters of the net of {', '.join(ids)}", None,
                               sum(per_layer), unit="", note="per layer: " + " + ".join(map(str, per_layer))
                               + f" = {sum(per_layer)}", per_layer=per_layer, count=sum(per_layer), rows=ids,
                               exact=True))
    return rows


def predictions_record(predictions):
    """Each net's test predictions [K, n] as K strings of digits (row 6.12's
    ``test_predictions``: 10,000 characters a net), so the vote can be
    recomputed from results.json without the weights (``recorded_vote``)."""
    return ["".join(map(str, np.asarray(p, dtype=int))) for p in predictions]


def recorded_vote(row):
    """The plurality vote of the nets whose predictions row 6.12 recorded."""
    from nndl_jax import train

    preds = np.array([[int(c) for c in p] for p in row["test_predictions"]])
    return np.asarray(train.plurality_vote(preds, 10))


def _progress(label, epochs, n_val, n_test, log=None):
    """One line per epoch: every net's validation and test accuracy (%), the time and the time left."""
    def show(record):
        return ("validation " + progress.numbers(100 * np.asarray(record["validation_accuracy"]) / n_val, "{:.2f}")
                + " | test " + progress.numbers(100 * np.asarray(record["test_accuracy"]) / n_test, "{:.2f}"))
    return progress.progress(label, epochs, show, log=log)


def _mosaic(tiles, cols, pad=1):
    """Tiles [m, h, w] (each scaled to [0, 1]) in a grid, separated by ``pad`` pixels."""
    m, h, w = tiles.shape
    rows = -(-m // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), np.nan)
    for i, t in enumerate(tiles):
        lo, hi = t.min(), t.max()
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = (
            (t - lo) / (hi - lo) if hi > lo else 0.5)
    return out


def _filters(args, row_id, net_layers, params, net=0):
    """filters_<row>_layer_0.png (and _1 for two conv layers): the learned
    filters of the row's net ``net`` (the first: seed --seed), as the book's
    net_full_layer_0.png / _1.png; dark = positive weight, as in the book.
    One file per row, so rows run by several processes into one folder keep
    their own figures."""
    from nndl_jax.network3 import ConvPoolLayer

    convs = [i for i, layer in enumerate(net_layers) if isinstance(layer, ConvPoolLayer)]
    for j, i in enumerate(convs[:2]):
        w = np.asarray(params[i]["w"][net])             # [k, c, 5, 5]
        tiles = w.reshape(-1, w.shape[2], w.shape[3])   # layer 1: row k holds its c input filters
        fig, path = report.figure(args, f"filters_{row_id}_layer_{j}")
        if fig is None:
            return
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(_mosaic(tiles, w.shape[1] if j else 10), cmap="Greys", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"row {row_id}, conv layer {j}: {w.shape[0]} filters {w.shape[2]}×{w.shape[3]}"
                     + (f" over {w.shape[1]} input maps (one row per filter)" if j else ""))
        report.save(fig, path)


def _ensemble_errors(args, test, vote, errors, limit=40):
    fig, path = report.figure(args, "ensemble_errors")
    if fig is None:
        return
    shown = errors[:limit]
    cols = 10
    rows = max(1, -(-len(shown) // cols))
    fig.set_size_inches(cols * 0.9, rows * 1.1 + 0.4)
    for i, idx in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(test.x[idx].reshape(28, 28), cmap="Greys", interpolation="nearest")
        ax.set_title(f"{test.y[idx]}→{vote[idx]}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"ensemble errors (true→predicted): {len(errors)} of {len(test.y)}"
                 + (f", first {limit} shown" if len(errors) > limit else ""), fontsize=9)
    report.save(fig, path)


def command_line(argv=None, **how):
    """The chapter's command line parsed (``driver.parse_args``); ``how``:
    ``plan_only`` (for the planner: parsed, nothing started), ``book_plan``, ``run_session``."""
    # quick: one net per row unless --seeds is given (the dropout rows still train 5)
    return driver.parse_args("chap6", __doc__, argv, row_ids=ROW_IDS, add_arguments=add_arguments,
                             devices_per_core=True, quick_seeds=QUICK["seeds"], **how)


def main(argv=None, book_plan=None, run_session=None):
    args = command_line(argv, book_plan=book_plan, run_session=run_session)
    if args.train_size is not None and args.train_size < MB:
        raise session.Refusal(f"chap6: --train-size must be at least the mini-batch size {MB}")
    seeds = ensemble_seeds(args)
    bad = [i for i in args.nets or () if not 0 <= i < len(seeds)]
    if bad:
        raise session.Refusal(f"chap6: --nets {' '.join(map(str, bad))}: the ensemble has nets 0 to "
                              f"{len(seeds) - 1} (seeds {seeds[0]}–{seeds[-1]}; more with --seeds)")
    args = args.replace(nets=asked_nets(args))
    rows, payload = run(args)
    return driver.finish(args, rows, **payload)


if __name__ == "__main__":
    raise SystemExit(session.main_entry(main))
