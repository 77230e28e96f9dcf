"""The book's network2.py (chapter 3), as a thin façade over the functional core.

    >>> from nndl_jax import mnist_loader, network2
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)
    >>> net.large_weight_initializer()
    >>> net.SGD(training_data, 30, 10, 0.5, evaluation_data=test_data,
    ...         monitor_evaluation_accuracy=True)
    Epoch 0 training complete
    Accuracy on evaluation data: ... / 10000
    ...

What chapter 3 adds to network.py: the cross-entropy cost, L2 regularization
(w → (1 − ηλ/n)w − η∇C, biases not decayed, n the size of the training set),
the 1/√n_in weight initialization, monitoring of cost and accuracy on the
training and evaluation data, early stopping (no-improvement-in-n), saving and
loading in the book's JSON format. Beyond the book (its problems): L1
regularization, momentum, the halve-η-on-a-plateau schedule, the
log-likelihood cost with a softmax output.

The training loop is ``train.fit`` (one compiled program per epoch; the
monitoring, early stopping and the schedule live there); this module converts
the book's arguments, prints what the book prints and keeps the params.

The cost classes keep the book's NumPy ``fn(a, y)`` and ``delta(z, a, y)`` for
readers; training uses the core cost they name (``CrossEntropyCost.core`` is
``costs.cross_entropy``), computed stably from the weighted input z. A cost
class of your own (or an instance, as ``fig/overfitting.py`` passes
``CrossEntropyCost()``) trains too: write its ``fn(a, y)`` with ``jax.numpy``
and ``jax.grad`` differentiates it (see ``Network``).

As network.py, every new network is a fresh random network and every ``SGD``
call shuffles with a fresh seed; both are recorded (``net.seed``,
``net.last_sgd_seed``) so a run replays exactly with ``seed=``.

The book's own streams, as network.py's ``book_seed`` (see there: float64
under ``jax.enable_x64(True)`` and byte/256 pixels for the book's numbers):
``Network(sizes, cost, book_seed=S)`` draws ``default_weight_initializer``'s
weights from ``np.random.seed(S)``'s stream, and ``large_weight_initializer()``
and ``default_weight_initializer()`` draw again from the same stream, as the
book's do; ``SGD`` shuffles the list in place with the book's Python-2.7
shuffle over ``random.Random(S)``, continuing across epochs and calls. The
book's chapter-3 session with its figure scripts' seed::

    >>> jax.config.update("jax_enable_x64", True)
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper(book_pixels=True)
    >>> net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost, book_seed=12345678)
    >>> net.large_weight_initializer()
    >>> net.SGD(training_data, 30, 10, 0.5, lmbda=5.0, evaluation_data=test_data,
    ...         monitor_evaluation_accuracy=True)

gives the book's ``fig/regularized_full.json``: test accuracy equal in 29 of
30 epochs (epoch 27: 9,621 against the book's 9,620; the mini-batch sum's
order), peak 96.49 % and final 95.61 % as the book's (measured, 30 s on the CPU).
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import activations, costs, files, layers, network, train
from nndl_jax.data import is_pair_of_sets
from nndl_jax.mnist_loader import vectorized_result  # noqa: F401 (the book's network2 has it too)
from nndl_jax.network import book_to_params, params_to_book

# --- the book's miscellaneous functions (NumPy, as in the book) -------------------



def sigmoid(z):
    """The sigmoid function 1/(1 + e^(−z)) on NumPy arrays (written as
    ½(1 + tanh(z/2)), which never overflows)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z)))


def sigmoid_prime(z):
    """Derivative of the sigmoid function: σ(z)(1 − σ(z))."""
    s = sigmoid(z)
    return s * (1 - s)


class QuadraticCost:
    """C = ½||a − y||² (chapter 1's cost)."""

    core = costs.quadratic

    @staticmethod
    def fn(a, y):
        """The cost of output ``a`` for desired output ``y``."""
        return 0.5 * np.linalg.norm(a - y) ** 2

    @staticmethod
    def delta(z, a, y):
        """The output-layer error δ^L = (a − y) ⊙ σ'(z)."""
        return (a - y) * sigmoid_prime(z)


class CrossEntropyCost:
    """C = −Σ_j [y_j ln a_j + (1 − y_j) ln(1 − a_j)] (chapter 3)."""

    core = costs.cross_entropy

    @staticmethod
    def fn(a, y):
        """The cost of output ``a`` for desired output ``y``. ``np.nan_to_num``
        makes 0·ln 0 count as 0, as in the book (training uses the stable
        form from z instead, see ``costs.cross_entropy``)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sum(np.nan_to_num(-y * np.log(a) - (1 - y) * np.log(1 - a)))

    @staticmethod
    def delta(z, a, y):
        """The output-layer error δ^L = a − y (σ'(z) cancels; z is unused)."""
        return a - y


class LogLikelihoodCost:
    """C = −ln a_y with a softmax output layer (chapter 3's softmax section;
    an extension: the book's network2.py has no softmax)."""

    core = costs.log_likelihood

    @staticmethod
    def fn(a, y):
        with np.errstate(divide="ignore"):
            return float(np.nan_to_num(-np.sum(y * np.log(a))))

    @staticmethod
    def delta(z, a, y):
        return a - y


COSTS = {c.__name__: c for c in (QuadraticCost, CrossEntropyCost, LogLikelihoodCost)}


def cost_class(cost):
    """The class of a cost given as a class or as an instance (the book's
    figure scripts pass ``CrossEntropyCost()``)."""
    return cost if isinstance(cost, type) else type(cost)


def core_cost(cost, n_out):
    """The ``costs.Cost`` that trains with the book's cost ``cost`` (a class or
    an instance) on ``n_out`` sigmoid outputs.

    The book's classes (and subclasses that keep their ``fn``) train with the
    core cost they name, computed stably from z. Any other cost trains with
    its own ``fn(a, y)``, differentiated by ``jax.grad``: ``a = σ(z)`` and
    ``y`` come as (n_out, 1) columns, as in the book, so ``fn`` must be
    written with ``jax.numpy`` (``jnp.log``, ``jnp.sum``, ...). Its ``delta``
    is not used here (the NumPy reference, ``backprop``, is where a
    hand-written δ^L lives). A ``fn`` that cannot be traced by JAX is a
    ``ValueError`` here, before any training.
    """
    cls = cost_class(cost)
    for book in COSTS.values():
        if issubclass(cls, book) and cls.fn is book.fn:
            return book.core
    fn = getattr(cost, "fn", None)
    if not callable(fn):
        raise ValueError(  # noqa: TRY004 (a bad argument value, as the other checks here)
            f"cost must be a cost class such as network2.CrossEntropyCost (or an instance) "
            f"with a method fn(a, y); got {cost!r}")

    def from_z(z, y):
        return jnp.reshape(fn(jax.nn.sigmoid(z).reshape(-1, 1), y.reshape(-1, 1)), ())

    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((n_out, 1), jnp.float32),
                             jax.ShapeDtypeStruct((n_out, 1), jnp.float32))
    except Exception as e:  # noqa: BLE001 - any failure to trace is in the user's fn
        raise ValueError(
            f"{cls.__name__}.fn(a, y) cannot be traced by JAX, so jax.grad cannot train with it: "
            f"write it with jax.numpy (jnp.log, jnp.sum, jnp.linalg.norm ...) instead of numpy "
            f"or Python control flow on values. Tracing it raised {type(e).__name__}: "
            f"{str(e).splitlines()[0]}") from None
    if getattr(out, "size", None) != 1:
        raise ValueError(f"{cls.__name__}.fn(a, y) must return one number per example, "
                         f"got shape {getattr(out, 'shape', out)}")
    return costs.Cost(cls.__name__, from_z, jax.nn.sigmoid,
                      lambda z, y: jax.grad(from_z)(z, y))


# --- the network -------------------------------------------------------------------

def _sgd_rules(epochs, mini_batch_size, eta, lmbda, regularization, early_stopping_n, schedule_n):
    """``SGD``'s settings checked before any data is read; returns the stopping rules they ask for."""
    network._check_hyper(epochs, mini_batch_size, eta)
    if regularization not in ("l2", "l1"):
        raise ValueError(f"regularization must be 'l2' or 'l1', got {regularization!r}")
    train.check_lmbda(lmbda)
    for name, v in (("early_stopping_n", early_stopping_n), ("schedule_n", schedule_n)):
        if v != 0:  # 0 (or False, the book's default spelled otherwise): off
            train.positive_int(v, name)
    if early_stopping_n and schedule_n:
        raise ValueError("choose early_stopping_n or schedule_n, not both")
    return ([train.early_stopping(early_stopping_n)] if early_stopping_n else []) + (
        [train.plateau_schedule(schedule_n)] if schedule_n else [])


class Network(network.Network):
    """A fully connected network for chapter 3.

    ``sizes``: neurons per layer; ``cost``: ``QuadraticCost``,
    ``CrossEntropyCost`` (default), ``LogLikelihoodCost`` or a cost class of
    your own with ``fn(a, y)`` written in ``jax.numpy`` (see ``core_cost``),
    as a class or an instance; ``seed``: the seed of the initial weights (None:
    a fresh one, kept as ``self.seed``); ``book_seed``: the book's random
    streams instead (a seed S or a shared ``book_random.BookStreams``; see the
    module docstring); ``activation`` of the hidden layers (a JAX function).
    Weights start from ``default_weight_initializer`` (N(0, 1/n_in)).
    ``self.cost`` is the cost as given, as in the book.
    """

    def __init__(self, sizes, cost=CrossEntropyCost, *, seed=None, activation=activations.sigmoid,
                 book_seed=None):
        sizes = network.sizes_of(sizes)
        core_cost(cost, sizes[-1])  # a clear error for a cost that cannot train, before anything else
        self.activation = activation
        self.initializer = layers.default_weight_init
        self.regularization = "l2"
        super().__init__(sizes, seed=seed, book_seed=book_seed)
        self.cost = cost
        self._draws = 0

    # --- initialization ----------------------------------------------------------
    def _redraw(self, init):
        """Fresh weights and biases from ``init``: each call draws anew, as
        the book's (which draws from NumPy's global generator). The k-th
        redraw uses ``fold_in(init key, k)``, so a network rebuilt with the
        same ``seed`` and the same calls has the same weights; a network with
        ``book_seed`` draws from the book's stream, continuing it."""
        self._draws += 1
        self.net = layers.mlp_net(self.sizes, self.activation, init=init)
        self._init, self._apply = self.net.init, self.net.apply
        key = None if self.book_streams is not None else jax.random.fold_in(self._init_key, self._draws)
        self.params = self._drawn_params(init, key)

    def default_weight_initializer(self):
        """Fresh weights N(0, 1/n_in) (standard deviation 1/√n_in) and biases
        N(0, 1). (The network starts from such a draw.)"""
        self._redraw(layers.default_weight_init)

    def large_weight_initializer(self):
        """Fresh weights and biases N(0, 1), as in chapter 1."""
        self._redraw(layers.large_weight_init)

    # --- the book's methods ------------------------------------------------------
    def SGD(self, training_data, epochs, mini_batch_size, eta, lmbda=0.0, evaluation_data=None,
            monitor_evaluation_cost=False, monitor_evaluation_accuracy=False,
            monitor_training_cost=False, monitor_training_accuracy=False,
            early_stopping_n=0, *, regularization="l2", momentum=0.0, schedule_n=0,
            shuffle=True, seed=None):
        """Mini-batch SGD with the book's monitoring; returns the book's four
        lists ``(evaluation_cost, evaluation_accuracy, training_cost,
        training_accuracy)``, empty where not monitored.

        ``lmbda``: the regularization parameter λ (weights decay by ηλ/n per
        step, n = len(training_data)). ``early_stopping_n``: stop after n
        epochs with no new best evaluation accuracy. Beyond the book:
        ``regularization`` "l2" or "l1"; ``momentum`` μ (v → μv − η∇C,
        w → w + v); ``schedule_n``: halve η after n epochs with no new best
        evaluation accuracy and stop once η is 1/128 of its start;
        ``shuffle=False`` keeps dataset order; ``seed`` fixes the shuffling
        (None: a fresh seed, recorded as ``self.last_sgd_seed``). A network
        made with ``book_seed`` shuffles the list in place with the book's
        stream instead (module docstring).
        """
        rules = _sgd_rules(epochs, mini_batch_size, eta, lmbda, regularization, early_stopping_n, schedule_n)
        training = self._data(training_data)
        evaluation = self._data(evaluation_data) if evaluation_data is not None else None
        if evaluation is None and (monitor_evaluation_cost or monitor_evaluation_accuracy
                                   or early_stopping_n or schedule_n):
            raise ValueError("monitoring evaluation data, early stopping and the schedule "
                             "need evaluation_data")
        sets = {"evaluation": evaluation} if evaluation is not None else {}
        if monitor_training_cost or monitor_training_accuracy:
            sets["training"] = training
        n, n_data = len(training.y), (len(evaluation.y) if evaluation is not None else 0)
        self.regularization = regularization

        def report(e, record):
            print(f"Epoch {e} training complete")
            if monitor_training_cost:
                print(f"Cost on training data: {float(record['training_cost'][0])}")
            if monitor_training_accuracy:
                print(f"Accuracy on training data: {int(record['training_accuracy'][0])} / {n}")
            if monitor_evaluation_cost:
                print(f"Cost on evaluation data: {float(record['evaluation_cost'][0])}")
            if monitor_evaluation_accuracy:
                print(f"Accuracy on evaluation data: {int(record['evaluation_accuracy'][0])} / {n_data}")
            print(flush=True)

        trainer = self._trainer(mini_batch_size, shuffle, penalty=regularization,
                                momentum=float(momentum))
        key = self._sgd_key(seed)
        network.say_the_wait("network2.py")
        with self._book_shuffles(training_data, n, shuffle) as orders:
            params, _, history = train.fit(
                trainer, train.stack([self.params]), training, epochs, key=key,
                eta=eta, lmbda=lmbda, evaluation=sets, rules=rules, on_epoch=report, orders=orders)
        self.params = train.unstack(params)[0]
        self.stopped_at = int(history.stopped_at[0])
        self.eta_history = [float(v[0]) for v in history.eta]
        if self.stopped_at >= 0 and early_stopping_n:
            print(f"Early-stopping: No accuracy change in last epochs: {early_stopping_n}")
        elif self.stopped_at >= 0:
            print(f"Learning-rate schedule: eta fell to 1/128 of {eta} after epoch {self.stopped_at}")
        sys.stdout.flush()
        monitored = lambda name, on: history[name] if on else []  # noqa: E731
        return ([float(v[0]) for v in monitored("evaluation_cost", monitor_evaluation_cost)],
                [int(v[0]) for v in monitored("evaluation_accuracy", monitor_evaluation_accuracy)],
                [float(v[0]) for v in monitored("training_cost", monitor_training_cost)],
                [int(v[0]) for v in monitored("training_accuracy", monitor_training_accuracy)])

    def accuracy(self, data, convert=False):
        """The number of inputs whose most active output neuron is the label.

        ``convert`` is the book's flag: True for the (one-hot) training data,
        False for the integer labels of validation/test data. Here the labels
        are read whichever way they come (``data.as_arrays``), so the flag is
        accepted and only has to match the data: for the book's list of
        (x, y) pairs a mismatch is an error; for (x, y) arrays it is ignored.
        """
        d = self._data(data, one_hot=bool(convert))
        correct, _ = self._evaluate(d, 0.0)
        return int(correct)

    def total_cost(self, data, lmbda, convert=False):
        """The mean cost over ``data`` plus 0.5·(λ/len(data))·Σ||w||² (the book's
        convention: λ is divided by the size of the data evaluated; with L1
        training, the L1 term λ/len(data)·Σ|w|). ``convert`` is the book's flag,
        the other way round from ``accuracy``'s: False for the (one-hot)
        training data, True for the integer labels of validation/test data; it
        only has to match the data (checked for the book's list of pairs)."""
        train.check_lmbda(lmbda)
        d = self._data(data, one_hot=not convert)
        _, cost = self._evaluate(d, lmbda)
        return float(cost)

    def update_mini_batch(self, mini_batch, eta, lmbda, n):
        """One gradient-descent step on one mini-batch with the book's L2 rule:
        w → (1 − ηλ/n)·w − η·(mean gradient), b → b − η·(mean gradient);
        ``n`` is the size of the whole training set (with
        ``self.regularization == "l1"``, the L1 rule w → w − (ηλ/n)·sign(w) − ...)."""
        network._check_hyper(1, 1, eta)
        train.check_lmbda(lmbda)
        n = train.positive_int(n, "n (the size of the training set)")
        batch = self._data(mini_batch)
        trainer = self._trainer(len(batch.y), False, penalty=self.regularization, momentum=0.0)
        params, _, _ = train.fit(trainer, train.stack([self.params]), batch, 1, key=jax.random.key(0),
                                 eta=eta, lmbda=lmbda, n_penalty=int(n))  # no shuffle: the key is unused
        self.params = train.unstack(params)[0]

    def save(self, filename):
        """Save to ``filename`` in the book's JSON format, atomically: a temporary
        file beside it, then a rename, so an existing file is never half-written
        (``files.atomic_write``). The cost is saved by its class name, as
        the book's; ``load`` knows the book's three. A network whose weights
        or biases are not all finite (training diverged) is not saved: ``load``
        would refuse the file (ValueError; nothing is written)."""
        weights, biases = params_to_book(self.params)
        if not all(np.all(np.isfinite(a)) for a in weights + biases):
            raise ValueError(f"not saving {filename}: the network's weights or biases are not all finite "
                             "(NaN or inf: did training diverge?), and a network file holds finite numbers")
        data = {"sizes": self.sizes,
                "weights": [w.astype(float).tolist() for w in weights],
                "biases": [b.astype(float).tolist() for b in biases],
                "cost": cost_class(self.cost).__name__}
        files.atomic_write(filename, lambda f: json.dump(data, f), mode="w")

    # --- plumbing ----------------------------------------------------------------------
    def _data(self, data, one_hot=None):
        if not isinstance(data, (tuple, list)) and not hasattr(data, "shape"):
            data = list(data)  # read a zip once: both lines below look at it
        d = super()._data(data)
        if one_hot is not None:
            found = _one_hot_labels(data)
            if found is not None and found != one_hot:
                raise ValueError(
                    f"the convert flag says the labels are {'one-hot vectors' if one_hot else 'integers'} "
                    f"but they are {'one-hot vectors' if found else 'integers'}; the book passes "
                    "accuracy(training_data, convert=True) and total_cost(validation_data, lmbda, "
                    "convert=True), and convert=False the other way round")
        return d

    def _evaluate(self, d, lmbda):
        evaluation = train.evaluation_for(self.net, self._core_cost, self.regularization)
        correct, cost = evaluation.evaluate(train.stack([self.params]), jax.numpy.asarray(d.x, self._dtype),
                                            d.y, np.full(1, lmbda, self._dtype))
        return correct[0], cost[0]

    @property
    def _core_cost(self):
        """The core cost of ``self.cost``, made again (and the compiled trainers
        dropped) when ``self.cost`` is replaced, as the book's attribute may be."""
        if getattr(self, "_core_of", None) is not self.cost:
            self._core = core_cost(self.cost, self.sizes[-1])
            self._core_of = self.cost
        return self._core


def _one_hot_labels(data):
    """For the book's list of (x, y) pairs: whether its labels are one-hot
    vectors. None for arrays (the flag is the book's, for the book's layout)."""
    if is_pair_of_sets(data):
        return None
    try:
        return np.size(data[0][1]) > 1
    except (TypeError, IndexError, KeyError):
        return None


# --- loading ------------------------------------------------------------------------

def _numbers(nested, what):
    """The nested JSON lists ``nested`` as a float64 array; refusing ragged
    lists and anything that is not a number (strings, booleans, null)."""
    def check(v):
        if isinstance(v, list):
            for item in v:
                check(item)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise NetworkFileError(f"{what} hold {json.dumps(v)}, not a number")
    check(nested)
    try:
        return np.asarray(nested, dtype=np.float64)
    except (ValueError, TypeError):
        raise NetworkFileError(f"{what} are ragged (rows of several lengths)") from None

class NetworkFileError(ValueError):
    """A network file that cannot be loaded (missing, not JSON, wrong content)."""


def load(filename):
    """Load a network saved by ``save`` (ours or the book's: the same JSON).

    Every check happens before a network is built, so a bad file gives a
    ``NetworkFileError`` (or ``FileNotFoundError``) naming the file and the
    problem, never a partial network.
    """
    path = Path(filename)
    if path.is_dir():
        raise NetworkFileError(f"{path} is a folder; give the network file saved in it (net.save(filename))")
    if not path.is_file():
        raise FileNotFoundError(f"network file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NetworkFileError(f"{path} is not a JSON network file (truncated or corrupt?): {e}") from None
    if not isinstance(data, dict):
        raise NetworkFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("sizes", "weights", "biases", "cost") if k not in data]
    if missing:
        raise NetworkFileError(f"{path}: missing keys {missing}")
    if not isinstance(data["cost"], str) or data["cost"] not in COSTS:
        raise NetworkFileError(f"{path}: unknown cost {data['cost']!r}; expected one of {sorted(COSTS)}")
    sizes = data["sizes"]
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise NetworkFileError(f"{path}: sizes must be a list of at least two positive integers, got {sizes!r}")
    weights, biases = data["weights"], data["biases"]
    if not isinstance(weights, list) or not isinstance(biases, list) \
            or len(weights) != len(sizes) - 1 or len(biases) != len(sizes) - 1:
        raise NetworkFileError(f"{path}: expected {len(sizes) - 1} weight and bias arrays for sizes {sizes}")
    ws, bs = [], []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w, b = (_numbers(v, f"{path}: layer {l} {name}") for v, name in ((weights[l], "weights"),
                                                                             (biases[l], "biases")))
        if w.shape != (n_out, n_in) or b.shape != (n_out, 1):
            raise NetworkFileError(f"{path}: layer {l} has weights {w.shape} and biases {b.shape}; "
                                   f"sizes {sizes} need ({n_out}, {n_in}) and ({n_out}, 1)")
        for name, v in (("weights", w), ("biases", b)):
            with np.errstate(over="ignore"):  # beyond float32's range: inf, refused here
                finite = np.all(np.isfinite(v.astype(np.float32)))
            if not finite:
                raise NetworkFileError(f"{path}: layer {l} {name} hold numbers that are not finite "
                                       "(NaN, Infinity, or beyond float32's range)")
        ws.append(w)
        bs.append(b)
    net = Network(sizes, cost=COSTS[data["cost"]])
    net.params = book_to_params(ws, bs)
    return net
