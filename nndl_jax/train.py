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
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nndl_jax import costs as costs_mod


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


def minibatch_indices(n, m, key, shuffle):
    """Indices ``[num_batches, m]`` of the epoch's mini-batches and their mask.

    The order is a permutation of ``range(n)`` from ``key`` (or ``range(n)``
    itself when ``shuffle`` is False), cut into consecutive batches of ``m``;
    the last batch is padded with index 0 and masked out there.
    """
    num_batches = -(-n // m)
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    padded = num_batches * m
    order = jnp.concatenate([order, jnp.zeros(padded - n, order.dtype)])
    mask = jnp.arange(padded) < n
    return order.reshape(num_batches, m), mask.reshape(num_batches, m)


def epoch(params, opt_state, x, y, key, c, *, apply, cost, penalty, optimizer,
          mini_batch_size, shuffle):
    """One epoch of mini-batch SGD as a single ``lax.scan`` over mini-batches."""
    shuffle_key, dropout_key = jax.random.split(key)
    idx, mask = minibatch_indices(x.shape[0], mini_batch_size, shuffle_key, shuffle)

    def body(carry, batch):
        i, b_idx, b_mask = batch
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
        correct = jnp.sum(jnp.argmax(z, axis=-1) == y)
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
    return [jax.tree_util.tree_map(lambda x: x[i], tree) for i in range(k)]


MONITORS = ("evaluation_cost", "evaluation_accuracy", "training_cost", "training_accuracy")


@dataclass
class History:
    """What ``fit`` records, one row per epoch run, one column per network.

    The four monitoring lists of the book's network2 ``SGD`` (empty when not
    monitored), the learning rate each epoch ran with, and for each net the
    epoch at which early stopping or the schedule stopped it (-1: ran to the end).
    """

    evaluation_cost: list = field(default_factory=list)
    evaluation_accuracy: list = field(default_factory=list)
    training_cost: list = field(default_factory=list)
    training_accuracy: list = field(default_factory=list)
    eta: list = field(default_factory=list)
    stopped_at: Optional[np.ndarray] = None

    def as_arrays(self):
        """The lists as NumPy arrays ``[epochs, K]`` (for JSON and plots)."""
        return {name: np.asarray(getattr(self, name)) for name in MONITORS + ("eta",)}


@dataclass(eq=False)
class Trainer:
    """Mini-batch SGD for one kind of network, compiled once.

    ``apply`` and ``cost`` define the network; ``penalty`` is None, "l2" or
    "l1"; ``momentum`` μ turns plain SGD into the book's momentum rule
    (v → μv − η∇C, w → w + v; optax's ``sgd(momentum=μ)`` is the same update
    for a fixed η). The learning rate lives in the optimizer state
    (``optax.inject_hyperparams``), one per network, so a grid of η compiles
    once and halving η on a plateau edits state and compiles nothing.

    ``over_k`` says how the epoch runs K > 1 nets: "vmap" (one batched step
    for all K; the default), "map" (``lax.map``: the K epochs one after
    another in the same compiled program) or "auto" (see ``k_axis_mode``;
    network3 uses it for conv nets). Both give the same numbers
    (tests/test_core.py). One net (K = 1) always takes the vmap path.
    """

    apply: Callable
    cost: costs_mod.Cost
    mini_batch_size: int
    penalty: Optional[str] = None
    momentum: float = 0.0
    shuffle: bool = True
    eval_chunk: int = 1000
    over_k: str = "vmap"

    def __post_init__(self):
        if int(self.mini_batch_size) < 1:
            raise ValueError(f"mini_batch_size must be a positive integer, got {self.mini_batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        penalty = costs_mod.penalty_by_name(self.penalty)
        self.optimizer = optax.inject_hyperparams(optax.sgd)(
            learning_rate=1.0, momentum=self.momentum or None)
        one_epoch = partial(epoch, apply=self.apply, cost=self.cost, penalty=penalty,
                            optimizer=self.optimizer, mini_batch_size=int(self.mini_batch_size),
                            shuffle=self.shuffle)

        over_k = k_axis_mode(self.over_k)

        def epoch_k(params, opt_state, x, y, keys, c, active):
            if over_k == "vmap" or keys.shape[0] == 1:
                new_params, new_state = jax.vmap(one_epoch, in_axes=(0, 0, None, None, 0, 0))(
                    params, opt_state, x, y, keys, c)
            else:  # one net after another, inside the same compiled program
                new_params, new_state = jax.lax.map(
                    lambda a: one_epoch(a[0], a[1], x, y, a[2], a[3]), (params, opt_state, keys, c))
            keep = lambda new, old: jnp.where(  # noqa: E731 (a net that stopped keeps its params)
                active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
            return (jax.tree_util.tree_map(keep, new_params, params),
                    jax.tree_util.tree_map(keep, new_state, opt_state))

        self.epoch = jax.jit(epoch_k, donate_argnums=(0, 1))
        self.evaluate = jax.jit(jax.vmap(
            partial(evaluate, apply=self.apply, cost=self.cost, penalty=penalty, chunk=self.eval_chunk),
            in_axes=(0, None, None, 0)))
        self.predict = jax.jit(jax.vmap(partial(predict, apply=self.apply, chunk=self.eval_chunk),
                                        in_axes=(0, None)))

    def init_opt_state(self, params, eta):
        """Optimizer state for K stacked networks, with learning rates ``eta`` [K]."""
        k = jax.tree_util.tree_leaves(params)[0].shape[0]
        state = jax.vmap(self.optimizer.init)(params)
        return set_eta(state, jnp.broadcast_to(jnp.asarray(eta, _dtype(params)), (k,)))


def k_axis_mode(mode="auto"):
    """"vmap" or "map" for ``Trainer.over_k``. "auto" is "map" on a single CPU
    device and "vmap" otherwise. It is meant for conv nets: on the CPU a
    vmapped convolution over K stacked filter banks becomes a grouped
    convolution that XLA runs slowly (measured on the 2-core CPU, the two-conv
    net: K = 3 vmapped 17.9 ms per step, mapped 10.2 ms), while on a GPU, and
    across several devices (where the K axis is sharded), vmap is the way.
    Fully connected nets stay vmapped (K = 8 [784,30,10] nets on the CPU:
    mapped 18-22 % slower than vmapped)."""
    if mode == "auto":
        single_cpu = jax.default_backend() == "cpu" and len(jax.local_devices()) == 1
        return "map" if single_cpu else "vmap"
    if mode not in ("vmap", "map"):
        raise ValueError(f"over_k must be 'auto', 'vmap' or 'map', got {mode!r}")
    return mode


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


def fit(trainer, params, training_data, epochs, *, key, eta, lmbda=0.0, n_penalty=None,
        opt_state=None, evaluation_data=None, monitor=(), early_stopping_n=0,
        schedule_n=0, schedule_floor=1 / 128, start_epoch=0, on_epoch=None):
    """Train K stacked networks for ``epochs`` epochs; return (params, opt_state, History).

    - ``params``: K networks stacked on a leading axis (``stack``).
    - ``training_data``, ``evaluation_data``: ``(x, y)`` arrays (see ``data.as_arrays``).
    - ``key``: one PRNG key per network ([K] keys) or one key for all of them;
      epoch e of net k uses ``fold_in(key[k], e)``.
    - ``eta``, ``lmbda``: scalars or [K] arrays. The training penalty coefficient
      is ``lmbda / n_penalty`` (``n_penalty`` defaults to the training-set size,
      network2's rule; network3 passes its number of mini-batches).
    - ``monitor``: names from ``MONITORS`` computed after every epoch, inside
      compiled code; costs include the penalty with ``lmbda / len(data)``.
    - ``early_stopping_n``: stop a net after n epochs without a new best
      evaluation accuracy (the book's no-improvement-in-n).
    - ``schedule_n``: instead of stopping, halve that net's η after n epochs
      without improvement, and stop it once η has fallen to ``schedule_floor``
      of its start (the book's 1/128).
    - ``on_epoch(e, record)``: called after each epoch with the epoch's values
      ([K] NumPy arrays), for printing progress; ``record["params"]`` holds the
      K networks' params after the epoch (device arrays, donated by the next
      epoch: compute from them inside the callback, e.g. with a jitted function).
    """
    x, y = _device_data(training_data, _dtype(params))
    params = jax.tree_util.tree_map(jnp.copy, params)  # the epoch donates its buffers, not the caller's
    n = x.shape[0]
    k = jax.tree_util.tree_leaves(params)[0].shape[0]
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if n == 0:
        raise ValueError("the training data is empty")
    dtype = _dtype(params)
    eta = jnp.broadcast_to(jnp.asarray(eta, dtype), (k,))
    if bool(jnp.any(eta <= 0)):
        raise ValueError(f"the learning rate eta must be positive, got {np.asarray(eta)}")
    lmbda = jnp.broadcast_to(jnp.asarray(lmbda, dtype), (k,))
    if bool(jnp.any(lmbda < 0)):
        raise ValueError(f"the regularization parameter lmbda must be >= 0, got {np.asarray(lmbda)}")
    c = lmbda / (n if n_penalty is None else n_penalty)
    keys = jnp.broadcast_to(key, (k,)) if jnp.ndim(key) == 0 else key
    if opt_state is None:
        opt_state = trainer.init_opt_state(params, eta)
    else:  # as for params: the epoch donates the copy, the caller's state stays usable
        opt_state = jax.tree_util.tree_map(jnp.copy, opt_state)
    unknown = set(monitor) - set(MONITORS)
    if unknown:
        raise ValueError(f"unknown monitors {sorted(unknown)}; choose from {MONITORS}")
    needs_eval = bool(early_stopping_n or schedule_n or
                      {"evaluation_cost", "evaluation_accuracy"} & set(monitor))
    if needs_eval and evaluation_data is None:
        raise ValueError("monitoring evaluation data, early stopping and the schedule need evaluation_data")
    ev = _device_data(evaluation_data, dtype) if evaluation_data is not None else None

    history = History(stopped_at=np.full(k, -1))
    active = np.ones(k, bool)
    best = np.full(k, -1)
    since_best = np.zeros(k, int)
    eta0 = np.asarray(get_eta(opt_state))
    for e in range(start_epoch, start_epoch + epochs):
        history.eta.append(np.asarray(get_eta(opt_state)))
        epoch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, e)
        params, opt_state = trainer.epoch(params, opt_state, x, y, epoch_keys, c, jnp.asarray(active))
        record = {"epoch": e, "active": active.copy(), "params": params}
        if {"training_cost", "training_accuracy"} & set(monitor):
            correct, cost = trainer.evaluate(params, x, y, lmbda)
            record["training_cost"], record["training_accuracy"] = np.asarray(cost), np.asarray(correct)
        if ev is not None:
            correct, cost = trainer.evaluate(params, ev[0], ev[1], lmbda)
            record["evaluation_cost"], record["evaluation_accuracy"] = np.asarray(cost), np.asarray(correct)
        for name in monitor:
            getattr(history, name).append(record[name])
        if on_epoch is not None:
            on_epoch(e, record)
        if early_stopping_n or schedule_n:
            acc = record["evaluation_accuracy"]
            improved = acc > best
            best = np.where(improved, acc, best)
            since_best = np.where(improved, 0, since_best + 1)
            if schedule_n:
                plateau = active & (since_best >= schedule_n)
                if plateau.any():
                    new_eta = np.where(plateau, np.asarray(get_eta(opt_state)) / 2, np.asarray(get_eta(opt_state)))
                    opt_state = set_eta(opt_state, new_eta)
                    since_best = np.where(plateau, 0, since_best)
                    done = plateau & (new_eta <= eta0 * schedule_floor * (1 + 1e-6))
                else:
                    done = np.zeros(k, bool)
            else:
                done = active & (since_best >= early_stopping_n)
            history.stopped_at = np.where(done, e, history.stopped_at)
            active = active & ~done
            if not active.any():
                break
    return params, opt_state, history


# --- seeds and K networks ------------------------------------------------------

def seed_keys(seeds):
    """Named keys for runs with the given integer seeds: ``(init_keys, train_keys)``,
    each [K]. The seed is all a results file needs to record to replay a run."""
    pairs = [jax.random.split(jax.random.key(int(s))) for s in seeds]
    return jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])


def init_many(init, keys, input_shape):
    """Initialize K networks from [K] keys, stacked on a leading axis."""
    return jax.vmap(lambda k: init(k, input_shape)[1])(keys)


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
