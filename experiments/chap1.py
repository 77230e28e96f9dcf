"""Chapter 1: the book's network.py on MNIST, and the two baselines.

    python -m experiments.chap1 [--quick] [--seeds 3] [--out DIR] [--only 1.1 1.5]
                                [--svm-train-size 50000]

Sigmoid neurons, quadratic cost, weights and biases drawn from N(0, 1), plain
mini-batch SGD with mini-batches of 10, 30 epochs on the 50,000 training
images, accuracy on the 10,000 test images after every epoch; and the
chapter's exercise, a [784,10] network with no hidden layer (1.8, trained the
same way, η = 3.0; the book gives no number). The rows that
share an architecture (1.1 with 1.4, 1.2 with 1.3) and all their seeds are one
vmapped program: e.g. [784,100,10] with η = 3.0 and η = 0.001, 3 seeds each,
is 6 stacked networks trained together (``train.fit`` with η as a [K] array).
Run k of every row uses seed ``--seed + k``, so the η variants of one
architecture start from the same initial weights.

For the working rows the table shows the peak test accuracy over the epochs
(the book reports best-of-three peaks); for the failure cases (η = 0.001,
η = 100) the final-epoch accuracy, which is what the book's transcripts show.

The baselines: average darkness (the book's mnist_average_darkness.py: mean
total pixel value of each digit over the training images; a test image gets
the digit whose mean is nearest its own total), and an SVM (the book's
mnist_svm.py: scikit-learn's SVC with the 2015 defaults, i.e. an RBF kernel,
C = 1, gamma = 1/784, which today must be asked for as ``gamma='auto'``).

--quick: 2 epochs on 5,000 training and 1,000 test images, SVM on 2,000.
"""
import os
import threading
import time
from pathlib import Path

import numpy as np

from experiments import checkpoints, driver, progress, report, session, store
from nndl_jax.data import Dataset, load_mnist

# JAX starts only when a network trains: train_group imports it (and the parts of
# nndl_jax built on it), so `--help` and the row table answer without it.

# The book's rows (BOOK-RESULTS.md, chapter 1). "measure": which number of the
# per-epoch curve the book quotes: its peak, or the final epoch.
ROWS = [
    dict(id="1.1", experiment="[784,30,10], η=3.0, mb 10, 30 epochs: peak test accuracy",
         kind="sgd", sizes=(784, 30, 10), eta=3.0, book=95.42, measure="peak"),
    dict(id="1.2", experiment="[784,100,10], η=3.0, mb 10, 30 epochs: peak test accuracy",
         kind="sgd", sizes=(784, 100, 10), eta=3.0, book=96.59, measure="peak"),
    dict(id="1.3", experiment="[784,100,10], η=0.001 (too small): accuracy at epoch 29",
         kind="sgd", sizes=(784, 100, 10), eta=0.001, book=21.42, measure="final"),
    dict(id="1.4", experiment="[784,30,10], η=100.0 (too large): accuracy at epoch 29",
         kind="sgd", sizes=(784, 30, 10), eta=100.0, book=9.82, measure="final"),
    dict(id="1.5", experiment="average-darkness baseline (nearest mean darkness)",
         kind="darkness", book=22.25),
    dict(id="1.6", experiment="SVM baseline: SVC(gamma='auto'), RBF, C=1, γ=1/784",
         kind="svm", book=94.35),
    dict(id="1.8", experiment="exercise: [784,10] (no hidden layer), η=3.0: peak test accuracy",
         kind="sgd", sizes=(784, 10), eta=3.0, book=None, measure="peak"),
]

# The book's transcripts (test images correct out of 10,000, by epoch), drawn on the figure.
BOOK_TRANSCRIPTS = {
    "1.1": {0: 9129, 1: 9295, 2: 9348, 27: 9528, 28: 9542, 29: 9534},
    "1.3": {0: 1139, 1: 1136, 2: 1135, 27: 2101, 28: 2123, 29: 2142},
    "1.4": {0: 1009, 1: 1009, 2: 1009, 3: 1009, 27: 982, 28: 982, 29: 982},
}

EPOCHS, MINI_BATCH_SIZE = 30, 10
QUICK = dict(epochs=2, n_train=5000, n_test=1000, svm_train_size=2000)


# --- the baselines -----------------------------------------------------------

def average_darkness(training, test):
    """The book's mnist_average_darkness.py: number of test images correct.

    The darkness of an image is the sum of its pixel values. Average it per
    digit over the training images; guess, for each test image, the digit
    whose average darkness is nearest the image's own. Sums are taken in
    float64, so the result does not depend on summation order.
    """
    train_dark = np.asarray(training.x, np.float64).sum(axis=1)
    train_y = np.asarray(training.y)
    digits = np.arange(10)
    means = np.array([train_dark[train_y == d].mean() for d in digits])
    test_dark = np.asarray(test.x, np.float64).sum(axis=1)
    guesses = digits[np.argmin(np.abs(test_dark[:, None] - means[None, :]), axis=1)]
    return int(np.sum(guesses == np.asarray(test.y)))


# The SVM baseline on the full data (fit on 50,000 images, then predicting 10,000),
# measured on a 2-core CPU shared with other work (2026-12-04): the estimate printed
# while it runs scales these by the data size.
SVM_SECONDS_50K = {"fit": 265.0, "predict": 77.0}


def svm_seconds(n_train, n_test):
    """About how long `svm_baseline` takes: fit time grows as the square of the
    training images (libsvm's kernel evaluations), prediction with the support
    vectors (about n_train ** 0.8) times the test images."""
    fit = SVM_SECONDS_50K["fit"] * (n_train / 50000) ** 2
    return fit, SVM_SECONDS_50K["predict"] * (n_train / 50000) ** 0.8 * (n_test / 10000)


PROGRESS_CAP = 300.0  # seconds: the longest silence between two progress lines of a long wait


def progress_waits(every, cap=PROGRESS_CAP):
    """The waits between the progress lines of a long wait, endlessly: ``every``
    seconds at first, then half the time waited so far (never less than
    ``every``, never more than ``cap``). A 50-minute SVM fit then says how far
    it is in about 17 lines, not 150, and a log or a test's captured output of a
    stalled wait stays short, while the first lines still come soon."""
    waited = 0.0
    while True:
        wait = min(max(every, waited / 2), cap)
        waited += wait
        yield wait


def _say(line):
    print(line, flush=True)


def while_printing_progress(what, expected, work, every=20.0, say=_say):
    """``work()``, saying ``  SVM: <what>, <time> so far (about <expected> ...)``
    (through ``say``: printed by default) after each of `progress_waits(every)`
    until it returns; its result, or its exception.

    ``work`` runs in a daemon thread while this (main) thread only waits, so
    Ctrl-C stops the command at once even while libsvm computes for minutes
    in C (nothing of an unfinished fit is kept)."""
    outcome = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    t0, worker = time.time(), threading.Thread(target=run, name="svm", daemon=True)
    worker.start()
    for wait in progress_waits(every):
        worker.join(wait)
        if not worker.is_alive():
            break
        say(f"  SVM: {what}, {report.duration(time.time() - t0)} so far "
            f"(about {report.duration(expected)} expected on a 2-core CPU)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def predict_on_every_core(clf, x):
    """``clf.predict(x)`` with the images split over one thread per core: libsvm
    predicts each image on its own, without the GIL, so the answer is the same."""
    parts = np.array_split(np.asarray(x), max(1, min(len(x), os.cpu_count() or 1)))
    out = [None] * len(parts)

    def predict(i):
        try:
            out[i] = clf.predict(parts[i])
        except BaseException as e:  # noqa: BLE001 - raised again below, in the caller's thread
            out[i] = e

    threads = [threading.Thread(target=predict, args=(i,), daemon=True) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in out:
        if isinstance(o, BaseException):
            raise o
    return np.concatenate(out)


def svm_baseline(training, test, train_size):
    """The book's mnist_svm.py: SVC with an RBF kernel, C = 1, gamma = 1/784,
    trained on the first ``train_size`` training images; number of test images
    correct, or None when scikit-learn is not installed. Prints a line now and
    then while libsvm works (after 20 s, then less and less often:
    `progress_waits`), with an estimate of its time from the data size; Ctrl-C
    stops it at once."""
    try:
        from sklearn import svm
    except ImportError:
        print("  (scikit-learn is not installed: skipping the SVM baseline; "
              "pip install 'nndl-jax[baselines]')")
        return None
    n = min(int(train_size), len(training.y))
    # gamma='auto': the 2015 default, 1 / n_features; C = 1, kernel 'rbf'. (A larger kernel
    # cache than the default 200 MB does not help: the rows libsvm keeps asking for fit in it.)
    clf = svm.SVC(gamma="auto")
    fit_s, predict_s = svm_seconds(n, len(test.y))
    t0 = time.time()
    print(f"  SVM: fitting SVC(gamma='auto') on {n} training images "
          f"(about {report.duration(fit_s)} on a 2-core CPU) ...", flush=True)
    while_printing_progress(f"fitting on {n} images", fit_s, lambda: clf.fit(training.x[:n], training.y[:n]))
    print(f"  SVM: fitted in {time.time() - t0:.1f} s; predicting {len(test.y)} test images "
          f"(about {report.duration(predict_s)}) ...", flush=True)
    predicted = while_printing_progress(f"predicting {len(test.y)} images", predict_s,
                                        lambda: predict_on_every_core(clf, test.x))
    correct = int(np.sum(predicted == test.y))
    print(f"  SVM: {correct} / {len(test.y)} correct ({time.time() - t0:.1f} s in all)", flush=True)
    return correct


# --- the networks --------------------------------------------------------------

ROW = {r["id"]: r for r in ROWS}


def group_id(rows):
    """The checkpoint id of a group of rows trained together, e.g. "1.1+1.2"."""
    return "+".join(r["id"] for r in rows)


def train_group(args, rows, seeds, training, test, epochs):
    """Train every run of ``rows`` (one architecture, several η) as one program.

    Returns accuracy curves [epochs, len(rows), len(seeds)] (test images correct)
    and the epoch at which each net diverged [len(rows), len(seeds)] (-1: never).
    """
    import jax.numpy as jnp

    from nndl_jax import costs, layers, train
    from nndl_jax.activations import sigmoid

    sizes = rows[0]["sizes"]
    net = layers.mlp_net(sizes, sigmoid, init=layers.large_weight_init)
    init_keys, train_keys = train.seed_keys(seeds)
    k = len(seeds)
    init_keys, train_keys = (jnp.concatenate([init_keys] * len(rows)),
                             jnp.concatenate([train_keys] * len(rows)))
    params = train.init_many(net.init, init_keys, (sizes[0],))
    eta = np.repeat([r["eta"] for r in rows], k)  # train.fit casts to the params' dtype
    trainer = train.trainer_for(net, costs.quadratic, MINI_BATCH_SIZE)
    n_test = len(test.y)
    arch = "[" + ",".join(map(str, sizes)) + "]"

    def show(record):
        acc = np.asarray(record["evaluation_accuracy"]).reshape(len(rows), k)
        return " | ".join(f"{r['id']} η={r['eta']:g}: " + ", ".join(map(str, a)) + f" / {n_test}"
                          for r, a in zip(rows, acc.tolist()))

    print(f"{arch}: {progress.plural(len(rows), 'learning rate')} x {progress.plural(k, 'seed')} = "
          f"{progress.plural(len(eta), 'network')} in one program",
          flush=True)
    ckpt = checkpoints.row_checkpoint(args, group_id(rows), {"rows": [r["id"] for r in rows],
                                                         "sizes": list(sizes), "seeds": list(seeds)})
    _, _, history = train.fit(trainer, params, (training.x, training.y), epochs,
                              key=train_keys, eta=eta, evaluation={"evaluation": (test.x, test.y)},
                              on_epoch=progress.progress(group_id(rows), epochs, show,
                                                       log=progress.metrics_log(args, group_id(rows))),
                              checkpoint=ckpt)
    return (np.asarray(history["evaluation_accuracy"]).reshape(-1, len(rows), k),
            np.asarray(history.diverged_at).reshape(len(rows), k))


def _subset(data, n):
    return Dataset(data.x[:n], data.y[:n]) if n else data


def sgd_groups(args):
    """The SGD rows asked for, grouped by architecture (the rows of one
    architecture train as one program). With --resume, a group saved by an
    earlier command with another --only (say 1.1+1.4 when 1.1 is asked) is
    continued as it was saved, its rows all recorded."""
    asked = [r for r in ROWS if r["kind"] == "sgd" and driver.wanted(args, r["id"])]
    saved = [set(i.split("+")) for i in checkpoints.saved_checkpoints(args)] if args.resume else []
    groups = []
    for sizes in dict.fromkeys(r["sizes"] for r in asked):
        ids = {r["id"] for r in asked if r["sizes"] == sizes}
        for group in saved:
            if group & ids and group <= set(ROW) and all(ROW[i].get("sizes") == sizes for i in group):
                groups.append([r for r in ROWS if r["id"] in group])
                ids -= group
        if ids:
            groups.append([r for r in ROWS if r["id"] in ids])
    return groups


def jobs(args, data):
    """The rows asked for as the driver's jobs: the SGD groups, the darkness
    baseline, then (after the network rows' table is printed) the SVM."""
    epochs = QUICK["epochs"] if args.quick else args.epochs
    svm_size = QUICK["svm_train_size"] if args.quick else args.svm_train_size
    if data is not None:
        svm_size = min(svm_size, len(data.training.y))
    out = [driver.Job(group_id(g), [r["id"] for r in g], lambda a, g=g: sgd_units(a, g, data, epochs),
                      settings={"epochs": epochs}, compose=compose) for g in sgd_groups(args)]
    if driver.wanted(args, "1.5"):
        out.append(driver.Job("1.5", ["1.5"], lambda a: darkness_row(a, data)))
    if driver.wanted(args, "1.6"):
        out.append(driver.Job("1.6", ["1.6"], lambda a: svm_row(a, data, svm_size), settings={"n_train": svm_size}))
    return driver.asked_jobs(args, out)


def planned_jobs(args):
    """The jobs asked for, listed without data (for ``--part`` and ``--plan``)."""
    return jobs(args, None)


def sgd_units(args, group, data, epochs):
    """The seeds the driver gives (``driver.seeds``) of every row of ``group``
    trained as one program: one unit record per row and seed (its curve), and
    the group's time and the nets that diverged as the payload."""
    seeds = driver.seeds(args)
    t0 = time.time()
    acc, diverged = train_group(args, group, seeds, data.training, data.test, epochs)
    wall = time.time() - t0
    arch = "[" + ",".join(map(str, group[0]["sizes"])) + "]"
    units = [dict(row=r["id"], seed=s, curve=acc[:, i, k].tolist(), epochs=epochs, n_test=len(data.test.y),
                  diverged_at=int(diverged[i, k]))
             for i, r in enumerate(group) for k, s in enumerate(seeds)]
    payload = {"timings_seconds": {arch: wall}}
    return units, payload | store.divergence(getattr(args, "checkpoint_id", None) or group_id(group), diverged.ravel())


def compose(units, results=None):
    """The SGD rows of a group from its unit records ({row: [one record a seed]}),
    wherever each seed was trained: the row's curves stacked seed by seed."""
    rows = []
    for row_id, records in units.items():
        curve = np.asarray([u["curve"] for u in records]).T    # [epochs, seeds]: images correct, as recorded
        first = records[0]
        rows.append(sgd_row(first.get("quick", False), ROW[row_id], curve, first["epochs"],
                            [u["seed"] for u in records], first["n_test"]))
    return rows, {}


def darkness_row(args, data):
    n_test = len(data.test.y)
    correct = average_darkness(data.training, data.test)
    print(f"average darkness: {correct} / {n_test}", flush=True)
    return [report.row("1.5", ROW["1.5"]["experiment"], ROW["1.5"]["book"], 100.0 * correct / n_test,
                       note=f"{correct} / {n_test} (book: 2225 / 10000)",
                       correct=correct, n_test=n_test, n_train=len(data.training.y))]


def svm_row(args, data, n):
    n_test, t0 = len(data.test.y), time.time()
    correct = svm_baseline(data.training, data.test, n)
    return [report.row("1.6", ROW["1.6"]["experiment"], ROW["1.6"]["book"],
                       None if correct is None else 100.0 * correct / n_test,
                       note="skipped: scikit-learn not installed" if correct is None
                       else f"{correct} / {n_test}, trained on {n} images ({time.time() - t0:.0f} s)",
                       correct=correct, n_test=n_test, n_train=n, seconds=time.time() - t0)]


def run(args):
    progress.say_start(args)
    splits = load_mnist(args.data_dir)
    epochs = QUICK["epochs"] if args.quick else args.epochs
    data = splits._replace(training=_subset(splits.training, QUICK["n_train"] if args.quick else None),
                           test=_subset(splits.test, QUICK["n_test"] if args.quick else None))
    print(f"chap1: {len(data.training.y)} training images, {len(data.test.y)} test images, {epochs} epochs, "
          f"mini-batch {MINI_BATCH_SIZE}, seeds {driver.seeds(args)}", flush=True)
    todo = jobs(args, data)
    networks = [j for j in todo if j.id != "1.6"]
    rows = driver.run_jobs(args, networks)
    if rows:
        plot(args, store.recorded_rows(args))
    if len(networks) < len(todo):
        if rows:  # the network rows' table now (the SVM row can take a long time), not again at the end
            progress.show_table(args, rows)
        rows += driver.run_jobs(args, todo[len(networks):])
    return rows, {"n_train": len(data.training.y), "n_test": len(data.test.y), "epochs": epochs}


def sgd_row(quick, r, curve, epochs, seeds, n_test):
    """The table row of SGD row ``r`` from its curves [epochs, seeds] (test images correct)."""
    c = 100.0 * curve / n_test          # [epochs, seeds], percent
    peak, final = c.max(axis=0), c[-1]
    measured = peak if r["measure"] == "peak" else final
    note = (f"peak after {', '.join(str(e) for e in c.argmax(axis=0) + 1)} epochs (per seed); final epoch "
            f"{', '.join(f'{v:.2f}' for v in final)}%") if r["measure"] == "peak" else \
           f"peak {', '.join(f'{v:.2f}' for v in peak)}%"
    if quick or epochs != EPOCHS:  # the row's label names the book's setting
        note = f"SHORTENED: {progress.plural(epochs, 'epoch')}{' on a subset (--quick)' if quick else ''}; " + note
    return report.row(r["id"], r["experiment"], r["book"], measured.tolist(), note=note,
                      sizes=list(r["sizes"]), eta=r["eta"], measure=r["measure"],
                      epochs=epochs, mini_batch_size=MINI_BATCH_SIZE, seeds=seeds,
                      peak=peak.tolist(), final=final.tolist(), curve=curve.T.astype(int).tolist(), n_test=n_test)

def plot(args, rows):
    """chap1_accuracy.png: test accuracy per epoch, every run of every SGD row
    in results.json (this run's and earlier runs'), with the book's transcripts."""
    sgd = [r for r in rows if "curve" in r]
    if not sgd:
        return
    fig, path = report.figure(args, "chap1_accuracy")
    if fig is None:
        return
    ax = fig.add_subplot(1, 1, 1)
    colors = dict(zip(("1.1", "1.2", "1.3", "1.4", "1.8"), ("C0", "C1", "C2", "C3", "C4")))
    for r in sgd:
        color, n_test = colors.get(r["id"]), r["n_test"]
        for k, curve in enumerate(r["curve"]):
            ax.plot(np.arange(len(curve)), 100.0 * np.asarray(curve) / n_test, color=color,
                    alpha=0.8, lw=1.2, label=f"{r['id']} {r['sizes']} η={r['eta']:g}" if k == 0 else None)
        book = BOOK_TRANSCRIPTS.get(r["id"])
        if book and n_test == 10000:
            ax.plot(list(book), [v / 100.0 for v in book.values()], "x", color=color, ms=7,
                    label=f"{r['id']} book transcript")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Chapter 1: network.py on MNIST (each line one seed)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    report.save(fig, path)


def redraw(args, results):
    """The figures drawn from rows, drawn again from ``results`` into ``args.out``
    (``nndl-jax merge``): the names written."""
    plot(args, results["rows"])
    return [f.name for f in [Path(args.out) / "chap1_accuracy.png"] if f.exists()]


def add_arguments(p):
    """The options only this chapter takes."""
    p.add_argument("--svm-train-size", type=driver.positive_int, default=50000,
                   help="training images for the SVM baseline (default %(default)s; --quick: 2000)")
    p.add_argument("--epochs", type=driver.positive_int, default=EPOCHS,
                   help="epochs per network (default: the book's %(default)s; --quick: 2)")


def command_line(argv=None, **how):
    """The chapter's command line parsed (``driver.parse_args``); ``how``:
    ``plan_only`` (for the planner: parsed, nothing started), ``book_plan``, ``run_session``."""
    return driver.parse_args("chap1", __doc__, argv, row_ids={r["id"]: r["experiment"] for r in ROWS},
                             add_arguments=add_arguments, **how)


def main(argv=None, book_plan=None, run_session=None):
    args = command_line(argv, book_plan=book_plan, run_session=run_session)
    rows, payload = run(args)
    return driver.finish(args, rows, svm_train_size=args.svm_train_size, **payload)


if __name__ == "__main__":
    raise SystemExit(session.main_entry(main))
