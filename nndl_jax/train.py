"""Training: the mini-batch cost, one SGD step, an epoch as one compiled
program, evaluation, and fitting K networks at once.

Nothing here names a particular layer or cost: a network is an
``apply(params, x, *, train, key) -> z`` function (see ``layers``) and a cost is
a ``costs.Cost``. Each layer of the transformation stack is one visible line:

- ``example_costs``: the cost of each example, ``vmap`` of the per-example cost;
- ``batch_loss``: their (masked) mean plus the weight penalty;
- ``jax.grad(batch_loss)`` and an optax update: one step;
- ``epoch``: ``lax.scan`` of the step over the mini-batches of a permutation;
- ``Trainer``: ``jit(vmap(epoch))`` over K stacked networks (K = 1 for one
  net), so repeated runs and learning-rate grids are one program.

Mini-batches follow the book: the data is shuffled (or not, with
``shuffle=False``), cut into consecutive mini-batches of ``m`` examples, and a
last short mini-batch is used with its own size (the update divides by its
length). To keep one compiled shape, the short batch is padded and masked.

Randomness: each epoch gets ``fold_in(key, epoch)``, split into a shuffle key
and a dropout key, and mini-batch ``i`` drops out with ``fold_in(dropout_key,
i)``; so epoch 7 is the same whether or not epochs 0–6 ran in this process.
"""
import functools
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nndl_jax import costs as costs_mod
from nndl_jax import devices as devices_mod

# --- the mini-batch cost and one step ---------------------------------------

def targets(y, n_out, dtype):
    """Integer class labels become one-hot vectors; target vectors pass through."""
    if jnp.issubdtype(y.dtype, jnp.integer):
        return jax.nn.one_hot(y, n_out, dtype=dtype)
    return y.astype(dtype)


def example_costs(params, x, y, *, apply, cost, train=False, key=None):
    """C_x for each example of the batch: ``vmap`` of the per-example cost."""
    z = apply(params, x, train=train, key=key)
    return jax.vmap(cost.fn)(z, targets(y, z.shape[-1], z.dtype))


def batch_loss(params, x, y, mask, c, *, apply, cost, penalty, key=None):
    """(1/m) Σ_x C_x over the unmasked examples, plus ``penalty(params, c)``."""
    per_example = example_costs(params, x, y, apply=apply, cost=cost, train=True, key=key)
    mask = mask.astype(per_example.dtype)
    loss = jnp.sum(per_example * mask) / jnp.sum(mask)
    if penalty is not None:
        loss = loss + penalty(params, c)
    return loss


def step(params, opt_state, x, y, mask, c, key, *, apply, cost, penalty, optimizer):
    """One gradient step on one mini-batch: ``jax.grad`` then the optax update."""
    grads = jax.grad(batch_loss)(params, x, y, mask, c, apply=apply, cost=cost,
                                 penalty=penalty, key=key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def minibatch_indices(n, m, key, shuffle, order=None):
    """Indices ``[num_batches, m]`` of the epoch's mini-batches and their mask.

    The order is ``order`` when given (a permutation of ``range(n)`` made on
    the host: the book-replay mode), else a permutation of ``range(n)`` from
    ``key`` (or ``range(n)`` itself when ``shuffle`` is False), cut into
    consecutive batches of ``m``; the last batch is padded with index 0 and
    masked out there.
    """
    num_batches = -(-n // m)
    if order is None:
        order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    padded = num_batches * m
    order = jnp.concatenate([order, jnp.zeros(padded - n, order.dtype)])
    mask = jnp.arange(padded) < n
    return order.reshape(num_batches, m), mask.reshape(num_batches, m)


def epoch(params, opt_state, x, y, key, c, e=0, order=None, *, apply, cost, penalty, optimizer,
          mini_batch_size, shuffle, on_iteration=None, iteration_every=1000):
    """One epoch of mini-batch SGD as a single ``lax.scan`` over mini-batches,
    in the order ``order`` when given (see ``minibatch_indices``).

    ``e`` is the epoch's number; with ``on_iteration``, the scan calls
    ``on_iteration(iteration)`` (``jax.debug.callback``) at every global
    iteration ``e * num_batches + i`` that is a multiple of
    ``iteration_every`` (network3 prints "Training mini-batch number N").
    """
    shuffle_key, dropout_key = jax.random.split(key)
    idx, mask = minibatch_indices(x.shape[0], mini_batch_size, shuffle_key, shuffle, order)

    def body(carry, batch):
        i, b_idx, b_mask = batch
        if on_iteration is not None:
            iteration = e * idx.shape[0] + i
            jax.lax.cond(iteration % iteration_every == 0,
                         lambda: jax.debug.callback(on_iteration, iteration), lambda: None)
        params, opt_state = step(*carry, x[b_idx], y[b_idx], b_mask, c,
                                 jax.random.fold_in(dropout_key, i), apply=apply,
                                 cost=cost, penalty=penalty, optimizer=optimizer)
        return (params, opt_state), None

    (params, opt_state), _ = jax.lax.scan(
        body, (params, opt_state), (jnp.arange(idx.shape[0]), idx, mask))
    return params, opt_state


# --- evaluation --------------------------------------------------------------

def predict(params, x, *, apply, chunk=1000):
    """The output-layer weighted inputs z for all of ``x``, computed in chunks
    (``lax.map``) so that large sets fit in memory."""
    n = x.shape[0]
    chunk = min(chunk, n)
    num = -(-n // chunk)
    pad = num * chunk - n
    xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    z = jax.lax.map(lambda xb: apply(params, xb), xp.reshape((num, chunk) + x.shape[1:]))
    return z.reshape((num * chunk,) + z.shape[2:])[:n]


def evaluate(params, x, y, lmbda, *, apply, cost, penalty, chunk=1000):
    """``(number correct, total cost)`` of the network on the data ``(x, y)``.

    The total cost is the mean of C_x plus the penalty with coefficient
    ``lmbda / len(x)``, as the book's network2 ``total_cost`` computes it.
    The number correct counts argmax(z) == y (argmax of z equals argmax of the
    output activation for sigmoid and softmax); it is 0 for real-valued targets.
    """
    z = predict(params, x, apply=apply, chunk=chunk)
    total = jnp.mean(jax.vmap(cost.fn)(z, targets(y, z.shape[-1], z.dtype)))
    if penalty is not None:
        total = total + penalty(params, lmbda / x.shape[0])
    if jnp.issubdtype(y.dtype, jnp.integer):
        correct = jnp.sum(jnp.argmax(z, axis=-1).astype(y.dtype) == y)
    else:
        correct = jnp.zeros((), jnp.int32)
    return correct, total


# --- K networks at once ------------------------------------------------------

def stack(trees):
    """Stack a list of pytrees on a new leading axis (K networks → one pytree)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree):
    """The inverse of ``stack``: one pytree per entry of the leading axis."""
    k = jax.tree_util.tree_leaves(tree)[0].shape[0]
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(k)]


@dataclass
class History:
    """What ``fit`` records, one row per epoch run, one column per network.

    ``metrics[name]``: a list of [K] arrays, one per epoch, for every name a
    record carries: ``<set>_accuracy`` (number correct) and ``<set>_cost``
    (mean cost plus the penalty with ``lmbda / len(set)``) for each named
    evaluation set (see ``fit``). ``eta``: the learning rate each epoch ran
    with. ``stopped_at``: for each net, the epoch at which a stopping rule
    (early stopping, the schedule's floor) stopped it, -1 if none did;
    ``diverged_at``: the epoch after which its parameters were no longer
    finite, -1 if they stayed finite. ``seconds``: the wall time of each epoch
    (training and evaluation), kept through checkpoints so that a run resumed
    over several sittings knows its whole time (NaN for epochs saved by a
    checkpoint that predates this record); ``resumed_epochs``: how many of them
    were restored from a checkpoint rather than run by this ``fit``.
    """

    metrics: dict = field(default_factory=dict)
    eta: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    resumed_epochs: int = 0
    stopped_at: np.ndarray | None = None
    diverged_at: np.ndarray | None = None

    def __getitem__(self, name):
        return self.metrics.get(name, [])

    def append(self, record, names):
        for name in names:
            self.metrics.setdefault(name, []).append(np.asarray(record[name]))

    def as_arrays(self):
        """Every metric and ``eta`` as NumPy arrays ``[epochs, K]`` (for JSON and plots)."""
        out = {name: np.asarray(v) for name, v in self.metrics.items()}
        out["eta"] = np.asarray(self.eta)
        return out


def metric_names(set_names):
    """The record entries ``fit`` fills for the named evaluation sets."""
    return [f"{s}_{m}" for s in set_names for m in ("accuracy", "cost")]


@dataclass(eq=False)
class Trainer:
    """Mini-batch SGD for one kind of network, compiled once.

    ``apply`` and ``cost`` define the network; ``penalty`` is None, "l2" or
    "l1"; ``momentum`` μ turns plain SGD into the book's momentum rule
    (v → μv − η∇C, w → w + v; optax's ``sgd(momentum=μ)`` is the same update
    for a fixed η). The learning rate lives in the optimizer state
    (``optax.inject_hyperparams``), one per network, so a grid of η compiles
    once and halving η on a plateau edits state and compiles nothing.

    ``compiler_options`` go to every ``jax.jit`` of the trainer: "auto" is
    ``cpu_compiler_options()`` (on the CPU, convolutions by XLA's own kernels
    rather than YNNPACK's), None is XLA's defaults, a dict is passed as is.

    ``over_k`` says how the epoch and the evaluation run K > 1 nets (see
    ``k_nets``): "vmap" (one batched step for all K; the default), "map"
    (``lax.map``: the K nets one after another in the same compiled program),
    "devices" (the K axis spread over the local devices, each running its
    nets one after another: ``devices.over_devices``) or "auto" (see
    ``k_axis_mode``; network3 uses it for conv nets). All give the same
    numbers (tests/test_core.py, tests/test_devices.py). One net (K = 1)
    always takes the vmap path.
    """

    apply: Callable
    cost: costs_mod.Cost
    mini_batch_size: int
    penalty: str | None = None
    momentum: float = 0.0
    shuffle: bool = True
    eval_chunk: int = 1000
    over_k: str = "vmap"
    compiler_options: dict | str | None = "auto"
    on_iteration: Callable | None = None
    iteration_every: int = 1000

    def __post_init__(self):
        positive_int(self.mini_batch_size, "mini_batch_size")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        penalty = costs_mod.penalty_by_name(self.penalty)
        self.optimizer = optax.inject_hyperparams(optax.sgd)(
            learning_rate=1.0, momentum=self.momentum or None)
        one_epoch = partial(epoch, apply=self.apply, cost=self.cost, penalty=penalty,
                            optimizer=self.optimizer, mini_batch_size=int(self.mini_batch_size),
                            shuffle=self.shuffle, on_iteration=self.on_iteration,
                            iteration_every=int(self.iteration_every))

        mode = k_axis_mode(self.over_k)
        # the epoch's arguments: params, opt_state, x, y, key, c, e, order
        # (stacked on K: params, state, key, c, order)
        epochs_k = k_nets(one_epoch, (True, True, False, False, True, True, False, True), mode)

        def epoch_k(params, opt_state, x, y, keys, c, active, e=0, orders=None):
            new_params, new_state = epochs_k(params, opt_state, x, y, keys, c, e, orders)
            keep = lambda new, old: jnp.where(  # noqa: E731 (a net that stopped keeps its params)
                active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
            return (jax.tree_util.tree_map(keep, new_params, params),
                    jax.tree_util.tree_map(keep, new_state, opt_state))

        options = cpu_compiler_options() if self.compiler_options == "auto" else self.compiler_options
        jit = partial(jax.jit, compiler_options=options)
        self.epoch = jit(epoch_k, donate_argnums=(0, 1))
        self.evaluate = jit(k_nets(
            partial(evaluate, apply=self.apply, cost=self.cost, penalty=penalty, chunk=self.eval_chunk),
            (True, False, False, True), mode))
        self.predict = jit(k_nets(partial(predict, apply=self.apply, chunk=self.eval_chunk),
                                  (True, False), mode))

    def spec(self):
        """The settings that define the compiled program (a checkpoint records them)."""
        return {"cost": self.cost.name, "mini_batch_size": int(self.mini_batch_size),
                "penalty": self.penalty, "momentum": float(self.momentum), "shuffle": bool(self.shuffle)}

    def init_opt_state(self, params, eta):
        """Optimizer state for K stacked networks, with learning rates ``eta`` [K]."""
        k = jax.tree_util.tree_leaves(params)[0].shape[0]
        state = jax.vmap(self.optimizer.init)(params)
        return set_eta(state, jnp.broadcast_to(jnp.asarray(eta, _dtype(params)), (k,)))


# XLA:CPU's library fusions without YNNPACK's convolutions (its default list
# also holds LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION); dots and reductions
# keep going to YNNPACK, which is faster than XLA's own for them.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def cpu_compiler_options():
    """The ``compiler_options`` the trainer's programs are compiled with:
    ``CPU_COMPILER_OPTIONS`` on the CPU, None (XLA's defaults) elsewhere or
    where this XLA does not know the option (it is an experimental one).

    Why: jaxlib 0.10's XLA:CPU hands each convolution to YNNPACK, which runs
    the book's small convolutions (10 images, 5×5 filters, 20–40 maps) at
    about half the speed of XLA's own (Eigen) kernel, the weight-gradient one
    at a quarter (1.15 ms of a 4 ms step). With these options a scanned step
    of the two-conv net takes 0.66× the time on the 2-core CPU (benchmarks/README.md;
    ``bench_conv.py --variants`` times both). Fully connected nets compile
    the same either way. Passed per ``jax.jit``, so nothing changes for other
    JAX code in the process (unlike ``XLA_FLAGS``)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(jnp.negative, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.zeros(())).compile()
    except jax.errors.JaxRuntimeError:  # an XLA without this option, or without these values
        return None
    return dict(CPU_COMPILER_OPTIONS)


def k_axis_mode(mode="auto"):
    """"vmap", "map" or "devices" for ``Trainer.over_k``. "auto" is "map" on
    a single CPU device, "devices" on several CPU devices
    (``devices.use_cpu_devices``) and "vmap" on an accelerator. It is meant
    for conv nets: on the CPU a vmapped convolution over K stacked filter
    banks becomes a grouped convolution that XLA runs slowly (measured on the
    2-core CPU, the two-conv net: K = 3 vmapped 17.9 ms per step, mapped
    10.2 ms), and one net's step keeps barely more than one core busy, so two
    CPU devices each running the one-net program give nearly twice the
    throughput (benchmarks/README.md). Fully connected nets stay vmapped
    (K = 8 [784,30,10] nets on the CPU: mapped 18-22 % slower than vmapped)."""
    if mode == "auto":
        if jax.default_backend() != "cpu":
            return "vmap"
        return "map" if len(jax.local_devices()) == 1 else "devices"
    if mode not in K_MODES:
        raise ValueError(f"over_k must be 'auto' or one of {K_MODES}, got {mode!r}")
    return mode


K_MODES = ("vmap", "map", "devices")


def k_nets(fn, stacked, mode):
    """``fn``, written for ONE network, lifted to K networks stacked on a leading axis.

    ``stacked`` holds one boolean per positional argument of ``fn``: True for
    the arguments stacked on the K axis (params, optimizer state, keys), False
    for those every net shares (the data). Every output is stacked on K.
    ``mode`` (see ``k_axis_mode``): "vmap" batches the K nets into one
    program; "map" runs them one after another (``lax.map``); "devices"
    spreads them over the first min(K, D) local devices, one after another
    within a device (``devices.over_devices``; K must then be a multiple of
    that count, which ``fit`` ensures by padding). One net always takes the
    vmap path.
    """
    if mode not in K_MODES:
        raise ValueError(f"mode must be one of {K_MODES}, got {mode!r}")
    batched = jax.vmap(fn, in_axes=tuple(0 if s else None for s in stacked))

    def run(*args):
        k = devices_mod.net_count(args, stacked)
        if mode == "vmap" or k == 1:
            return batched(*args)
        if mode == "devices" and len(used := devices_for(k)) > 1:
            return devices_mod.over_devices(fn, stacked, used, within="map")(*args)
        return devices_mod.map_over_nets(fn, stacked, args)

    return run


def _dtype(params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def get_eta(opt_state):
    """The learning rates [K] held in the optimizer state."""
    return opt_state.hyperparams["learning_rate"]


def set_eta(opt_state, eta):
    """A copy of the optimizer state with learning rates ``eta`` [K]."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(eta, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)


def _device_data(data, dtype):
    x, y = data
    return jnp.asarray(x, dtype), jnp.asarray(y)


# --- stopping rules and schedules: small functions beside fit ---------------------

class Rule(NamedTuple):
    """A per-epoch rule over K nets, in the way an optax transformation is an
    ``(init, update)`` pair: ``init(k) -> state`` (a dict of NumPy arrays,
    saved in checkpoints) and ``update(state, record, eta) -> (state, eta,
    done)``, where ``record`` is the epoch's record, ``eta`` the nets'
    learning rates [K] and ``done`` [K] marks nets to stop. ``spec`` describes
    the rule (it is part of a checkpoint's identity)."""

    init: Callable
    update: Callable
    spec: dict


def _plateau_counter(metric):
    """The epochs since each net's best ``metric`` (a strict improvement resets it)."""
    def init(k):
        return {"best": np.full(k, -np.inf), "since_best": np.zeros(k, np.int64)}

    def update(state, record):
        value = np.asarray(record[metric], np.float64)
        improved = value > state["best"]
        return state | {"best": np.where(improved, value, state["best"]),
                        "since_best": np.where(improved, 0, state["since_best"] + 1)}
    return init, update


def early_stopping(n, metric="evaluation_accuracy"):
    """The book's no-improvement-in-n: stop a net after ``n`` epochs without a
    new best ``metric``."""
    n = positive_int(n, "early_stopping_n")
    init, count = _plateau_counter(metric)

    def update(state, record, eta):
        state = count(state, record)
        return state, eta, state["since_best"] >= n
    return Rule(init, update, {"rule": "early_stopping", "n": n, "metric": metric})


def plateau_schedule(n, floor=1 / 128, metric="evaluation_accuracy"):
    """The book's learning-rate schedule: halve a net's η after ``n`` epochs
    without a new best ``metric`` (the count then restarts), and stop the net
    once η has fallen to ``floor`` times its first value."""
    n = positive_int(n, "schedule_n")
    init_count, count = _plateau_counter(metric)

    def init(k):
        return init_count(k) | {"eta0": np.full(k, np.nan)}

    def update(state, record, eta):
        eta = np.asarray(eta)
        state = count(state, record)
        eta0 = np.where(np.isnan(state["eta0"]), eta, state["eta0"])
        plateau = state["since_best"] >= n
        new_eta = np.where(plateau, eta / 2, eta)
        done = plateau & (new_eta <= eta0 * floor * (1 + 1e-6))
        return (state | {"since_best": np.where(plateau, 0, state["since_best"]), "eta0": eta0},
                new_eta, done)
    return Rule(init, update, {"rule": "plateau_schedule", "n": n, "floor": floor, "metric": metric})


def positive_int(n, name):
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def check_hyperparameters(eta, lmbda, epochs):
    """The one check of the values every run takes: η > 0 and finite, λ ≥ 0 and
    finite, a whole number of epochs ≥ 0. Returns them as NumPy values."""
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    eta = np.asarray(eta, np.float64)
    if not (np.all(np.isfinite(eta)) and np.all(eta > 0)):
        raise ValueError(f"the learning rate eta must be positive and finite, got {eta}")
    return eta, check_lmbda(lmbda), int(epochs)


def check_lmbda(lmbda):
    """λ ≥ 0 and finite (scalar or one per net), as a NumPy float64 value."""
    lmbda = np.asarray(lmbda, np.float64)
    if not (np.all(np.isfinite(lmbda)) and np.all(lmbda >= 0)):
        raise ValueError(f"the regularization parameter lmbda must be >= 0 and finite, got {lmbda}")
    return lmbda


# --- checkpoints ---------------------------------------------------------------

CHECKPOINT_FORMAT = "nndl-jax fit checkpoint v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another run."""


@dataclass
class Checkpoint:
    """Where ``fit`` saves its whole state after every epoch, and what run it is.

    ``meta``: JSON-able facts that identify the run (architecture, row, seeds,
    settings); ``fit`` adds its own (shapes, η, λ, epochs, data fingerprint,
    rules). A file whose facts differ is refused with ``CheckpointError``,
    never silently reused. The file is an uncompressed ``.npz`` written to a
    temporary file in the same folder and renamed, so a run killed at any
    moment leaves either the previous epoch's checkpoint or this one.
    """

    path: Path
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)

    def exists(self):
        return self.path.is_file()

    def epochs_done(self):
        """How many epochs the saved state holds (0 when there is no file)."""
        if not self.exists():
            return 0
        return int(self._read()["epoch"]) + 1

    def _read(self):
        try:
            with np.load(self.path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
            if str(arrays.pop("format")) != CHECKPOINT_FORMAT:
                raise ValueError("not a checkpoint of this format")
            arrays["meta"] = json.loads(str(arrays["meta"]))
            return arrays
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise CheckpointError(
                f"{self.path}: unreadable checkpoint ({e}); move it away to start this run "
                f"afresh (--restart in the experiments)") from e

    def load(self, meta):
        arrays = self._read()
        if arrays["meta"] != meta:
            saved = arrays["meta"]
            diff = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
            raise CheckpointError(
                f"{self.path} belongs to another run (differs in {', '.join(diff)}: saved "
                + "; ".join(f"{k}={saved.get(k)!r}" for k in diff) + "; this run "
                + "; ".join(f"{k}={meta.get(k)!r}" for k in diff)
                + "). Use another output folder, or --restart to discard it.")
        return arrays

    def save(self, arrays, meta):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, format=np.array(CHECKPOINT_FORMAT),
                         meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self):
        self.path.unlink(missing_ok=True)


def _fingerprint(x, y):
    """A cheap identity of a data set: its shape and a hash of its labels and a
    sample of its inputs."""
    x, y = np.asarray(x), np.asarray(y)
    h = hashlib.sha1(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(x.reshape(x.shape[0], -1)[::max(1, x.shape[0] // 1000)]).tobytes())
    return {"shape": list(x.shape), "sha1": h.hexdigest()}


# --- the one way to train K networks ----------------------------------------------

class Fitted(NamedTuple):
    """What ``fit`` returns: the K nets' params and optimizer state after the
    last epoch, and the ``History``."""

    params: object
    opt_state: object
    history: History


def _finite(tree):
    """[K]: whether every parameter of each of the K stacked nets is finite."""
    leaves = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
              for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


_all_finite = jax.jit(_finite)


def _pad_k(tree, k_all):
    """K stacked nets padded to ``k_all`` with copies of the last (for an even sharding)."""
    return jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], k_all - a.shape[0], axis=0)]), tree)


def fit(trainer, params, training_data, epochs, *, key, eta, lmbda=0.0, n_penalty=None,
        evaluation=None, rules=(), on_epoch=None, checkpoint=None, opt_state=None, start_epoch=0,
        devices=None, orders=None):
    """Train K stacked networks for ``epochs`` epochs; return ``Fitted(params, opt_state, history)``.

    The one training loop of the project: the façades and every chapter call it.

    - ``params``: K networks stacked on a leading axis (``stack``, ``init_many``;
      ``from_seeds`` makes them and their keys from integer seeds).
    - ``training_data``, ``evaluation``: ``(x, y)`` arrays (see ``data.as_arrays``);
      ``evaluation`` maps names to sets, e.g. ``{"validation": v, "test": t}``
      or network2's ``{"evaluation": e, "training": t}``. After every epoch each
      set's accuracy and cost are computed inside compiled code and recorded as
      ``<name>_accuracy`` and ``<name>_cost``.
    - ``key``: one PRNG key per network ([K] keys) or one key for all of them;
      epoch e of net k uses ``fold_in(key[k], e)``.
    - ``orders``: None (the order of epoch e comes from the key), or
      ``orders(e) -> int array [n] (shared by the K nets) or [K, n]``: the
      training order of epoch e, made on the host (the book-replay mode,
      ``book_random.epoch_orders``). Dropout keys still come from ``key``.
    - ``eta``, ``lmbda``: scalars or [K] arrays. The training penalty coefficient
      is ``lmbda / n_penalty`` (``n_penalty`` defaults to the training-set size,
      network2's rule; network3 passes its number of mini-batches).
    - ``rules``: ``Rule``s applied after each epoch, in order (``early_stopping``,
      ``plateau_schedule``): they may change η and stop nets. A net whose
      parameters are no longer finite is stopped too and reported (which net,
      which epoch, η) in ``history.diverged_at``.
    - ``on_epoch(e, record)``: called after each epoch with the epoch's values
      ([K] NumPy arrays: the metrics above, ``active``, ``eta``, ``finite``) and
      ``record["params"]`` (the K nets' params after the epoch, device arrays
      donated by the next epoch: compute from them inside the callback).
    - ``checkpoint``: a ``Checkpoint``. The whole state (params, optimizer state,
      keys, epoch, history, rule states) is saved there after every epoch; when
      the file exists, the run continues from it (after checking it belongs to
      this run), so an interrupted run finishes bit-identical to an
      uninterrupted one. The caller removes it once the results are safe.

    With several ``devices`` the K axis is padded to a multiple of their count
    (copies of the last net, trained and dropped) and sharded over them. By
    default the first min(K, D) of the D local devices are used
    (``devices_for``): one net stays on one device. A trainer with
    ``over_k="devices"`` expects that default.
    """
    dtype = _dtype(params)
    eta, lmbda, epochs = check_hyperparameters(eta, lmbda, epochs)
    x, y = _device_data(training_data, dtype)
    if x.shape[0] == 0:
        raise ValueError("the training data is empty")
    k = jax.tree_util.tree_leaves(params)[0].shape[0]
    keys = jnp.broadcast_to(key, (k,)) if jnp.ndim(key) == 0 else key
    eta, lmbda = np.broadcast_to(eta, (k,)), np.broadcast_to(lmbda, (k,))
    c = jnp.asarray(lmbda / (x.shape[0] if n_penalty is None else n_penalty), dtype)
    sets = {name: _device_data(d, dtype) for name, d in (evaluation or {}).items()}
    names = metric_names(sets)
    rules = tuple(rules)
    for rule in rules:
        if rule.spec["metric"] not in names:
            raise ValueError(f"{rule.spec['rule']} watches {rule.spec['metric']!r}, which needs the "
                             f"evaluation set {rule.spec['metric'].rsplit('_', 1)[0]!r}; have {list(sets)}")

    devices = devices_for(k, devices)
    k_all = padded_count(k, devices)
    pad = (lambda t: _pad_k(t, k_all)) if k_all != k else (lambda t: t)
    shard = partial(shard_stacked, devices=devices)
    params = shard(pad(jax.tree_util.tree_map(jnp.copy, params)))  # the epoch donates buffers
    keys = shard(pad(keys))
    lmbda_all = jnp.asarray(np.resize(lmbda, k_all), dtype)
    c = jnp.concatenate([c, jnp.repeat(c[-1:], k_all - k)])
    if opt_state is None:
        opt_state = trainer.init_opt_state(params, np.resize(eta, k_all))
    else:  # as for params: the epoch donates the copy, the caller's state stays usable
        opt_state = shard(pad(jax.tree_util.tree_map(jnp.copy, opt_state)))

    history = History(stopped_at=np.full(k, -1), diverged_at=np.full(k, -1))
    active = np.ones(k, bool)
    rule_states = [rule.init(k) for rule in rules]
    first = start_epoch
    if checkpoint is not None:
        meta = dict(checkpoint.meta, fit={
            "k": k, "devices": len(devices),
            "epochs": start_epoch + epochs,
            "eta": eta.tolist(), "lmbda": lmbda.tolist(), "n_penalty": n_penalty,
            "params": [[list(a.shape), str(a.dtype)] for a in jax.tree_util.tree_leaves(params)],
            "trainer": trainer.spec(), "training": _fingerprint(*training_data),
            "evaluation": {name: _fingerprint(*d) for name, d in (evaluation or {}).items()},
            "rules": [rule.spec for rule in rules], "start_epoch": start_epoch})
        meta = json.loads(json.dumps(meta, sort_keys=True, default=_json_default))
        if checkpoint.exists():
            saved = checkpoint.load(meta)
            params, opt_state, keys = _restore(saved, "params", params), _restore(
                saved, "opt_state", opt_state), _restore(saved, "keys", keys, wrap=True)
            params, opt_state, keys = shard(params), shard(opt_state), shard(keys)
            active = saved["active"].astype(bool)
            history.stopped_at, history.diverged_at = saved["stopped_at"], saved["diverged_at"]
            history.eta = list(saved["eta_history"])
            history.seconds = list(saved.get("epoch_seconds", np.full(len(history.eta), np.nan)))
            history.metrics = {name: list(saved[f"metric_{name}"]) for name in names}
            rule_states = [{n: saved[f"rule{i}_{n}"] for n in state} for i, state in enumerate(rule_states)]
            first = int(saved["epoch"]) + 1
            history.resumed_epochs = len(history.eta)
            print(f"resuming from {checkpoint.path}: {first - start_epoch} of {epochs} epochs done",
                  flush=True)

    for e in range(first, start_epoch + epochs):
        if not active.any():
            break
        started = time.perf_counter()
        eta_now = np.asarray(get_eta(opt_state))[:k]
        history.eta.append(eta_now)
        epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, e)
        order = None if orders is None else _epoch_order(orders(e), x.shape[0], k, k_all)
        params, opt_state = trainer.epoch(params, opt_state, x, y, epoch_keys, c,
                                          jnp.asarray(np.resize(active, k_all)), e, order)
        record = {"epoch": e, "active": active.copy(), "eta": eta_now, "params": params}
        for name, (ex, ey) in sets.items():
            correct, cost = trainer.evaluate(params, ex, ey, lmbda_all)
            record[f"{name}_accuracy"] = np.asarray(correct)[:k]
            record[f"{name}_cost"] = np.asarray(cost)[:k]
        history.append(record, names)
        history.seconds.append(time.perf_counter() - started)
        record["finite"] = np.asarray(_all_finite(params))[:k]
        diverged = active & ~record["finite"]
        history.diverged_at = np.where(diverged, e, history.diverged_at)
        for i in np.flatnonzero(diverged):
            print(f"net {i} diverged in epoch {e} (eta={eta_now[i]:g}): its parameters are no "
                  "longer finite; it stops training here. Try a smaller eta.", flush=True)
        done = diverged
        new_eta = eta_now
        for i, rule in enumerate(rules):  # a rule moves only the nets still training
            state, rule_eta, stop = rule.update(rule_states[i], record, new_eta)
            rule_states[i] = {n: np.where(active, v, rule_states[i][n]) for n, v in state.items()}
            new_eta = np.where(active, rule_eta, new_eta).astype(eta_now.dtype)
            stop = active & ~diverged & np.asarray(stop)
            history.stopped_at = np.where(stop, e, history.stopped_at)
            done = done | stop
        if np.any(new_eta != eta_now):
            opt_state = set_eta(opt_state, np.concatenate([new_eta, np.asarray(get_eta(opt_state))[k:]]))
        active = active & ~done
        record["active"] = active.copy()
        if checkpoint is not None:
            checkpoint.save(_state_arrays(params, opt_state, keys, e, active, history, names,
                                          rule_states), meta)
        if on_epoch is not None:
            on_epoch(e, record)
    if k_all != k:
        params = jax.tree_util.tree_map(lambda a: a[:k], params)
        opt_state = jax.tree_util.tree_map(lambda a: a[:k] if jnp.ndim(a) else a, opt_state)
    return Fitted(params, opt_state, history)


def _epoch_order(order, n, k, k_all):
    """``orders(e)``'s answer as a [k_all, n] int32 device array (a shared [n]
    order repeated for every net; padding nets reuse orders cyclically)."""
    order = np.asarray(order)
    if order.ndim == 1:
        order = np.broadcast_to(order, (k, order.shape[0]))
    if order.shape != (k, n) or not np.issubdtype(order.dtype, np.integer):
        raise ValueError(f"orders(e) must give integer indices of shape [{n}] or [{k}, {n}], "
                         f"got {order.dtype} {order.shape}")
    if not np.array_equal(np.sort(order, axis=1), np.broadcast_to(np.arange(n), (k, n))):
        raise ValueError("orders(e) must give a permutation of range(n) for every net")
    return jnp.asarray(np.resize(order, (k_all, n)).astype(np.int32))


def _json_default(x):
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _state_arrays(params, opt_state, keys, e, active, history, names, rule_states):
    arrays = {"epoch": np.array(e), "active": active, "stopped_at": history.stopped_at,
              "diverged_at": history.diverged_at, "eta_history": np.asarray(history.eta),
              "epoch_seconds": np.asarray(history.seconds, np.float64),
              "keys_0": np.asarray(jax.random.key_data(keys))}
    for prefix, tree in (("params", params), ("opt_state", opt_state)):
        for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
            arrays[f"{prefix}_{i}"] = np.asarray(leaf)
    for name in names:
        arrays[f"metric_{name}"] = np.asarray(history.metrics[name])
    for i, state in enumerate(rule_states):
        for n, v in state.items():
            arrays[f"rule{i}_{n}"] = np.asarray(v)
    return arrays


def _restore(saved, prefix, like, wrap=False):
    """The saved leaves ``<prefix>_<i>`` in the structure (and dtypes) of ``like``."""
    if wrap:
        return jax.random.wrap_key_data(jnp.asarray(saved[f"{prefix}_0"]),
                                        impl=jax.random.key_impl(like))
    leaves, treedef = jax.tree_util.tree_flatten(like)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(saved[f"{prefix}_{i}"], leaf.dtype) for i, leaf in enumerate(leaves)])


# --- seeds and K networks ------------------------------------------------------

def seed_keys(seeds):
    """Named keys for runs with the given integer seeds: ``(init_keys, train_keys)``,
    each [K]. The seed is all a results file needs to record to replay a run."""
    pairs = [jax.random.split(jax.random.key(int(s))) for s in seeds]
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


def init_many(init, keys, input_shape):
    """Initialize K networks from [K] keys, stacked on a leading axis."""
    return jax.vmap(lambda k: init(k, input_shape)[1])(keys)


def from_seeds(init, input_shape, seeds):
    """K networks and their training keys from integer seeds: ``(params, keys)``
    for ``fit`` (seed s: ``seed_keys([s])``, so a net is the same whichever
    other seeds it trains beside)."""
    init_keys, train_keys = seed_keys(seeds)
    return init_many(init, init_keys, input_shape), train_keys


@functools.cache
def trainer_for(apply, cost, mini_batch_size, **settings):
    """The one cache of compiled trainers: the same network function, cost and
    settings give the same ``Trainer`` (and so reuse its compiled epoch)."""
    return Trainer(apply, cost, int(mini_batch_size), **settings)


# --- network3's bookkeeping and ensembles ----------------------------------------

def best_validation(validation_accuracy, test_accuracy):
    """network3's bookkeeping: for each net, the best validation accuracy, the
    epoch it was reached and the test accuracy at that epoch.

    ``validation_accuracy``, ``test_accuracy``: [epochs, K] (one row per epoch).
    The book's tie rule: a validation accuracy *equal* to the best so far
    (``>=``) also counts as the best, so among tied epochs the latest wins.
    Returns NumPy arrays ``(best_validation [K], best_epoch [K], test_at_best [K])``.
    """
    val = np.asarray(validation_accuracy)
    test = np.asarray(test_accuracy)
    if val.ndim != 2 or val.shape != test.shape or val.shape[0] == 0:
        raise ValueError(f"need equal [epochs, K] arrays with at least one epoch, "
                         f"got {val.shape} and {test.shape}")
    best_epoch = val.shape[0] - 1 - np.argmax(val[::-1], axis=0)  # the LAST epoch reaching the max
    cols = np.arange(val.shape[1])
    return val[best_epoch, cols], best_epoch, test[best_epoch, cols]


def plurality_vote(predictions, n_classes):
    """The ensemble's answer for each example: the label most of the K nets
    predict (``predictions``: int [K, n]), computed on the device.

    Tie rule, as the book's ``Counter(...).most_common(1)``: among labels with
    the same number of votes, the one voted for by the earliest net wins.
    """
    predictions = jnp.asarray(predictions)
    k = predictions.shape[0]
    votes = jax.nn.one_hot(predictions, n_classes, dtype=jnp.int32)           # [K, n, C]
    counts = jnp.sum(votes, axis=0)                                          # [n, C]
    first = jnp.min(jnp.where(votes > 0, jnp.arange(k, dtype=jnp.int32).reshape(k, 1, 1),
                              jnp.int32(k)), axis=0)                         # [n, C]
    return jnp.argmax(counts * (k + 1) - first, axis=-1)


# --- the K axis across devices -------------------------------------------------

def devices_for(k, devices=None):
    """The devices K stacked nets are spread over: the first min(K, D) of
    ``devices`` (default: the D local devices), so no device trains only
    padding and one net stays on one device."""
    devices = list(jax.local_devices() if devices is None else devices)
    return devices[:max(1, min(int(k), len(devices)))]


def padded_count(k, devices=None):
    """K rounded up to a multiple of the number of devices (the K axis is
    sharded evenly; callers train the extra nets and drop them)."""
    n = len(jax.local_devices() if devices is None else devices)
    return -(-int(k) // n) * n


def shard_stacked(tree, devices=None):
    """Place a pytree stacked on a leading K axis (params, keys) across the
    local devices: ``NamedSharding`` over a 1-D mesh named "k", each device
    holding K/D nets. With one device, or K not divisible by the number of
    devices (see ``padded_count``), the tree is returned unchanged.
    The compiled epoch then runs each device's nets where they live (the
    compiler partitions the ``vmap`` along the K axis)."""
    devices = jax.local_devices() if devices is None else list(devices)
    leaves = jax.tree_util.tree_leaves(tree)
    if len(devices) < 2 or not leaves or leaves[0].shape[0] % len(devices):
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("k",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("k"))
    return jax.device_put(tree, sharding)
