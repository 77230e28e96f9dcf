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
  --nets I [I ...] rows 6.11/6.12: train only these of the ensemble's nets
                   (0 is seed --seed); the others are taken from --out
  --devices N      CPU devices to ask JAX for when run as a command (default:
                   one per core this process may run on); 1 for a lone net,
                   whose step then has both cores' threads to itself
The first two are recorded in the JSON and printed in the table's notes, so a
shortened run is never passed off as the book's setting.

    python -m experiments.chap6 --quick
    python -m experiments.chap6 --only 6.1 6.2 --seeds 3
    python -m experiments.chap6 --only 6.11 6.12 --epochs 10 --train-size 10000
    python -m experiments.chap6 --only 6.11 6.12 --nets 0 1 --out reproduced/chap6 --resume
    python -m experiments.chap6 --only 6.11 6.12 --nets 4 --devices 1 --out reproduced/chap6 --resume
"""
import argparse
import sys
import time

import jax
import numpy as np

from experiments import report
from nndl_jax import data, devices, network3, train
from nndl_jax.network3 import ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer

MB = 10

# id, experiment, architecture, activation, hidden size, eta, lmbda, epochs, expanded data, book (%)
ROWS = [
    ("6.1", "Shallow: FC(784→100) + softmax, sigmoid", "shallow", "sigmoid", 100, 0.1, 0.0, 60, False, 97.80),
    ("6.2", "conv(20) + FC(2880→100) + softmax, sigmoid", "conv", "sigmoid", 100, 0.1, 0.0, 60, False, 98.78),
    ("6.3", "Omit FC: conv(20) + softmax, sigmoid", "conv_only", "sigmoid", 0, 0.1, 0.0, 60, False, None),
    ("6.4", "Two conv: conv(20) conv(40) FC(640→100), sigmoid", "dbl_conv", "sigmoid", 100, 0.1, 0.0, 60, False, 99.06),
    ("6.5", "Two conv, tanh (book: qualitative only)", "dbl_conv", "tanh", 100, 0.1, 0.0, 60, False, None),
    ("6.6", "Two conv, ReLU, η=0.03, λ=0.1", "dbl_conv", "relu", 100, 0.03, 0.1, 60, False, 99.23),
    ("6.7", "Two conv, ReLU, expanded data (250k)", "dbl_conv", "relu", 100, 0.03, 0.1, 60, True, 99.37),
    ("6.8a", "Expanded, FC 300", "dbl_conv", "relu", 300, 0.03, 0.1, 60, True, 99.46),
    ("6.8b", "Expanded, FC 1000", "dbl_conv", "relu", 1000, 0.03, 0.1, 60, True, 99.43),
    ("6.9", "Expanded, two FC 100-100", "dbl_conv_2fc", "relu", 100, 0.03, 0.1, 60, True, 99.43),
    ("6.10a", "Expanded, two FC 300-300", "dbl_conv_2fc", "relu", 300, 0.03, 0.1, 60, True, 99.48),
    ("6.10b", "Expanded, two FC 1000-1000", "dbl_conv_2fc", "relu", 1000, 0.03, 0.1, 60, True, 99.47),
    ("6.11", "Dropout p=0.5: FC 1000-1000, expanded, 40 epochs", "dropout", "relu", 1000, 0.03, 0.0, 40, True, 99.60),
    ("6.12", "Ensemble of 5 dropout nets (6.11), plurality vote", "dropout", "relu", 1000, 0.03, 0.0, 40, True, 99.67),
    ("6.13", "Parameter counts, from the initialized params", "counts", "sigmoid", 30, None, None, 0, False,
     {"conv": 520, "fc": 23550, "ratio": 40}),
]
COLUMNS = ("id", "experiment", "arch", "activation", "n", "eta", "lmbda", "epochs", "expanded", "book")
ENSEMBLE_SIZE = 5
QUICK = {"train_size": 100, "eval_size": 100, "epochs": 1, "seeds": 1}


def base_id(row_id):
    """"6.8a" -> "6.8": --only selects a row and all its variants."""
    return row_id.rstrip("ab")


# What --only accepts: every row id, and "6.8" / "6.10" for both variants.
ROW_IDS = list(dict.fromkeys(i for r in ROWS for i in (base_id(r[0]), r[0])))


def architecture(arch, activation, n, mb=MB):
    """The book's conv.py networks as network3 layers."""
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
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per row instead of the book's (default: the book's; --quick: 1)")
    p.add_argument("--train-size", type=int, default=None,
                   help="training images instead of the book's 50,000 (expanded rows: 5x this)")
    p.add_argument("--nets", type=int, nargs="+", default=None, metavar="I",
                   help="rows 6.11/6.12: train only these of the ensemble's nets (0 = seed --seed, "
                        "1 = --seed + 1, ...), each recorded as row 6.11@<seed>; 6.11 and 6.12 are "
                        "written once all the nets are recorded in --out (default: every net)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="CPU devices for JAX, read before JAX starts (default: one per core); "
                        "1 for a lone net, e.g. the fifth dropout net")


def checked_devices(n):
    """``n`` (a --devices value, None for the default), or SystemExit when below 1."""
    if n is not None and n < 1:
        raise SystemExit(f"chap6: --devices {n}: need at least 1 CPU device (default: one per core)")
    return n


def requested_devices(argv):
    """The --devices of a command line (None when absent), read before JAX
    starts, since the device count is fixed once it has run anything."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return checked_devices(p.parse_known_args(argv)[0].devices)


def load(args):
    """The three sets, cut to the run's sizes, and the expanded training set."""
    splits = data.load_mnist(args.data_dir)
    n_train = args.train_size or (QUICK["train_size"] if args.quick else len(splits.training.y))
    n_eval = QUICK["eval_size"] if args.quick else None
    cut = lambda d, n: data.Dataset(d.x[:n], d.y[:n])  # noqa: E731
    training = cut(splits.training, n_train)
    return training, cut(splits.validation, n_eval), cut(splits.test, n_eval)


def settings_note(args, row_epochs, n_train, expanded):
    notes = []
    if args.epochs_run(row_epochs) != row_epochs:
        notes.append(f"{args.epochs_run(row_epochs)} epochs (book {row_epochs})")
    book_n = 250_000 if expanded else 50_000
    if n_train != book_n:
        notes.append(f"{n_train} training images (book {book_n})")
    return "SHORTENED: " + ", ".join(notes) if notes else ""


def run(args):
    training, validation, test = load(args)
    expanded = None
    rows, extra = [], {"settings": {"epochs_override": args.epochs, "train_size": len(training.y),
                                    "eval_size": len(test.y), "mini_batch_size": MB}, "curves": {}}
    ensemble_done = False   # 6.11 and 6.12 share one ensemble
    for spec in ROWS:
        r = dict(zip(COLUMNS, spec))
        if not report.wanted(args, base_id(r["id"])) and not report.wanted(args, r["id"]):
            continue
        if r["arch"] == "counts":  # no training: count the params of freshly initialized nets
            rows.extend(parameter_count_rows(r, jax.random.key(args.seed)))
            continue
        if r["expanded"] and expanded is None:
            t0 = time.time()
            expanded = data.expand(training.x, training.y, seed=0)
            print(f"expanded {len(training.y)} training images to {len(expanded.y)} "
                  f"({time.time() - t0:.1f} s)")
        train_set = expanded if r["expanded"] else training
        epochs = args.epochs_run(r["epochs"])
        net_layers = architecture(r["arch"], r["activation"], r["n"])
        if r["arch"] == "dropout":   # 6.11 and 6.12: one ensemble, handled once
            if not ensemble_done:
                ensemble_done = True
                rows.extend(ensemble_rows(args, net_layers, train_set, validation, test, epochs))
            continue
        seeds = report.seeds(args)
        done = report.finished_row(args, r["id"], epochs=epochs, train_size=len(train_set.y), seeds=seeds)
        if done is not None:
            print(f"\n{r['id']}: already in {args.out}/results.json (finished {done.get('finished')}); "
                  "--resume skips it", flush=True)
            continue
        out = train_row(args, r["id"], r, net_layers, seeds, train_set, validation, test, epochs)
        note = settings_note(args, r["epochs"], len(train_set.y), r["expanded"])
        if r["id"] == "6.5":
            note = (note + "; " if note else "") + ("book: tanh trains a little faster, final "
                                                   "accuracy very similar to sigmoid (6.4)")
        rows.append(report.row(r["id"], r["experiment"], r["book"], 100 * out["test_at_best"],
                               note=note, **row_settings(r, out, seeds, epochs, train_set)))
        curves = {r["id"]: {"validation_accuracy": out["validation_accuracy"],
                            "test_accuracy": out["test_accuracy"]}}
        extra["curves"].update(curves)
        if r["arch"] != "shallow":
            _filters(args, r["id"], net_layers, out["params"])
        report.record(args, rows[-1:], settings=extra["settings"], curves=curves)
        report.remove_checkpoints(args, r["id"])
    return rows, extra


def train_row(args, run_id, r, net_layers, seeds, train_set, validation, test, epochs):
    """Train the nets of ``seeds`` for row ``r`` (checkpointed as ``run_id``),
    printing the estimate first and a line per epoch: ``network3.train_many``'s dict."""
    print(f"\n{run_id}: {r['experiment']} — {len(seeds)} nets, {epochs} epochs, "
          f"{len(train_set.y)} images, η={r['eta']}, λ={r['lmbda']}", flush=True)
    ckpt = report.row_checkpoint(args, run_id, {
        "row": run_id, "layers": [layer.spec() for layer in net_layers], "seeds": seeds,
        "epochs": epochs, "expanded": r["expanded"]})
    if not args.quick:
        print("  " + estimate(net_layers, seeds, train_set, epochs - ckpt.epochs_done(), r["eta"],
                              r["lmbda"], validation, test), flush=True)
    progress = _progress(run_id, epochs, len(validation.y), len(test.y), time.time())
    return network3.train_many(net_layers, MB, train_set, epochs, r["eta"], validation, test, r["lmbda"],
                               seeds=seeds, on_epoch=progress, checkpoint=ckpt)


def row_settings(r, out, seeds, epochs, train_set):
    """What every trained row records beside its measured figure."""
    common = dict(seeds=seeds, eta=r["eta"], lmbda=r["lmbda"], epochs=epochs, book_epochs=r["epochs"],
                  train_size=len(train_set.y), seconds=out["seconds"], best_epoch=out["best_epoch"],
                  best_validation=100 * out["best_validation"], diverged_at=out["diverged_at"],
                  devices=out["devices"])
    if out["earlier_seconds"] or out["untimed_epochs"]:  # resumed: the time of its earlier sittings
        common |= dict(earlier_seconds=out["earlier_seconds"], untimed_epochs=out["untimed_epochs"])
    return common


def ensemble_seeds(args):
    """The seeds of rows 6.11/6.12's dropout nets: --seed, --seed + 1, ...,
    max(--seeds, 5) of them (the vote takes the first five)."""
    return [args.seed + k for k in range(max(args.seeds, ENSEMBLE_SIZE))]


PER_NET = ("best_epoch", "best_validation", "diverged_at")   # [K] in a run's settings, one value a net


def net_row_id(seed):
    """The row that records one dropout net of the ensemble."""
    return f"6.11@{seed}"


def ensemble_rows(args, net_layers, train_set, validation, test, epochs):
    """Rows 6.11 and 6.12 (and one row ``6.11@<seed>`` per dropout net).

    Trains the nets this command asks for (``--nets``, default all; with
    ``--resume`` those already recorded in --out with the same epochs and
    data are skipped) as one K-net run, records each net as its own row the
    moment the run ends (its test accuracy at the best validation epoch, its
    curves and its 10,000 test predictions), then, when every net of the
    ensemble is recorded, composes 6.11 (the nets' accuracies) and 6.12 (the
    plurality vote of the first five, from the recorded predictions, so nets
    trained in other sittings vote alike). The seeds decide the nets: a net
    trained alone or beside others is the same net."""
    r11, r12 = (dict(zip(COLUMNS, spec)) for spec in ROWS if spec[0] in ("6.11", "6.12"))
    seeds = ensemble_seeds(args)
    bad = [i for i in args.nets or () if not 0 <= i < len(seeds)]
    if bad:
        raise SystemExit(f"chap6: --nets {' '.join(map(str, bad))}: the ensemble has nets 0 to {len(seeds) - 1} "
                         f"(seeds {seeds[0]}–{seeds[-1]}; more with --seeds)")
    asked = [seeds[i] for i in sorted(set(args.nets))] if args.nets else seeds
    same = dict(epochs=epochs, train_size=len(train_set.y))
    todo = [s for s in asked if report.finished_row(args, net_row_id(s), seeds=[s], **same) is None]
    if len(todo) < len(asked):
        print(f"\n6.11: nets of seeds {', '.join(str(s) for s in asked if s not in todo)} already in "
              f"{args.out}/results.json; --resume skips them", flush=True)
    note = settings_note(args, r11["epochs"], len(train_set.y), r11["expanded"])
    rows = []
    if todo:
        run_id = "6.11@" + "-".join(map(str, todo))
        out = train_row(args, run_id, r11, net_layers, todo, train_set, validation, test, epochs)
        preds = np.asarray(network3.predictions(net_layers, out["params"], test.x))
        shared = row_settings(r11, out, todo, epochs, train_set)
        curves = {}
        for k, s in enumerate(todo):
            per_net = {key: (v[k] if key in PER_NET else v) for key, v in shared.items()}
            rows.append(report.row(net_row_id(s), f"{r11['experiment']}: net {seeds.index(s)} (seed {s})", None,
                                   100 * out["test_at_best"][k], note=note, **per_net
                                   | {"seeds": [s], "trained_with": todo,
                                      "test_predictions": predictions_record(preds[k:k + 1])[0]}))
            curves[net_row_id(s)] = {"validation_accuracy": out["validation_accuracy"][:, k],
                                     "test_accuracy": out["test_accuracy"][:, k]}
        if seeds[0] in todo:   # the filters of the first net, as for every other row
            _filters(args, "6.11", net_layers, out["params"], net=todo.index(seeds[0]))
        report.record(args, rows, curves=curves)
        report.remove_checkpoints(args, run_id)
    recorded = [report.recorded_row(args, net_row_id(s), seeds=[s], **same) for s in seeds]
    missing = [i for i, n in enumerate(recorded) if n is None]
    if missing:
        print(f"\n6.11/6.12: {len(seeds) - len(missing)} of the ensemble's {len(seeds)} nets are recorded in "
              f"{args.out}/results.json; the rows are written once the others are trained "
              f"(--nets {' '.join(map(str, missing))})", flush=True)
        return rows
    return rows + composed_ensemble_rows(args, r11, r12, recorded, test, note)


def composed_ensemble_rows(args, r11, r12, nets, test, note):
    """Rows 6.11 and 6.12 from the recorded rows of the ensemble's nets."""
    results = report.read_results(args.out)
    seeds = [n["seeds"][0] for n in nets]
    # the training time of every run that trained some of the nets, each counted once; the runs
    # other than this command's are "earlier" (not in this run's wall time)
    runs = {(n["run"], tuple(n["trained_with"])): n for n in nets}.values()
    seconds = sum(n["seconds"] for n in runs)
    earlier = sum(n["seconds"] if n["run"] != args.run_id else n.get("earlier_seconds", 0.0) for n in runs)
    common = dict(eta=r11["eta"], lmbda=r11["lmbda"], epochs=nets[0]["epochs"], book_epochs=r11["epochs"],
                  train_size=nets[0]["train_size"], seconds=seconds, nets=[n["id"] for n in nets],
                  devices=max(n["devices"] for n in nets))
    if earlier:
        common["earlier_seconds"] = earlier
    per_net = {key: [n[key] for n in nets] for key in PER_NET}
    curves = {"6.11": {key: np.stack([results["curves"][n["id"]][key] for n in nets], axis=1)
                       for key in ("validation_accuracy", "test_accuracy")}}
    row11 = report.row("6.11", r11["experiment"], r11["book"], [n["measured"] for n in nets], note=note,
                       seeds=seeds, **common, **per_net)
    ens = nets[:ENSEMBLE_SIZE]
    vote = recorded_vote({"test_predictions": [n["test_predictions"] for n in ens]})
    errors = np.flatnonzero(vote != test.y)
    row12 = report.row("6.12", r12["experiment"], r12["book"], 100 * float(np.mean(vote == test.y)),
                       note=(note + "; " if note else "") + f"{len(errors)} errors of {len(test.y)}"
                       + " (book: 33 of 10,000)",
                       seeds=seeds[:ENSEMBLE_SIZE], **common | {"nets": [n["id"] for n in ens]}, errors=len(errors),
                       test_predictions=[n["test_predictions"] for n in ens])
    _ensemble_errors(args, test, vote, errors)
    report.record(args, [row11, row12], curves=curves)
    return [row11, row12]


def layer_parameter_counts(net_layers, key):
    """The number of parameters (weights and biases) in each layer of a
    network3 net, counted from the leaves of its initialized params."""
    init = network3.build(net_layers).init
    _, params = init(key, (784,))
    return [sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(p)) for p in params]


def parameter_count_rows(r, key):
    """Row 6.13: the book's arithmetic (a conv layer of 20 5×5 feature maps
    against a fully connected layer of 30 neurons on the 784 pixels), counted
    from initialized params, then the total of every chapter-6 net (rows
    whose nets differ only in activation, η, λ or data share one line)."""
    conv = layer_parameter_counts(architecture("conv_only", r["activation"], 0), key)[0]
    fc = layer_parameter_counts(architecture("shallow", r["activation"], r["n"]), key)[0]
    book = r["book"]
    rows = [report.row("6.13a", "conv(20 maps, 5×5) layer: shared weights + biases", book["conv"], conv, unit="",
                       note=f"{conv} = 20 × (5×5 + 1)", count=conv),
            report.row("6.13b", "FC(784→30) layer: weights + biases", book["fc"], fc, unit="",
                       note=f"{fc} = 784×30 + 30", count=fc),
            report.row("6.13c", "ratio FC(784→30) / conv(20, 5×5)", book["ratio"], fc / conv, unit="",
                       note="the book: about 40 times as many parameters")]
    nets = {}
    for spec in ROWS:
        row_id, arch, n = spec[0], spec[2], spec[4]
        if arch != "counts":
            nets.setdefault((arch, n), []).append(row_id)
    for (arch, n), ids in nets.items():
        per_layer = layer_parameter_counts(architecture(arch, "sigmoid", n), key)
        rows.append(report.row(f"6.13@{ids[0]}", f"total parameters of the net of {', '.join(ids)}", None,
                               sum(per_layer), unit="", note="per layer: " + " + ".join(map(str, per_layer))
                               + f" = {sum(per_layer)}", per_layer=per_layer, count=sum(per_layer), rows=ids))
    return rows


def predictions_record(predictions):
    """Each net's test predictions [K, n] as K strings of digits (row 6.12's
    ``test_predictions``: 10,000 characters a net), so the vote can be
    recomputed from results.json without the weights (``recorded_vote``)."""
    return ["".join(map(str, np.asarray(p, dtype=int))) for p in predictions]


def recorded_vote(row):
    """The plurality vote of the nets whose predictions row 6.12 recorded."""
    preds = np.array([[int(c) for c in p] for p in row["test_predictions"]])
    return np.asarray(train.plurality_vote(preds, 10))


PROBE_STEPS = 200


def estimate(net_layers, seeds, train_set, epochs, eta, lmbda, validation, test):
    """A line estimating how long a row's ``epochs`` will take, printed before it
    starts: the row's nets (same seeds, so the same layout over the devices)
    train for ``PROBE_STEPS`` mini-batches, timed once compiled, with
    evaluation sets of 10 and of 1,000 images (their difference prices the
    evaluation), scaled to the row's mini-batches and evaluation sets."""
    n = min(PROBE_STEPS * MB, len(train_set.y))
    probe = data.Dataset(train_set.x[:n], train_set.y[:n])

    def seconds(n_eval):
        ev = data.Dataset(validation.x[:n_eval], validation.y[:n_eval])
        run = lambda: network3.train_many(net_layers, MB, probe, 1, eta, ev, ev, lmbda, seeds=seeds)  # noqa: E731
        run()  # compiles
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0

    small, large = seconds(10), seconds(1000)
    per_step = small / (n // MB)
    per_image = max(large - small, 0.0) / (2 * (1000 - 10))  # both sets evaluated
    per_epoch = per_step * (len(train_set.y) // MB) + per_image * (len(validation.y) + len(test.y))
    return (f"estimate: {report.duration(per_epoch * epochs)} for {epochs} epochs "
            f"({report.duration(per_epoch)} an epoch; {1000 * per_step:.2f} ms a mini-batch step of the "
            f"{len(seeds)} net{'s' * (len(seeds) != 1)}, from a {n // MB}-step probe)")


def _progress(label, epochs, n_val, n_test, t0):
    """One line per epoch: every net's validation and test accuracy, elapsed time and an ETA
    (from the epochs run in this process, so a resumed run's estimate is right too)."""
    first = []

    def on_epoch(e, record):
        first.append(e) if not first else None
        print(f"  [{label}] epoch {e + 1}/{epochs}: validation "
              + " ".join(f"{100 * v / n_val:.2f}" for v in record["validation_accuracy"]) + " | test "
              + " ".join(f"{100 * t / n_test:.2f}" for t in record["test_accuracy"])
              + f"  ({report.eta(t0, e + 1 - first[0], epochs - first[0])})", flush=True)
    return on_epoch


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


def main(argv=None):
    args = report.parse_args("chap6", __doc__, argv, row_ids=ROW_IDS, add_arguments=add_arguments)
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("chap6: --epochs must be at least 1")
    if args.train_size is not None and args.train_size < MB:
        raise SystemExit(f"chap6: --train-size must be at least the mini-batch size {MB}")
    n_devices = checked_devices(args.devices)
    if n_devices is not None and n_devices != len(jax.local_devices()):
        print(f"chap6: --devices {n_devices} has no effect here: JAX already runs with "
              f"{len(jax.local_devices())} devices (it applies to `python -m experiments.chap6`)", flush=True)
    if args.quick and "--seeds" not in (argv if argv is not None else sys.argv[1:]):
        args.seeds = QUICK["seeds"]  # quick: one net per row (the dropout rows still train 5)
    quick_epochs = QUICK["epochs"] if args.quick else None
    book_epochs = args.epochs
    args.epochs_run = lambda book: book_epochs or quick_epochs or book
    rows, payload = run(args)
    return report.finish(args, rows, **payload)


if __name__ == "__main__":
    report.stop_at_once_on_interrupt()
    devices.use_cpu_devices_unless_started(requested_devices(sys.argv[1:]))  # default: one per core
    main()
