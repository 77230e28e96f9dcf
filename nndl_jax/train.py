"""Training: the mini-batch cost, one SGD step, an epoch as one compiled
program, evaluation, and fitting K networks at once.

Nothing here names a particular layer or cost: a network is an
``apply(params, x, *, train, key) -> z`` function (see ``layers``) and a cost is
a ``costs.Cost``. Each layer of the transformation stack is one visible line:

- ``example_costs``: the cost of each example, ``vmap`` of the per-example cost;
- ``batch_loss``: their (masked) mean plus the weight penalty;
- ``jax.grad(batch_loss)`` and an optax update: one step;
- ``epoch``: ``lax.scan`` of the step over the mini-batches of a permutation;
- ``Trainer``: ``jit`` of the epoch over K stacked networks (K = 1 for one
  net; the K axis batched, mapped or spread over devices: ``devices.k_nets``),
  so repeated runs and learning-rate grids are one program;
- ``fit``: the loop over epochs, threading one ``TrainState``.

What the loop uses lives beside it, one concern a module: ``checks`` (the
settings and data checked before a run), ``rules`` (early stopping, the η
schedule), ``compile_cache`` (JAX's persistent compilation cache), ``seeds``
(seed → keys), ``checkpoint`` (saving the state) and ``scoring`` (network3's
best validation epoch and plurality vote).

Mini-batches follow the book: the data is shuffled (or not, with
``shuffle=False``), cut into consecutive mini-batches of ``m`` examples, and a
last short mini-batch is used with its own size (the update divides by its
length). To keep one compiled shape, the short batch is padded and masked.

Randomness: each epoch gets ``fold_in(key, epoch)``, split into a shuffle key
and a dropout key, and mini-batch ``i`` drops out with ``fold_in(dropout_key,
i)``; so epoch 7 is the same whether or not epochs 0–6 ran in this process.
"""
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Names that moved to their own modules (checks, rules, scoring, seeds, compile_cache) stay
# importable from here as before (the experiments and benchmarks use them as ``train.<name>``).
from nndl_jax import costs as costs_mod
from nndl_jax import devices, distributed, files, fit_watch
from nndl_jax.checkpoint import Checkpoint, CheckpointError, fingerprint  # noqa: F401
from nndl_jax.checks import (  # noqa: F401
    check_evaluation,
    check_hyperparameters,
    check_labels,
    check_lmbda,
    check_order,
    device_data,
    per_net,
    positive_int,
)
from nndl_jax.compile_cache import COMPILATION_CACHE_ENV, compilation_cache_dir, use_compilation_cache  # noqa: F401
from nndl_jax.fit_watch import watch_fits  # noqa: F401
from nndl_jax.rules import Rule, early_stopping, plateau_schedule  # noqa: F401
from nndl_jax.scoring import best_validation, plurality_vote  # noqa: F401
from nndl_jax.seeds import SEED_LIMIT, check_seed, seed_keys  # noqa: F401

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
    """One epoch of mini-batch SGD as a single ``lax.scan`` over mini-batches.

    ``e`` is the epoch's number; ``order``, when given, the order of the
    training examples (see ``minibatch_indices``); with ``on_iteration``, the scan calls
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
    ``devices.cpu_compiler_options()`` (on the CPU, convolutions by XLA's own
    kernels rather than YNNPACK's), None is XLA's defaults, a dict is passed as is.

    ``over_k`` says how the epoch and the evaluation run K nets (see
    ``devices.k_nets``): "vmap" (the default: one batched step for all K, on
    one device), "map" and "devices" (each net by the one-net program, the
    nets of a device one after another, the devices side by side:
    ``devices.over_devices``) or "auto" (``devices.k_axis_mode``: the
    per-net program on the CPU, "vmap" on an accelerator; network3 uses it
    for conv nets). Each mode's numbers depend only on the seeds and
    settings, not on the device or process count (tests/test_layout.py);
    the modes agree to float32 rounding (tests/test_core.py).

    Get trainers through ``trainer_for``, which keeps one per network
    description and settings, so their compiled programs are reused.
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
        use_compilation_cache()
        penalty = costs_mod.penalty_by_name(self.penalty)
        self.optimizer = optax.inject_hyperparams(optax.sgd)(
            learning_rate=1.0, momentum=self.momentum or None)
        one_epoch = partial(epoch, apply=self.apply, cost=self.cost, penalty=penalty,
                            optimizer=self.optimizer, mini_batch_size=int(self.mini_batch_size),
                            shuffle=self.shuffle, on_iteration=self.on_iteration,
                            iteration_every=int(self.iteration_every))

        mode = self.k_mode = devices.k_axis_mode(self.over_k)
        # params, opt_state, x, y, key, c, e, order: stacked on K (0) or shared (None)
        epochs_k = devices.k_nets(one_epoch, (0, 0, None, None, 0, 0, None, 0), mode)

        def epoch_k(params, opt_state, x, y, keys, c, active, e=0, orders=None):
            new_params, new_state = epochs_k(params, opt_state, x, y, keys, c, e, orders)
            keep = lambda new, old: jnp.where(  # noqa: E731 (a net that stopped keeps its params)
                active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
            return (jax.tree_util.tree_map(keep, new_params, params),
                    jax.tree_util.tree_map(keep, new_state, opt_state))

        options = devices.cpu_compiler_options() if self.compiler_options == "auto" else self.compiler_options
        jit = partial(jax.jit, compiler_options=options)
        self.epoch = jit(epoch_k, donate_argnums=(0, 1))
        evaluation = evaluation_for(self.apply, self.cost, self.penalty, self.eval_chunk, mode,
                                    _hashable(self.compiler_options))
        self.evaluate, self.predict = evaluation.evaluate, evaluation.predict

    def spec(self):
        """The settings that define the compiled program (a checkpoint records them)."""
        return {"cost": self.cost.name, "mini_batch_size": int(self.mini_batch_size),
                "penalty": self.penalty, "momentum": float(self.momentum), "shuffle": bool(self.shuffle)}

    def init_opt_state(self, params, eta):
        """Optimizer state for K stacked networks, with learning rates ``eta`` [K]."""
        k = jax.tree_util.tree_leaves(params)[0].shape[0]
        state = jax.vmap(self.optimizer.init)(params)
        return set_eta(state, jnp.broadcast_to(jnp.asarray(eta, _dtype(params)), (k,)))


# --- the one cache of compiled trainers ----------------------------------------------

TRAINER_CACHE_SIZE = 32


def trainer_for(net, cost, mini_batch_size, **settings):
    """The one cache of compiled trainers, bounded (the least recently used of
    more than ``TRAINER_CACHE_SIZE`` is dropped with its compiled programs).

    ``net``: a hashable description of the network with an ``apply``
    (``layers.Net``: the same description gives the same trainer, so two
    book networks of the same sizes share one compiled epoch), or a plain
    ``apply`` function (cached by identity). ``cost`` and ``settings`` are
    ``Trainer``'s."""
    return _cached_trainer(_program_key(net), cost, positive_int(mini_batch_size, "mini_batch_size"), **settings)


@functools.lru_cache(maxsize=TRAINER_CACHE_SIZE)
def _cached_trainer(net, cost, mini_batch_size, **settings):
    return Trainer(getattr(net, "apply", net), cost, mini_batch_size, **settings)


def _program_key(net):
    """What a network's compiled programs depend on: a ``layers.Net`` less its initializers."""
    return net.without_init() if hasattr(net, "without_init") else net


class Evaluation(NamedTuple):
    """The compiled evaluation of K stacked nets: ``evaluate(params, x, y, lmbda)``
    → ([K] number correct, [K] cost) and ``predict(params, x)`` → [K, n, outputs]."""

    evaluate: Callable
    predict: Callable


def evaluation_for(net, cost, penalty=None, chunk=1000, over_k="vmap", compiler_options="auto"):
    """The compiled ``Evaluation`` of a network (a ``layers.Net`` or an
    ``apply`` function), kept in the same bounded way as ``trainer_for``'s
    trainers, which use it: evaluating a network compiles no training program."""
    return _cached_evaluation(_program_key(net), cost, penalty, chunk, over_k, compiler_options)


@functools.lru_cache(maxsize=TRAINER_CACHE_SIZE)
def _cached_evaluation(net, cost, penalty, chunk, over_k, compiler_options):
    apply = getattr(net, "apply", net)
    penalty_fn = costs_mod.penalty_by_name(penalty)
    mode = devices.k_axis_mode(over_k)
    options = devices.cpu_compiler_options() if compiler_options == "auto" else (
        None if compiler_options is None else dict(compiler_options))
    jit = partial(jax.jit, compiler_options=options)
    return Evaluation(
        jit(devices.k_nets(partial(evaluate, apply=apply, cost=cost, penalty=penalty_fn, chunk=chunk),
                           (0, None, None, 0), mode)),
        jit(devices.k_nets(partial(predict, apply=apply, chunk=chunk), (0, None), mode)))


def _hashable(options):
    return tuple(sorted(options.items())) if isinstance(options, dict) else options


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


# --- the training state and the loop that threads it -------------------------------------

class TrainState(NamedTuple):
    """Everything a run of K nets is, after ``epoch`` epochs: one pytree, which
    is exactly what a checkpoint saves (unpadded, whatever the devices).

    ``params``, ``opt_state`` (η is in it), ``keys`` (raw key data [K, ...]):
    the nets. ``active`` [K]: still training. ``stopped_at``, ``diverged_at``
    [K]: the epoch a rule stopped the net / its params stopped being finite
    (-1: never). ``rule_states``: one dict of [K] arrays per rule.
    ``metrics``: name → [epochs, K]; ``eta`` [epochs, K]: the η each epoch ran
    with; ``seconds`` [epochs]: each epoch's wall time (training and evaluation).
    """

    params: Any
    opt_state: Any
    keys: Any
    epoch: Any
    active: Any
    stopped_at: Any
    diverged_at: Any
    rule_states: tuple
    metrics: dict
    eta: Any
    seconds: Any

    @property
    def nets(self):
        """The per-net part (``devices.Nets``): what the layout places and gathers."""
        return devices.Nets(self.params, self.opt_state, self.keys)

    def with_nets(self, nets):
        """A copy with the per-net part ``nets`` (a ``devices.Nets``)."""
        return self._replace(**nets._asdict())


@dataclass
class History:
    """What ``fit`` returns beside the params, one row per epoch run, one
    column per network (read from the final ``TrainState``).

    ``metrics[name]``: [epochs, K] for every name a record carries:
    ``<set>_accuracy`` (number correct) and ``<set>_cost`` (mean cost plus the
    penalty with ``lmbda / len(set)``) for each named evaluation set (see
    ``fit``). ``eta``: the learning rate each epoch ran with. ``stopped_at``:
    for each net, the epoch at which a stopping rule stopped it, -1 if none
    did; ``diverged_at``: the epoch after which its parameters were no longer
    finite, -1 if they stayed finite. ``seconds``: the wall time of each epoch,
    kept through checkpoints, so a run resumed over several sittings knows its
    whole time; ``resumed_epochs``: how many of them were restored from a
    checkpoint rather than run by this ``fit``. ``events``: what happened
    beside the epochs (resumed, diverged), as the records' ``events`` said.
    """

    metrics: dict = field(default_factory=dict)
    eta: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    resumed_epochs: int = 0
    stopped_at: np.ndarray | None = None
    diverged_at: np.ndarray | None = None
    events: list = field(default_factory=list)

    def __getitem__(self, name):
        return self.metrics.get(name, [])

    @property
    def total_seconds(self):
        """The run's training time: every epoch's, over all the sittings of a resumed run."""
        return float(np.sum(np.asarray(self.seconds, np.float64)))

    @property
    def earlier_seconds(self):
        """The part of ``total_seconds`` spent in earlier sittings (the restored epochs)."""
        return float(np.sum(np.asarray(self.seconds[:self.resumed_epochs], np.float64)))

    def as_arrays(self):
        """Every metric and ``eta`` as NumPy arrays ``[epochs, K]`` (for JSON and plots)."""
        out = {name: np.asarray(v) for name, v in self.metrics.items()}
        out["eta"] = np.asarray(self.eta)
        return out


class Fitted(NamedTuple):
    """What ``fit`` returns: the K nets' params and optimizer state after the
    last epoch, and the ``History``."""

    params: object
    opt_state: object
    history: History


class Run(NamedTuple):
    """What stays fixed through a run: the data on the device, the
    coefficients, the evaluation sets, the rules, the layout of the K nets."""

    k: int
    epochs: int
    x: Any
    y: Any
    c: Any            # [k_all] training penalty coefficients λ / n_penalty
    lmbda: Any        # [k_all] λ (the evaluation's penalty uses λ / len(set))
    sets: dict        # name -> (x, y) on the device
    names: list       # the metric names the sets give
    rules: tuple
    layout: devices.Layout
    settings: dict    # η, λ [K] (float64, as given) and n_penalty: what a checkpoint's identity records


def prepare_run(params, training_data, epochs, *, eta, lmbda, n_penalty, evaluation, rules, k_mode="map"):
    """The ``Run`` of ``fit``'s arguments, after checking them (``checks``; ``k_mode``:
    the trainer's, which the layout of its K nets follows)."""
    dtype = _dtype(params)
    eta, lmbda, epochs = check_hyperparameters(eta, lmbda, epochs)
    k = jax.tree_util.tree_leaves(params)[0].shape[0]
    eta, lmbda = per_net(eta, k, "the learning rate eta"), per_net(lmbda, k, "the regularization parameter lmbda")
    evaluation = check_evaluation(evaluation)
    layout = devices.layout_for(k, mode=k_mode)
    x, y = device_data(training_data, dtype, layout)
    c = lmbda / (x.shape[0] if n_penalty is None else n_penalty)
    sets = {name: device_data(d, dtype, layout, f"evaluation set {name!r}") for name, d in evaluation.items()}
    names = metric_names(sets)
    rules = _checked_rules(rules, names, sets)
    on_k = lambda a: layout.place(np.asarray(a, dtype))  # noqa: E731 (padding nets: the last's)
    settings = {"eta": eta.tolist(), "lmbda": lmbda.tolist(), "n_penalty": n_penalty}
    return Run(k, epochs, x, y, on_k(c), on_k(lmbda), sets, names, rules, layout, settings)


def _checked_rules(rules, names, sets):
    """``rules`` as a tuple, refusing a rule that watches a metric no evaluation set gives."""
    rules = tuple(rules)
    for rule in rules:
        if rule.spec["metric"] not in names:
            raise ValueError(f"{rule.spec['rule']} watches {rule.spec['metric']!r}, which needs the "
                             f"evaluation set {rule.spec['metric'].rsplit('_', 1)[0]!r}; have {list(sets)}")
    return rules


def initial_state(trainer, params, key, run):
    """The ``TrainState`` of K fresh nets before their first epoch."""
    k = run.k
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raise TypeError("key must be a typed PRNG key (jax.random.key(seed)), one for all nets or [K]")
    keys = jnp.broadcast_to(key, (k,)) if jnp.ndim(key) == 0 else key
    eta = np.asarray(run.settings["eta"], np.float64)
    params = jax.tree_util.tree_map(jnp.copy, params)  # the epoch donates its buffers
    return TrainState(
        params=params, opt_state=trainer.init_opt_state(params, eta),
        keys=jax.random.key_data(keys), epoch=np.int64(0), active=np.ones(k, bool),
        stopped_at=np.full(k, -1), diverged_at=np.full(k, -1),
        rule_states=tuple(rule.init(k) for rule in run.rules),
        metrics={name: np.zeros((0, k)) for name in run.names},
        eta=np.zeros((0, k)), seconds=np.zeros(0))


def run_identity(checkpoint, trainer, state, run, training_data, evaluation, ordered):
    """What a checkpoint of this run must match: the caller's facts
    (``checkpoint.meta``) and the run's own settings, as JSON values."""
    per_net = [[list(a.shape[1:]), str(a.dtype)] for a in jax.tree_util.tree_leaves(state.params)]
    identity = dict(checkpoint.meta) | {
        "nets": run.k, "epochs": run.epochs, **run.settings, "shapes": per_net, "trainer": trainer.spec(),
        "training data": fingerprint(*training_data),
        "evaluation data": {name: fingerprint(*d) for name, d in check_evaluation(evaluation).items()},
        "rules": [rule.spec for rule in run.rules], "order": "given" if ordered else "keys"}
    return json.loads(json.dumps(identity, sort_keys=True, default=files.json_default))


def resumed_state(checkpoint, state, identity):
    """The state saved in ``checkpoint`` (checked to be this run's), in the
    structure and dtypes of ``state``; the nets back on the device."""
    saved, _ = checkpoint.load(state, identity)
    return saved.with_nets(jax.tree_util.tree_map(jnp.asarray, saved.nets))


def host_state(state, layout):
    """``state`` unpadded and on the host (NumPy): what a checkpoint saves
    (gathered from every process of a multi-process run: all of them call it)."""
    host = jax.tree_util.tree_map(devices.to_host, state)
    return host.with_nets(layout.unpad(host.nets))


def placed_state(state, layout):
    """``state`` with its nets padded and sharded over the layout's devices."""
    return state.with_nets(layout.place(state.nets))


def train_epoch(trainer, run, state, orders, watched=None):
    """One epoch of every active net: ``(state, record)``, the record holding
    the epoch's metrics on every evaluation set ([K] NumPy arrays); ``watched``
    (a ``fit_watch.WatchedFit``, or None): told how long the steps and each
    evaluation took."""
    e = int(state.epoch)
    keys = jax.random.wrap_key_data(state.keys)
    epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, e)
    order = None
    if orders is not None:
        order = check_order(orders(e), run.k, run.x.shape[0], e)
        order = run.layout.place(np.asarray(order, np.int32))
    eta = devices.to_host(get_eta(state.opt_state))[:run.k]  # read before the epoch donates the state
    active = run.layout.put(np.resize(state.active, run.layout.k_all))
    started = time.perf_counter()
    params, opt_state = trainer.epoch(state.params, state.opt_state, run.x, run.y, epoch_keys, run.c,
                                      active, e, order)
    if watched is not None:   # a watch times the steps and each evaluation apart
        jax.block_until_ready(params)
        watched.train.append(time.perf_counter() - started)
        watched.evaluate.append({})
    record = {"epoch": e, "eta": eta}
    for name, (ex, ey) in run.sets.items():
        started = time.perf_counter()
        correct, cost = trainer.evaluate(params, ex, ey, run.lmbda)
        record[f"{name}_accuracy"] = devices.to_host(correct)[:run.k]
        record[f"{name}_cost"] = devices.to_host(cost)[:run.k]
        if watched is not None:
            watched.evaluate[-1][name] = time.perf_counter() - started
    record["finite"] = devices.to_host(_all_finite(params))[:run.k]
    return state._replace(params=params, opt_state=opt_state), record


def after_epoch(state, record, run, seconds):
    """The epoch's bookkeeping: its metrics, η and time into the history; nets
    whose params stopped being finite stopped (a "diverged" event); the rules
    applied in order (a rule moves only the nets still training), η changed
    where a rule says so. Returns ``(state, record)``."""
    e = int(state.epoch)
    active = state.active
    metrics = {name: np.concatenate([state.metrics[name], record[name][None]]) for name in run.names}
    diverged = active & ~record["finite"]
    diverged_at = np.where(diverged, e, state.diverged_at)
    events = [{"event": "diverged", "net": int(i), "epoch": e, "eta": float(record["eta"][i])}
              for i in np.flatnonzero(diverged)]
    done, eta, stopped_at, rule_states = diverged, record["eta"], state.stopped_at, list(state.rule_states)
    for i, rule in enumerate(run.rules):
        rule_state, rule_eta, stop = rule.update(rule_states[i], record, eta)
        rule_states[i] = {n: np.where(active, v, rule_states[i][n]) for n, v in rule_state.items()}
        eta = np.where(active, rule_eta, eta).astype(record["eta"].dtype)
        stop = active & ~diverged & np.asarray(stop)
        stopped_at = np.where(stop, e, stopped_at)
        done = done | stop
    opt_state = state.opt_state
    if np.any(eta != record["eta"]):
        dtype = get_eta(opt_state).dtype
        opt_state = set_eta(opt_state, run.layout.put(np.resize(eta, run.layout.k_all).astype(dtype)))
    active = active & ~done
    record.update(active=active.copy(), events=record.get("events", []) + events)
    state = state._replace(
        opt_state=opt_state, epoch=np.int64(e + 1), active=active, stopped_at=stopped_at,
        diverged_at=diverged_at, rule_states=tuple(rule_states), metrics=metrics,
        eta=np.concatenate([state.eta, record["eta"][None].astype(np.float64)]),
        seconds=np.concatenate([state.seconds, [seconds]]))
    return state, record


def fit(trainer, params, training_data, epochs, *, key, eta, lmbda=0.0, n_penalty=None,
        evaluation=None, rules=(), on_epoch=None, checkpoint=None, orders=None):
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
    - ``eta``, ``lmbda``: scalars or [K] arrays. The training penalty coefficient
      is ``lmbda / n_penalty`` (``n_penalty`` defaults to the training-set size,
      network2's rule; network3 passes its number of mini-batches).
    - ``rules``: ``Rule``s applied after each epoch, in order (``early_stopping``,
      ``plateau_schedule``): they may change η and stop nets. A net whose
      parameters are no longer finite is stopped too (``history.diverged_at``
      and a "diverged" event: which net, which epoch, η).
    - ``on_epoch(e, record)``: called after each epoch with the epoch's values
      ([K] NumPy arrays: the metrics above, ``active``, ``eta``, ``finite``),
      ``record["events"]`` (a list of dicts: ``{"event": "resumed", "path",
      "epochs_done", "epochs"}`` in the first record after a resume,
      ``{"event": "diverged", "net", "epoch", "eta"}``) and
      ``record["params"]`` (the K nets' params after the epoch, device arrays
      donated by the next epoch: compute from them inside the callback).
      ``fit`` itself prints nothing.
    - ``checkpoint``: a ``Checkpoint``. The whole ``TrainState`` is saved there
      after every epoch; when the file exists, the run continues from it
      (after checking it belongs to this run: ``CheckpointError`` otherwise),
      so an interrupted run finishes bit-identical to an uninterrupted one, on
      any number of devices. The caller removes it once the results are safe.
    - ``orders``: ``orders(e)`` → the order of the training examples in epoch
      ``e`` (an int array [n] for every net, or [K, n]), made on the host, in
      place of the permutation drawn from the keys (the book's random
      streams, ``book_random``); None: the keys' permutations.

    The K axis is padded to a multiple of the devices (``devices.Layout``:
    copies of the last net, trained and dropped) and sharded over them.
    """
    called = time.perf_counter()
    run = prepare_run(params, training_data, epochs, eta=eta, lmbda=lmbda, n_penalty=n_penalty,
                      evaluation=evaluation, rules=rules, k_mode=trainer.k_mode)
    watched = fit_watch.watching(epochs=run.epochs, nets=run.k, examples=int(run.x.shape[0]),
                                 evaluation={name: int(d[0].shape[0]) for name, d in run.sets.items()},
                                 rules=[rule.spec for rule in run.rules], started=called)
    check_labels(trainer.apply, params, {"the training data": (run.x, run.y)}
                 | {f"evaluation set {name!r}": d for name, d in run.sets.items()})
    state = initial_state(trainer, params, key, run)
    identity, events = None, []
    if checkpoint is not None:
        identity = run_identity(checkpoint, trainer, state, run, training_data, evaluation, orders is not None)
        state, events = resumed_or_fresh(checkpoint, state, identity, run.epochs)
    resumed_epochs = int(state.epoch)
    state, events = run_epochs(trainer, run, placed_state(state, run.layout), events, orders, on_epoch,
                               checkpoint, identity, watched)
    history = History(metrics=history_metrics(state.metrics), eta=list(state.eta),
                      seconds=list(state.seconds), resumed_epochs=resumed_epochs,
                      stopped_at=np.asarray(state.stopped_at), diverged_at=np.asarray(state.diverged_at),
                      events=events)
    return Fitted(run.layout.gathered(state.params), run.layout.gathered(state.opt_state), history)


def history_metrics(metrics):
    """The state's metrics ([epochs, K] arrays) as the History's lists, the
    ``<set>_accuracy`` counts (images correct) as integers: the state keeps
    every metric as float64, a layout its checkpoints are saved and checked in."""
    return {name: list(v.astype(np.int64) if name.endswith("_accuracy") else v) for name, v in metrics.items()}


def resumed_or_fresh(checkpoint, state, identity, epochs):
    """``(state, events)``: the checkpoint's state and a "resumed" event when
    the file exists (checked to be this run's), else ``state`` and no event."""
    if not checkpoint.exists():
        return state, []
    state = resumed_state(checkpoint, state, identity)
    return state, [{"event": "resumed", "path": str(checkpoint.path), "epochs_done": int(state.epoch),
                    "epochs": epochs}]


def run_epochs(trainer, run, state, events, orders, on_epoch, checkpoint, identity, watched=None):
    """The loop: epochs until ``run.epochs`` or no net is active, each one
    trained, booked (``after_epoch``), saved to ``checkpoint`` and handed to
    ``on_epoch``. ``events`` (a resume's) go into the first record. Returns
    ``(state, every event)``. ``watched`` (``fit_watch``): each epoch's time
    recorded, and the loop ended early when a watch has had enough."""
    pending, all_events = events, []
    while int(state.epoch) < run.epochs and state.active.any():
        e, started = int(state.epoch), time.perf_counter()
        state, record = train_epoch(trainer, run, state, orders, watched)
        record["events"], pending = pending, []
        state, record = after_epoch(state, record, run, time.perf_counter() - started)
        all_events += record["events"]
        if checkpoint is not None:
            saved = host_state(state, run.layout)     # every process gathers; process 0 writes
            if distributed.is_main():
                checkpoint.save(saved, identity, int(state.epoch))
        if on_epoch is not None:
            on_epoch(e, EpochRecord(record, partial(run.layout.gathered, state.params)))
        if watched is not None:
            watched.epoch_ended()
            if fit_watch.had_enough(watched):
                watched.ended_early = int(state.epoch) < run.epochs and bool(state.active.any())
                break
    return state, all_events + pending   # pending: a resumed run that had nothing left to do


class EpochRecord(dict):
    """An epoch's record for ``on_epoch``: its values, and ``record["params"]``
    made only when a callback asks for it (over several processes that means
    gathering every net's params from all of them: no cost when unused)."""

    def __init__(self, values, params):
        super().__init__(values)
        self._params = params

    def __missing__(self, key):
        if key != "params":
            raise KeyError(key)
        self["params"] = self._params()
        return self["params"]


def _finite(tree):
    """[K]: whether every parameter of each of the K stacked nets is finite."""
    leaves = [jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
              for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


_all_finite = jax.jit(_finite)


# --- seeds and K networks ------------------------------------------------------

def init_many(init, keys, input_shape):
    """Initialize K networks from [K] keys, stacked on a leading axis (one
    compiled program per ``init`` and input shape, not one per random draw)."""
    return _compiled_init(init, tuple(input_shape), True)(keys)


def init_params(net, key, input_shape):
    """The params of one network (``net``: a ``layers.Net`` or an ``init``
    function) drawn from ``key``, by one compiled program kept per network."""
    return _compiled_init(getattr(net, "init", net), tuple(input_shape), False)(key)


@functools.lru_cache(maxsize=TRAINER_CACHE_SIZE)
def _compiled_init(init, input_shape, stacked):
    use_compilation_cache()
    one = lambda key: init(key, input_shape)[1]  # noqa: E731
    return jax.jit(jax.vmap(one) if stacked else one)


def from_seeds(init, input_shape, seeds):
    """K networks and their training keys from integer seeds: ``(params, keys)``
    for ``fit`` (seed s: ``seed_keys([s])``, so a net is the same whichever
    other seeds it trains beside)."""
    init_keys, train_keys = seed_keys(seeds)
    return init_many(init, init_keys, input_shape), train_keys
