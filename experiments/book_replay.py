"""The book's seeded figure scripts replayed with the book's own random streams.

    python -m experiments.chap3 --book-seed 12345678 [--only 3.7 ...]

Four of the book's figure scripts seed both random modules
(``random.seed(12345678); np.random.seed(12345678)``) before training with
network2.py, so their recorded curves (``fig/*.json``) follow from the seed:

- ``fig/overfitting.py``, run four times (one process each, so each run starts
  from the seed): 1,000 images for 400 epochs with λ 0 (``overfitting.json``,
  row 3.4) and λ 0.1 (``regularized.json``, 3.6); all 50,000 for 30 epochs
  with λ 0 (``overfitting_full.json``, 3.5) and λ 5 (``regularized_full.json``,
  3.7). [784, 30, 10], η 0.5, mini-batches of 10, the large initialization
  (the constructor's default draw, then ``large_weight_initializer``'s), test
  cost and accuracy and training cost and accuracy after every epoch.
- ``fig/weight_initialization.py`` (3.10 and 3.10-100): one net trained twice
  on the same list: first from the constructor's default weights, then, after
  ``large_weight_initializer``, from the stream's next draw; the second run's
  shuffles continue the first run's stream and list order. Validation accuracy.
- ``fig/multiple_eta.py`` (3.18): three nets in turn (η 0.025, 0.25, 2.5), each
  constructor drawing default weights from the continuing stream, the shuffles
  continuing over one list. Training cost.
- ``fig/more_data.py`` (3.14): one net, re-drawn with ``large_weight_initializer``
  before each of nine training-set sizes; each size trains on a fresh slice
  of the unshuffled list, the shuffle stream continuing. Final validation
  accuracy only.

A replay draws the same weights and the same orders (``nndl_jax.book_random``),
computes in float64 on the pickle's pixels (byte/256), and trains through the
project's one loop (``train.fit`` with ``orders=``). Its sums are not formed in
the book's order (the book sums per-example gradients one by one and computes
``(1 − ηλ/n)·w − (η/m)·Σ∇``; here ``jax.grad`` of the mean cost and an optax
step), so the weights differ from the book's in the last bits, and the
difference grows over the epochs: each replayed curve records how many epochs
equal the book's (accuracies exactly, costs to ``COST_RTOL``) and where the
first difference appears.

Each script run is a job of the chapter's row driver (``jobs``: ``driver.Job``
``<row>@book``, keyed by the seed), so a replay has what every row has: its
training state saved after every epoch (``checkpoints.row_checkpoint``; a script
that trains several nets saves each as ``<row>@book@<which>``), ``--resume``
(continue it, or skip it when recorded) and ``--restart``, ``--part`` / ``--plan``,
the one progress printer (``progress.progress``), and its rows recorded by the
driver. ``--book-seed`` implies ``--x64`` (``implied``, the run context as the
option implies it): the run's own float64 setting, applied by
``driver.parse_args`` before any array is made.

Rows are recorded as ``<row>@book`` (e.g. ``3.7@book``) beside the rows trained
with JAX keys, with ``book_seed`` and, per curve, the match; ``reproduced/
chap3-book-replay/`` holds them for seed 12345678 (``experiments/book_seeds.py``
puts each beside its chap3 row in REPORT.md).

What the replays show (seed 12345678, float64 on the CPU):

- exact, every epoch of every recorded curve: 3.4 and 3.6 (400 epochs on
  1,000 images: test and training accuracy, and costs to 1e-4), 3.10 and
  3.10-100 (both initializations, 30 epochs each), 3.18a-b (η 0.025 and
  0.25: training cost to 1e-4, in fact to 3e-13), 3.14 (all nine sizes, up to
  15,000 epochs of 100 images). These also confirm how the scripts use the
  streams: the second and third runs of one process continue both streams
  (and the shuffled list), and more_data slices the unshuffled list afresh.
- 3.7: test accuracy equal in 29 of 30 epochs (epoch 27: 9,621 against the
  book's 9,620), peak 96.49 % and final 95.61 % as the book's; training
  accuracy 28/30 (one image off, twice); costs within 4e-5 relative. The
  difference is the order of the mini-batch sum: a float64 NumPy run of the
  book's own per-example loop equals the book's test accuracy in 30/30 epochs,
  and so does the same loop written in JAX (each example's outer products
  added in the mini-batch's order, then w ← (1 − ηλ/n)·w − (η/m)·Σ; about
  0.5 s an epoch on the CPU), which ``train`` does not offer (yet).
- 3.5 (λ 0 on 50,000 images): equal for 2 epochs, then a difference of one
  image at epoch 3 grows (test cost 2e-6 relative at epoch 3, 2e-3 at epoch 4):
  without weight decay the 5,000 steps of an epoch amplify a last-bit
  difference about 10^4-fold per epoch, and the book's own per-example loop
  in NumPy leaves the book's curve as well, at epoch 4. Beyond epoch 3 the
  curve is another sample of the same run, not the book's.
- 3.18c (η 2.5): differs from the first epoch. η 2.5 is past the stable
  learning rate and the cost oscillates: the per-example NumPy loop gives a
  third value (1.003 after epoch 1; book 0.925, this replay 1.108).
"""
import argparse
from functools import partial

import numpy as np

from experiments import checkpoints, driver, progress, report, session
from nndl_jax import book_random, mnist_loader
from nndl_jax.data import Dataset

# JAX starts only when a replay computes: replay_fit and replay_more_data import it (and the
# parts of nndl_jax built on it), so chapter 3's `--help` answers without it.

COST_RTOL = 1e-4
"""A replayed cost equals the book's when within this relative difference."""

MONITORS = ("evaluation_cost", "evaluation_accuracy", "training_cost", "training_accuracy")
"""network2's four monitors, in the order the book's scripts store them in fig/*.json."""

# One entry per seeded book script run (see the module docstring).
OVERFITTING = [
    dict(id="3.4", curve="overfitting", n_train=1000, epochs=400, lmbda=0.0, quote="test_peak", book=82.27,
         what="overfitting: 1,000 images, 400 epochs, η 0.5, λ 0 (test, peak)"),
    dict(id="3.5", curve="overfitting_full", n_train=None, epochs=30, lmbda=0.0, quote="training_final",
         book=97.86, what="full data, 30 epochs, η 0.5, λ 0: training accuracy (test peak: book 95.33)",
         drift="without weight decay, 5,000 steps an epoch amplify a last-bit difference about 10^4-fold "
               "per epoch: a float64 NumPy run of the book's own per-example rule leaves the book's curve "
               "too, one epoch later"),
    dict(id="3.6", curve="regularized", n_train=1000, epochs=400, lmbda=0.1, quote="test_peak", book=87.1,
         what="L2 on 1,000 images: λ 0.1, 400 epochs, η 0.5 (test, peak)"),
    dict(id="3.7", curve="regularized_full", n_train=None, epochs=30, lmbda=5.0, quote="test_peak", book=96.49,
         what="L2 full data: λ 5.0, η 0.5, 30 epochs, [784,30,10] (test, peak)",
         drift="the mini-batch gradient is summed in another order than the book's per-example loop; "
               "a float64 NumPy run of that loop equals the book's test accuracy in 30/30 epochs"),
]
WEIGHT_INIT = [
    dict(id="3.10", curve="weight_initialization_30", hidden=30, eta=0.1, lmbda=5.0, epochs=30,
         book={"default": 96.50, "large": 96.37},
         what="weight init [784,30,10], η 0.1, λ 5.0, 30 epochs (validation): default init, final"),
    dict(id="3.10-100", curve="weight_initialization_100", hidden=100, eta=0.1, lmbda=5.0, epochs=30,
         book={"default": 97.81, "large": 97.42},
         what="weight init [784,100,10], η 0.1, λ 5.0, 30 epochs (validation): default init, final"),
]
MULTIPLE_ETA = dict(id="3.18", curve="multiple_eta", etas=(0.025, 0.25, 2.5), lmbda=5.0, epochs=30,
                    book=(0.339, 0.33, 0.861),
                    drift={2.5: {"drift": "η 2.5 is past the stable learning rate: a last-bit difference "
                                          "reaches the cost within the first epoch; a float64 NumPy run of the "
                                          "book's per-example rule gives a third value (1.003 after epoch 1; "
                                          "book 0.925, this replay 1.108)"}})
MORE_DATA = dict(id="3.14", curve="more_data", sizes=(100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000),
                 examples=1_500_000, eta=0.5,
                 what="more data: validation accuracy after 1,500,000/size epochs, λ = size·1e-4 (50,000 shown)")
SEEDED_ROWS = [r["id"] for r in OVERFITTING] + [r["id"] for r in WEIGHT_INIT] + [MULTIPLE_ETA["id"], MORE_DATA["id"]]
"""The chapter-3 rows this module replays (``--only`` takes them)."""

# --- the command line ---------------------------------------------------------------------

def book_seed_arg(text):
    """An argparse type: the book's seeds are NumPy's and Python's, whole numbers in [0, 2**32)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (the book's: "
                                         f"{book_random.BOOK_SEED})") from None
    if not 0 <= seed < 2 ** 32:
        raise argparse.ArgumentTypeError(f"{seed}: a seed must lie in 0 .. 2**32 - 1 (the book's: "
                                         f"{book_random.BOOK_SEED})")
    return seed


def implied(args):
    """The run context as ``--book-seed S`` implies it: with ``x64`` (a replay
    computes in float64, and the run's own x64 setting, applied by
    ``driver.parse_args`` before any array is made, switches JAX to it;
    nothing else here touches JAX's configuration). ``args`` itself is not
    changed: a context never is."""
    return args.replace(x64=True) if getattr(args, "book_seed", None) is not None else args


def add_arguments(parser):
    parser.add_argument("--book-seed", type=book_seed_arg, default=None, metavar="S",
                        help="replay the book's seeded figure scripts (rows " + " ".join(SEEDED_ROWS)
                             + ") with the book's random streams from seed S (the book's: "
                             f"{book_random.BOOK_SEED}), in float64 (implies --x64); recorded as <row>@book")


def check_rows(args):
    """Before MNIST loads: with ``--book-seed``, every ``--only`` row must be
    one that is replayed; else a ``session.Refusal`` listing those that are."""
    if getattr(args, "book_seed", None) is None:
        return
    other = [r for r in args.only or () if r not in SEEDED_ROWS]
    if other:
        raise session.Refusal(f"{args.chapter}: --book-seed replays only the rows {' '.join(SEEDED_ROWS)}; "
                             f"{' '.join(other)} {'is' if len(other) == 1 else 'are'} not replayed: drop "
                             f"{'it' if len(other) == 1 else 'them'} from --only, or run without --book-seed")


# --- one replayed run ----------------------------------------------------------------------

def book_sets(splits):
    """The three sets with the pickle's pixels (byte/256)."""
    return list(mnist_loader.with_book_pixels(splits))


def replay_fit(params, training, evaluation, epochs, eta, lmbda, orders, *, sizes, label, on_epoch=None,
               checkpoint=None):
    """Train one net from the book's ``params`` in the book's ``orders``
    ([epochs, n]) with network2's rule (cross-entropy, L2, mini-batches of
    10); returns the History's arrays ``{name: [epochs]}``, the final params
    (stacked, K = 1) and the trainer. Progress goes through ``progress.progress``
    (a tenth of the epochs apart); ``on_epoch(e, record)`` is called after each
    epoch too; ``checkpoint`` (``checkpoints.row_checkpoint``): saved after every
    epoch, and continued from when it exists."""
    import jax
    import jax.numpy as jnp

    from nndl_jax import costs, layers, train
    from nndl_jax.activations import sigmoid

    if not jax.config.jax_enable_x64:
        raise RuntimeError("a book replay computes in float64: enable jax_enable_x64 first "
                           "(python -m experiments.chap3 --book-seed S does)")
    trainer = train.trainer_for(layers.mlp_net(sizes, sigmoid), costs.cross_entropy, 10, penalty="l2")
    stacked = train.stack([jax.tree_util.tree_map(jnp.asarray, params)])
    printer = progress.progress(label, epochs, monitors_text, every=max(1, epochs // 10))

    def each_epoch(e, record):
        printer(e, record)
        if on_epoch is not None:
            on_epoch(e, record)

    fitted = train.fit(trainer, stacked, (training.x, training.y), epochs, key=jax.random.key(0), eta=eta,
                       lmbda=lmbda, evaluation=evaluation, orders=lambda e: orders[e], on_epoch=each_epoch,
                       checkpoint=checkpoint)
    if fitted.history.resumed_epochs == epochs:   # restored whole: no epoch ran to print its events
        for event in fitted.history.events:
            print(f"  [{label}] {progress.event_text(event)}", flush=True)
    arrays = {k: v[:, 0] for k, v in fitted.history.as_arrays().items() if v.ndim == 2}
    return arrays, fitted.params, trainer


def monitors_text(record):
    """network2's monitors in an epoch's record, for the progress line."""
    return ", ".join(f"{k} {np.asarray(record[k])[0]:.6g}" for k in MONITORS if k in record)


def replay_checkpoint(args, run_id, **meta):
    """The checkpoint of one replayed training run (``checkpoints.row_checkpoint``):
    ``run_id`` is the job's id, or ``<job id>@<which run>`` for the runs of a
    script that trains several; ``meta`` says which run it is."""
    return checkpoints.row_checkpoint(args, run_id, dict(meta, run=run_id, book_seed=args.book_seed))


def curve_match(measured, book, kind):
    """How a replayed curve compares with the book's recorded one, epoch by
    epoch (the book's first ``len(measured)`` epochs: a --quick replay runs a few).

    ``kind`` "accuracy": equal means the same count; "cost": within ``COST_RTOL``
    relative. Returns {"equal", "epochs", "first_difference" (epoch number from
    1, or None), "largest_difference"} (counts for accuracies, relative for costs)."""
    m, b = np.asarray(measured, float), np.asarray(book, float)[:len(measured)]
    if m.shape != b.shape:
        raise ValueError(f"a replayed curve of {m.shape[0]} epochs cannot match the book's {b.shape[0]}")
    diff = np.abs(m - b) if kind == "accuracy" else np.abs(m - b) / np.abs(b)
    same = diff == 0 if kind == "accuracy" else diff <= COST_RTOL
    first = None if same.all() else int(np.argmin(same)) + 1
    return {"equal": int(same.sum()), "epochs": int(len(same)), "first_difference": first,
            "largest_difference": float(diff.max()), "kind": kind,
            **({"tolerance": COST_RTOL} if kind == "cost" else {})}


def replay_label(matches, spec):
    """"book-exact replay" when every compared epoch equals the book's, else
    "book-seed replay" followed by why it leaves the book (``spec["drift"]``)."""
    exact = all(m["equal"] == m["epochs"] for m in matches)
    return "book-exact replay" if exact else "book-seed replay" + (f" ({spec['drift']})" if spec.get("drift") else "")


def short_match(matches, quoted=None, unit="epochs"):
    """The replay in the row's title: "book-exact replay: 30/30 epochs" when
    every compared curve equals the book's, else "book-seed replay: <quoted> k/n
    epochs equal" for the curve the book quotes (``quoted``: its name and match)."""
    matches = list(matches)
    if not matches:
        return "book-seed replay (no book curve to compare)"
    if all(m["equal"] == m["epochs"] for m in matches):
        return f"book-exact replay: {matches[0]['epochs']}/{matches[0]['epochs']} {unit}"
    name, m = quoted or ("", matches[0])
    return f"book-seed replay: {name + ' ' if name else ''}{m['equal']}/{m['epochs']} {unit} equal"


def match_text(name, match):
    """"test accuracy 29/30 epochs equal (first difference at epoch 27, largest 1)"."""
    text = f"{name} {match['equal']}/{match['epochs']} epochs equal"
    if match["first_difference"] is None:
        return text
    largest = (f"{match['largest_difference']:.0f}" if match["kind"] == "accuracy"
               else f"{match['largest_difference']:.1e} relative")
    return text + f" (first difference at epoch {match['first_difference']}, largest {largest})"


# --- fig/overfitting.py ----------------------------------------------------------------------

def replay_overfitting(args, splits, spec):
    """One run of fig/overfitting.py with seed ``args.book_seed``: the row ``<id>@book``."""
    seed = args.book_seed
    training, _, test = book_sets(splits)
    n = len(training.y) if spec["n_train"] is None else spec["n_train"]
    training = Dataset(training.x[:n], training.y[:n])
    sizes = [784, 30, 10]
    params = book_random.network2_weights(seed, sizes, large=True)
    orders = book_random.book_orders(seed, n, spec["epochs"])
    h, _, _ = replay_fit(params, training, {"evaluation": (test.x, test.y), "training": (training.x, training.y)},
                         spec["epochs"], 0.5, spec["lmbda"], orders, sizes=sizes, label=f"{spec['id']}@book",
                         checkpoint=replay_checkpoint(args, f"{spec['id']}@book", script="fig/overfitting.py"))
    curves = {k: h[k] for k in MONITORS}
    book = report.book_curve(spec["curve"])
    matches = None if book is None else {
        k: curve_match(curves[k], book[i], "accuracy" if k.endswith("accuracy") else "cost")
        for i, k in enumerate(MONITORS)}
    test_acc = 100.0 * curves["evaluation_accuracy"] / len(test.y)
    train_acc = 100.0 * curves["training_accuracy"] / n
    measured = test_acc.max() if spec["quote"] == "test_peak" else train_acc[-1]
    names = dict(zip(MONITORS, ("test cost", "test accuracy", "training cost", "training accuracy")))
    replay_note = (replay_label(matches.values(), spec) + ": "
                   + "; ".join(match_text(names[k], matches[k]) for k in MONITORS)
                   + f" (costs to {COST_RTOL:g} relative)") if matches else "book curve not found"
    note = (f"seed {seed} with the book's streams (fig/overfitting.py), float64: {replay_note}. "
            f"Test peak {test_acc.max():.2f} % at epoch {int(test_acc.argmax()) + 1}, final {test_acc[-1]:.2f} %; "
            f"training accuracy final {train_acc[-1]:.2f} %")
    quoted = "evaluation_accuracy" if spec["quote"] == "test_peak" else "training_accuracy"
    title = short_match((matches or {}).values(), (names[quoted], matches[quoted]) if matches else None)
    return [report.row(f"{spec['id']}@book", f"{spec['what']} — {title}", spec["book"], measured,
                       set="test" if spec["quote"] == "test_peak" else "training", seeds=[seed],
                       book_seed=seed, script="fig/overfitting.py", book_curve=f"fig/{spec['curve']}.json",
                       epochs=spec["epochs"], n_train=n, lmbda=spec["lmbda"], eta=0.5,
                       test_peak=float(test_acc.max()), test_peak_epoch=int(test_acc.argmax()) + 1,
                       test_final=float(test_acc[-1]), training_final=float(train_acc[-1]),
                       replay=matches, curves=curves, beside=spec["id"], note=note)]


# --- fig/weight_initialization.py, fig/multiple_eta.py, fig/more_data.py -------------------

def replay_weight_init(args, splits, spec):
    """fig/weight_initialization.py: one net, default weights for 30 epochs,
    then ``large_weight_initializer`` and 30 more epochs on the same list."""
    seed, sizes = args.book_seed, [784, spec["hidden"], 10]
    training, validation, _ = book_sets(splits)
    streams, order = book_random.BookStreams(seed), list(range(len(training.y)))
    book = report.book_curve(spec["curve"])
    acc, matches = {}, {}
    for init in ("default", "large"):  # the constructor's draw, then large_weight_initializer's
        draw = book_random.default_weights if init == "default" else book_random.large_weights
        params = draw(streams.numpy, sizes)
        orders = book_random.epoch_orders(streams.python, order, spec["epochs"])
        h, _, _ = replay_fit(params, training, {"evaluation": (validation.x, validation.y)}, spec["epochs"],
                             spec["eta"], spec["lmbda"], orders, sizes=sizes, label=f"{spec['id']}@book {init}",
                             checkpoint=replay_checkpoint(args, f"{spec['id']}@book@{init}",
                                                          script="fig/weight_initialization.py"))
        acc[init] = h["evaluation_accuracy"]
        if book is not None:
            matches[init] = curve_match(acc[init], book[f"{init}_weight_initialization"][1], "accuracy")
    pct = {k: 100.0 * v / len(validation.y) for k, v in acc.items()}
    note = (f"seed {seed} with the book's streams (fig/weight_initialization.py), float64: "
            + replay_label(matches.values(), spec) + ": "
            + "; ".join(match_text(f"{k} init validation accuracy", m) for k, m in matches.items())
            + ". " + "; ".join(f"{k} init: epoch 1 {v[0]:.2f} %, final {v[-1]:.2f} %" for k, v in pct.items()))
    title = short_match(matches.values(), ("default init", matches.get("default")) if matches else None)
    return [report.row(f"{spec['id']}@book", f"{spec['what']} — {title}", spec["book"]["default"],
                       pct["default"][-1], set="validation", seeds=[seed], book_seed=seed,
                       script="fig/weight_initialization.py", book_curve=f"fig/{spec['curve']}.json",
                       eta=spec["eta"], lmbda=spec["lmbda"], epochs=spec["epochs"], replay=matches or None,
                       curves=acc, large_final=float(pct["large"][-1]), book_large_final=spec["book"]["large"],
                       beside=f"{spec['id']}c", note=note)]


def replay_multiple_eta(args, splits, spec):
    """fig/multiple_eta.py: three nets in turn, each constructor drawing default
    weights from the continuing stream, all shuffling one list: training cost."""
    seed, sizes = args.book_seed, [784, 30, 10]
    training, _, _ = book_sets(splits)
    streams, order = book_random.BookStreams(seed), list(range(len(training.y)))
    book = report.book_curve(spec["curve"])
    rows = []
    for i, eta in enumerate(spec["etas"]):
        params = book_random.default_weights(streams.numpy, sizes)
        orders = book_random.epoch_orders(streams.python, order, spec["epochs"])
        h, _, _ = replay_fit(params, training, {"training": (training.x, training.y)}, spec["epochs"], eta,
                             spec["lmbda"], orders, sizes=sizes, label=f"{spec['id']}@book η {eta}",
                             checkpoint=replay_checkpoint(args, f"{spec['id']}@book@{eta:g}",
                                                          script="fig/multiple_eta.py"))
        cost = h["training_cost"]
        match = None if book is None else curve_match(cost, book[i][2], "cost")
        note = (f"seed {seed} with the book's streams (fig/multiple_eta.py, run {i + 1} of 3), float64: "
                + (f"{replay_label([match], spec.get('drift', {}).get(eta) or {})}: "
                   f"{match_text('training cost', match)} (to {COST_RTOL:g} relative)" if match
                   else "book curve not found"))
        rows.append(report.row(f"{spec['id']}{'abc'[i]}@book", f"η = {eta}: training cost at the last epoch "
                               f"— {short_match([match] if match else [])}", spec["book"][i], float(cost[-1]),
                               unit="", set="training",
                               seeds=[seed], book_seed=seed, script="fig/multiple_eta.py",
                               book_curve=f"fig/{spec['curve']}.json", eta=eta, lmbda=spec["lmbda"],
                               replay=match, curve=cost, beside=f"{spec['id']}{'abc'[i]}", note=note))
    return rows


def replay_more_data(args, splits, spec):
    """fig/more_data.py: one net re-drawn with ``large_weight_initializer``
    before each size; each size trains on a fresh slice of the unshuffled
    list, the shuffle stream continuing; validation accuracy at the end."""
    import jax.numpy as jnp

    seed, sizes = args.book_seed, [784, 30, 10]
    training, validation, _ = book_sets(splits)
    streams = book_random.BookStreams(seed)
    book_random.default_weights(streams.numpy, sizes)  # the constructor's draw, replaced before any training
    accuracies = []
    for size in spec["sizes"]:
        epochs, lmbda = spec["examples"] // size, size * 0.0001  # the book's lmbda = size*0.0001
        params = book_random.large_weights(streams.numpy, sizes)
        orders = book_random.epoch_orders(streams.python, list(range(size)), epochs)
        sub = Dataset(training.x[:size], training.y[:size])
        _, final, trainer = replay_fit(params, sub, {}, epochs, spec["eta"], lmbda, orders, sizes=sizes,
                                       label=f"{spec['id']}@book {size}",
                                       checkpoint=replay_checkpoint(args, f"{spec['id']}@book@{size}",
                                                                    script="fig/more_data.py"))
        correct, _ = trainer.evaluate(final, jnp.asarray(validation.x, jnp.float64), jnp.asarray(validation.y),
                                      jnp.asarray([lmbda]))
        accuracies.append(int(np.asarray(correct)[0]) / 100.0)
        print(f"  [{spec['id']}@book] {size} images, {epochs} epochs: {accuracies[-1]:.2f} %", flush=True)
    book = report.book_curve(spec["curve"])
    equal = None if book is None else sum(a == b for a, b in zip(accuracies, book))
    label = replay_label([{"equal": equal, "epochs": len(accuracies)}], spec) if book else "book curve not found"
    note = (f"seed {seed} with the book's streams (fig/more_data.py), float64: {label}: "
            f"{equal}/{len(accuracies)} sizes equal; measured " + ", ".join(f"{a:.2f}" for a in accuracies)
            + (f"; book {', '.join(f'{b:.2f}' for b in book)}" if book else ""))
    title = short_match([{"equal": equal, "epochs": len(accuracies)}] if book else [], unit="sizes")
    return [report.row(f"{spec['id']}@book", f"{spec['what']} — {title}",
                       None if book is None else book[-1], accuracies[-1], set="validation", seeds=[seed],
                       book_seed=seed, script="fig/more_data.py", book_curve=f"fig/{spec['curve']}.json",
                       train_sizes=list(spec["sizes"]), accuracies=accuracies, book_accuracies=book,
                       replay={"equal": equal, "sizes": len(accuracies)}, beside=f"{spec['id']}@{spec['sizes'][-1]}",
                       note=note)]


QUICK = dict(epochs=3, sizes=(100, 200), examples=600)
"""--quick: the first 3 epochs of each run (compared with the book's first 3);
more_data on 100 and 200 images for 6 and 3 epochs (its numbers say nothing)."""

REPLAYS = ([(spec, replay_overfitting) for spec in OVERFITTING] + [(spec, replay_weight_init) for spec in WEIGHT_INIT]
           + [(MULTIPLE_ETA, replay_multiple_eta), (MORE_DATA, replay_more_data)])
"""Each seeded script run and the function that replays it, in the book's order."""


def replayed_rows(spec):
    """The table rows the replay of ``spec`` records."""
    if spec is MULTIPLE_ETA:
        return [f"{spec['id']}{'abc'[i]}@book" for i in range(len(spec["etas"]))]
    return [f"{spec['id']}@book"]


def jobs(args, splits):
    """The replays asked for (``--only``, else all), as the row driver's jobs
    (``driver.Job``: checkpoints, ``--resume``, ``--part``, rows recorded by
    the driver): one per script run, ``<row>@book``, keyed by the seed."""
    check_rows(args)
    out = []
    for spec, replay in REPLAYS:
        if not driver.wanted(args, spec["id"]):
            continue
        rows = replayed_rows(spec)
        if args.quick:
            spec = dict(spec, **{k: v for k, v in QUICK.items() if k in spec})
        out.append(driver.Job(f"{spec['id']}@book", rows, partial(run_replay, replay, spec, splits),
                              settings={"book_seed": args.book_seed}, seeds=[args.book_seed]))
    return out


def run_replay(replay, spec, splits, args):
    """One replay as its job runs it: a header line (printed only by a job that
    runs, not one that another ``--part`` runs or ``--resume`` skips), then its rows."""
    print(f"\n== {spec['id']}@book: {spec.get('what', spec['curve'])} — the book's streams, "
          f"seed {args.book_seed}", flush=True)
    return replay(args, splits, spec)


def run(args, splits):
    """Replay every seeded row asked for through the row driver; their rows."""
    return driver.run_jobs(args, jobs(args, splits))
