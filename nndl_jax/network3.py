"""The book's network3.py (chapter 6): convolutional networks, as a thin
façade over the functional core.

    >>> from nndl_jax import network3
    >>> from nndl_jax.network3 import Network, ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer, ReLU
    >>> training_data, validation_data, test_data = network3.load_data_shared()
    >>> mini_batch_size = 10
    >>> net = Network([
    ...     ConvPoolLayer(image_shape=(mini_batch_size, 1, 28, 28), filter_shape=(20, 1, 5, 5),
    ...                   poolsize=(2, 2), activation_fn=ReLU),
    ...     FullyConnectedLayer(n_in=20*12*12, n_out=100, activation_fn=ReLU),
    ...     SoftmaxLayer(n_in=100, n_out=10)], mini_batch_size)
    >>> net.SGD(training_data, 60, mini_batch_size, 0.03, validation_data, test_data, lmbda=0.1)

What differs from the book, and why:

- There is no Theano and no shared variable: ``load_data_shared`` returns the
  three sets as ``(x, y)`` arrays (x float32 [n, 784], y int32 [n]), and the
  networks are pure functions of a params pytree (``layers.conv_pool``,
  ``layers.fully_connected``, ``layers.softmax``), trained by ``train.fit``:
  one compiled program per epoch.
- The convolution is a cross-correlation (no kernel flip; Theano's conv2d
  flips). Learned filters come out mirrored relative to Theano's; accuracies
  are unaffected.
- ``SGD`` prints "Training mini-batch number N" every 1,000 mini-batches, as
  the book's (from inside the compiled epoch), and the book's epoch lines.
  It uses the book's mini-batches: dataset order (``shuffle=False``, as the
  book's network3 never shuffles), the last ``n mod mini_batch_size``
  training examples unused, L2 term 0.5·λ·Σ‖w‖²/num_training_batches, and the
  book's ``>=`` rule for the best validation accuracy.
- After training each layer holds its trained ``w`` and ``b`` (NumPy arrays) in
  the book's shapes: conv-pool ``w`` as ``filter_shape``, fully connected and
  softmax ``w`` as ``[n_in, n_out]``; its ``params`` is ``[w, b]``. They are
  set when a ``Network`` is built from the layers (the book's layers draw
  their weights when made).
- ``SGD`` returns None, as the book's; what it measured stays on
  ``net.history``. ``net.test_mb_predictions(i)`` and ``size(data)`` are the
  book's.
- Every new ``Network`` is a fresh random network (seed drawn from the
  operating system's entropy) and every ``SGD`` call draws fresh dropout
  masks; both seeds are recorded (``net.seed``, ``net.last_sgd_seed``) so a
  run replays exactly with ``seed=``. The book drew from NumPy's global
  generator and seeded its dropout streams with ``RandomState(0)``.
- ``activation_fn`` is any elementwise function written with ``jax.numpy``
  (the book's Theano functions become JAX ones); saving names it, so a
  custom one must be ``activations.register``-ed first.

Beyond the book: ``save``/``load`` (a documented ``.npz`` format),
``train_many`` (K nets, one per seed, as one compiled program) and
``ensemble`` (K nets and their plurality vote), which spread the K axis over
the local devices when there are several (``devices.k_axis_mode``: on CPU
devices each runs its nets one after another).
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import activations, costs, devices, layers, network, scoring, train, waits
from nndl_jax.activations import linear, relu, sigmoid, tanh  # noqa: F401 (the book's names)
from nndl_jax.checkpoint import HEADER, TreeFileError, load_tree, read_tree, save_tree
from nndl_jax.data import is_pair_of_sets
from nndl_jax.seeds import check_seed, seed_keys

ReLU = relu

CONV_LAYOUT = "auto"
"""The internal layout of conv-pool layers: "auto" (NHWC on the CPU, NCHW elsewhere), "NCHW"
or "NHWC" (see ``layers.conv_layout`` and ``benchmarks/bench_conv.py``)."""

FORMAT = "nndl-jax network3 v2"


# --- the book's layers ----------------------------------------------------------

class _Layer:
    """What the book's three layer classes share: ``w``, ``b`` and ``params``
    (``[w, b]``), NumPy arrays in the book's shapes, set when a ``Network`` is
    built from the layer and after each ``SGD`` (the book's layers draw their
    weights when they are made; here the Network draws them, from its seed);
    ``spec()``, the layer's arguments as JSON-able data (what ``save``
    records; a custom activation needs a registered name)."""

    w = b = None

    @property
    def params(self):
        return [self.w, self.b]

    def spec(self):
        spec = self._arguments()
        if "activation_fn" in spec:
            try:
                spec["activation_fn"] = activations.name_of(spec["activation_fn"])
            except ValueError as e:
                raise ValueError(f"{type(self).__name__}: {e}") from None
        return spec


class FullyConnectedLayer(_Layer):
    """A fully connected layer: a = act((1−p)·x·w + b) at evaluation, dropout
    on its input during training. w ~ N(0, 1/n_out), b ~ N(0, 1).
    ``activation_fn``: sigmoid, tanh, ReLU, linear or any elementwise function
    written with ``jax.numpy`` (see ``activations.check``)."""

    def __init__(self, n_in, n_out, activation_fn=sigmoid, p_dropout=0.0):
        self.n_in, self.n_out = _positive(n_in, "n_in"), _positive(n_out, "n_out")
        self.activation_fn = activations.check(activation_fn)
        self.p_dropout = _probability(p_dropout)

    def _arguments(self):
        return {"type": "FullyConnectedLayer", "n_in": self.n_in, "n_out": self.n_out,
                "activation_fn": self.activation_fn, "p_dropout": self.p_dropout}

    def layer(self):
        return layers.layer("fully_connected", n_out=self.n_out, activation=self.activation_fn,
                            p_dropout=self.p_dropout)

    n_in_values = property(lambda self: self.n_in)
    n_out_values = property(lambda self: self.n_out)


class ConvPoolLayer(_Layer):
    """A convolutional layer followed by max-pooling: a = act(maxpool(x ⋆ w) + b).
    ``filter_shape = (maps, input maps, fh, fw)``, ``image_shape = (mini_batch_size,
    input maps, h, w)``. w ~ N(0, 1/n_out) with n_out = maps·fh·fw/prod(poolsize)."""

    def __init__(self, filter_shape, image_shape, poolsize=(2, 2), activation_fn=sigmoid):
        self.filter_shape = layers.sizes_of(filter_shape, "filter_shape")
        self.image_shape = layers.sizes_of(image_shape, "image_shape")
        self.poolsize = layers.sizes_of(poolsize, "poolsize")
        self.activation_fn = activations.check(activation_fn)
        layers.conv_pool(self.filter_shape, self.image_shape, self.poolsize, activation_fn)  # checks the shapes

    def _arguments(self):
        return {"type": "ConvPoolLayer", "filter_shape": list(self.filter_shape),
                "image_shape": list(self.image_shape), "poolsize": list(self.poolsize),
                "activation_fn": self.activation_fn}

    def layer(self):
        return layers.layer("conv_pool", filter_shape=self.filter_shape, image_shape=self.image_shape,
                            poolsize=self.poolsize, activation=self.activation_fn, layout=CONV_LAYOUT)

    n_in_values = property(lambda self: int(np.prod(self.image_shape[1:])))

    @property
    def n_out_values(self):
        k, _, fh, fw = self.filter_shape
        _, h, w = self.image_shape[1:]
        return k * ((h - fh + 1) // self.poolsize[0]) * ((w - fw + 1) // self.poolsize[1])


class SoftmaxLayer(_Layer):
    """The output layer: softmax of (1−p)·x·w + b at evaluation, dropout on its
    input during training; w and b start at zero; trained with the
    log-likelihood cost."""

    def __init__(self, n_in, n_out, p_dropout=0.0):
        self.n_in, self.n_out = _positive(n_in, "n_in"), _positive(n_out, "n_out")
        self.p_dropout = _probability(p_dropout)

    def _arguments(self):
        return {"type": "SoftmaxLayer", "n_in": self.n_in, "n_out": self.n_out,
                "p_dropout": self.p_dropout}

    def layer(self):
        return layers.layer("softmax", n_out=self.n_out, p_dropout=self.p_dropout)

    n_in_values = property(lambda self: self.n_in)
    n_out_values = property(lambda self: self.n_out)


def layer_from_spec(spec):
    """Rebuild a layer object from its ``spec()`` dictionary."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if "activation_fn" in spec:
        spec["activation_fn"] = activations.by_name(spec["activation_fn"])
    classes = {"FullyConnectedLayer": FullyConnectedLayer, "ConvPoolLayer": ConvPoolLayer,
               "SoftmaxLayer": SoftmaxLayer}
    if kind not in classes:
        raise ValueError(f"unknown layer type {kind!r}")
    return classes[kind](**spec)


def _positive(n, name):
    return train.positive_int(n, name)


def _probability(p, name="p_dropout"):
    """``p`` as a float in [0, 1): a dropout rate (the fraction of inputs dropped)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1) (the fraction of a layer's inputs "
                         f"dropped in training), got {p!r}")
    return float(p)


def build(net_layers):
    """The ``layers.Net`` of a list of network3 layers (its ``init``/``apply``
    pair is the network), checking that each layer's input size is the
    previous layer's output size. Equal layer lists give equal Nets, so every
    network of one architecture shares its compiled programs."""
    net_layers = list(net_layers)
    if not net_layers:
        raise ValueError("a network needs at least one layer")
    for i, (prev, nxt) in enumerate(zip(net_layers, net_layers[1:])):
        if prev.n_out_values != nxt.n_in_values:
            raise ValueError(f"layer {i} gives {prev.n_out_values} values but layer {i + 1} "
                             f"expects {nxt.n_in_values}")
    if not isinstance(net_layers[-1], SoftmaxLayer):
        raise ValueError("the last layer must be a SoftmaxLayer (network3 trains with the log-likelihood cost)")
    return layers.Net(tuple(layer.layer() for layer in net_layers))


# --- data -----------------------------------------------------------------------------

def load_data_shared(filename=None):
    """The book's three sets, ``[training, validation, test]``, each an ``(x, y)``
    Dataset of arrays (there is no Theano shared variable here: ``train.fit``
    moves the data to the device once). ``filename``: a pickle in the book's
    layout (the book's ``mnist.pkl.gz``, or ``mnist_expanded.pkl.gz`` as the
    book's expand_mnist.py and ``python -m nndl_jax.expand_mnist --book-pickle
    PATH`` write it), or a folder of MNIST IDX files; None: ``$NNDL_JAX_DATA``
    or the user cache (see ``data.load_mnist``). The experiments read the
    expanded set from the faster ``.npz`` cache (``expand_mnist.load_expanded``).
    """
    from nndl_jax import data
    waits.say("network3.py", waits.LOADING_MNIST, once=True, stream=sys.stderr)
    if filename is not None and Path(filename).is_file():
        splits = data.read_pickle(filename)
    elif filename is not None and str(filename).endswith(".pkl.gz"):
        raise data.MNISTError(
            f"{filename} does not exist. Make the book's expanded set there with "
            f"`python -m nndl_jax.expand_mnist --book-pickle {filename}` (the book's expand_mnist.py), "
            "or call load_data_shared() without a filename to read MNIST from $NNDL_JAX_DATA or "
            "the user cache.")
    else:
        splits = data.load_mnist(filename)
    return [splits.training, splits.validation, splits.test]


def size(data):
    """The number of examples in ``data`` (the book's ``size``): an ``(x, y)``
    pair of arrays, as ``load_data_shared`` returns, or a list of pairs."""
    return len(data[0]) if is_pair_of_sets(data) else len(data)


# --- K networks at once ---------------------------------------------------------------

def print_iteration(iteration):
    """The book's progress line, every 1,000 mini-batches (``Trainer.on_iteration``)."""
    print(f"Training mini-batch number {int(iteration)}", flush=True)


def _trainer(net, mini_batch_size, shuffle, print_progress=False):
    return train.trainer_for(net, costs.log_likelihood, int(mini_batch_size), penalty="l2",
                             shuffle=bool(shuffle), over_k="auto",
                             on_iteration=print_iteration if print_progress else None)


def train_many(net_layers, mini_batch_size, training_data, epochs, eta, validation_data,
               test_data, lmbda=0.0, *, seeds=(0,), shuffle=False, params=None, train_keys=None,
               on_epoch=None, checkpoint=None, print_progress=False):
    """Train K = len(seeds) networks of the same architecture as one program
    (``train.fit``), the book's way (network3's SGD): the last
    ``n mod mini_batch_size`` training examples unused, L2 coefficient
    λ / num_training_batches, the validation and test accuracy of every net
    after every epoch.

    ``params``/``train_keys`` ([K] stacked) replace the seeds' draws (used by
    ``Network.SGD``); ``on_epoch(e, record)`` and ``checkpoint`` are
    ``train.fit``'s. Returns a dict: ``params`` (stacked [K]),
    ``validation_accuracy`` and ``test_accuracy`` ([epochs, K] fractions),
    ``best_validation``, ``best_epoch``, ``test_at_best`` ([K]) with the book's
    ``>=`` rule, ``diverged_at`` [K], ``num_training_batches``, ``seeds``,
    ``devices``, and the time of the epochs (``History``'s): ``seconds`` (all of
    them, across the sittings of a run resumed from ``checkpoint``) and
    ``earlier_seconds`` (those of earlier sittings).
    """
    net = build(net_layers)
    mb = _positive(mini_batch_size, "mini_batch_size")
    widths = {"n_inputs": net_layers[0].n_in_values, "n_classes": net_layers[-1].n_out}
    training = network.device_arrays(training_data, **widths)
    validation, test = network.device_arrays(validation_data, **widths), network.device_arrays(test_data, **widths)
    num_batches = len(training.y) // mb
    if num_batches < 1:
        raise ValueError(f"{len(training.y)} training examples make no mini-batch of {mb}")
    training = type(training)(training.x[:num_batches * mb], training.y[:num_batches * mb])
    from_seeds = params is None
    if from_seeds:
        params, train_keys = train.from_seeds(net.init, (training.x.shape[1],), seeds)
    run = train.fit(_trainer(net, mb, shuffle, print_progress), params, training, epochs,
                    key=train_keys, eta=eta, lmbda=lmbda, n_penalty=num_batches,
                    evaluation={"validation": validation, "test": test},
                    on_epoch=on_epoch, checkpoint=checkpoint)
    hist = run.history.as_arrays()
    k = len(run.history.stopped_at)
    out = {"params": run.params,
           "validation_accuracy": hist.get("validation_accuracy", np.zeros((0, k))) / len(validation.y),
           "test_accuracy": hist.get("test_accuracy", np.zeros((0, k))) / len(test.y),
           "diverged_at": run.history.diverged_at, "num_training_batches": num_batches,
           "seeds": [int(s) for s in seeds] if from_seeds else None,
           "devices": len(devices.devices_for(k))}
    out["seconds"], out["earlier_seconds"] = run.history.total_seconds, run.history.earlier_seconds
    if len(out["validation_accuracy"]):
        out["best_validation"], out["best_epoch"], out["test_at_best"] = scoring.best_validation(
            out["validation_accuracy"], out["test_accuracy"])
    return out


def predictions(net_layers, params, x):
    """Predicted labels [K, n] of K stacked networks on ``x`` (the compiled
    predictor is the architecture's, ``train.evaluation_for``: no recompiling)."""
    evaluation = train.evaluation_for(build(net_layers), costs.log_likelihood, over_k="vmap")
    z = evaluation.predict(params, jnp.asarray(x, jnp.float32))
    return jnp.argmax(z, axis=-1)


def ensemble(net_layers, mini_batch_size, training_data, epochs, eta, validation_data, test_data,
             lmbda=0.0, *, seeds=(0, 1, 2, 3, 4), shuffle=False, on_epoch=None, checkpoint=None):
    """The book's ensemble (conv.ensemble): K nets trained from different seeds
    (one compiled program), each net's final test predictions, and their
    plurality vote (``scoring.plurality_vote``: ties go to the label of the
    earliest net, as ``Counter.most_common``). Returns ``train_many``'s dict
    plus ``predictions`` [K, n], ``vote`` [n], ``vote_accuracy``, ``errors``
    (indices of the misclassified test images)."""
    out = train_many(net_layers, mini_batch_size, training_data, epochs, eta, validation_data,
                     test_data, lmbda, seeds=seeds, shuffle=shuffle, on_epoch=on_epoch,
                     checkpoint=checkpoint)
    test = network.device_arrays(test_data, n_inputs=net_layers[0].n_in_values, n_classes=net_layers[-1].n_out)
    preds = predictions(net_layers, out["params"], test.x)
    vote = np.asarray(scoring.plurality_vote(preds, net_layers[-1].n_out))
    out.update(predictions=np.asarray(preds), vote=vote,
               vote_accuracy=float(np.mean(vote == test.y)),
               errors=np.flatnonzero(vote != test.y))
    return out


# --- the book's Network -----------------------------------------------------------------

class Network:
    """A network of network3 layers trained with the log-likelihood cost.

    ``layers``: ConvPoolLayer / FullyConnectedLayer / SoftmaxLayer objects, the
    last a SoftmaxLayer. ``seed``: the seed of the initial weights; None (the
    default) draws a fresh one from the operating system's entropy, as every
    book network is a fresh random one; it is kept as ``self.seed``, so
    ``Network(layers, mini_batch_size, seed=net.seed)`` rebuilds the network.

    ``self.params`` is the core's params pytree (a list of {"w", "b"}, one per
    layer), where the book's ``params`` is the flat list of shared variables;
    each layer's ``params`` is ``[w, b]`` as in the book.
    """

    def __init__(self, layers, mini_batch_size, *, seed=None):
        self.layers = list(layers)
        self.mini_batch_size = _positive(mini_batch_size, "mini_batch_size")
        self.net = build(self.layers)
        self._init, self._apply = self.net.init, self.net.apply
        self.seed = network.fresh_seed() if seed is None else check_seed(seed)
        init_keys, _ = seed_keys([self.seed])
        self.params = train.init_params(self.net, init_keys[0], (self.layers[0].n_in_values,))
        self.history = None
        self.last_sgd_seed = None
        self._test_x = None
        self._sync()

    def spec(self):
        """The architecture as JSON-able data (what ``save`` records)."""
        return {"layers": [layer.spec() for layer in self.layers], "mini_batch_size": self.mini_batch_size}

    def _sync(self):
        for layer, p in zip(self.layers, self.params):
            layer.w, layer.b = np.asarray(p["w"]), np.asarray(p["b"])

    def SGD(self, training_data, epochs, mini_batch_size, eta, validation_data, test_data,
            lmbda=0.0, *, shuffle=False, seed=None):
        """Train with mini-batch SGD, printing the validation accuracy each
        epoch, and the test accuracy whenever the validation accuracy is the
        best to date (``>=``). Returns None, as the book's.

        After training, ``self.history`` holds, per epoch, the
        ``validation_accuracy`` and ``test_accuracy`` (fractions), the best
        validation accuracy, its iteration, the test accuracy there, and the
        ``seed`` of this call. ``seed`` fixes the dropout masks (and the
        order, with ``shuffle=True``; the book's network3 keeps dataset
        order); None draws a fresh one, also kept as ``self.last_sgd_seed``.
        The data (any layout ``data.as_arrays`` reads) must be as wide as the
        first layer's input and have labels below the softmax's ``n_out``.
        """
        if _positive(mini_batch_size, "mini_batch_size") != self.mini_batch_size:
            raise ValueError(f"the network was built for mini-batches of {self.mini_batch_size}, "
                             f"SGD was given {mini_batch_size}")
        training, validation, test = (self._data(d, name) for d, name in (
            (training_data, "training_data"), (validation_data, "validation_data"), (test_data, "test_data")))
        self._test_x = test.x
        self.last_sgd_seed = network.fresh_seed() if seed is None else check_seed(seed)
        n_val, n_test = len(validation.y), len(test.y)
        best = [-1.0]

        def report(e, record):
            val = record["validation_accuracy"][0] / n_val
            print(f"Epoch {e}: validation accuracy {val:.2%}", flush=True)
            if val >= best[0]:
                best[0] = val
                print("This is the best validation accuracy to date.")
                print(f"The corresponding test accuracy is {record['test_accuracy'][0] / n_test:.2%}",
                      flush=True)

        network.say_the_wait("network3.py")
        out = train_many(self.layers, mini_batch_size, training, epochs, eta, validation, test, lmbda,
                         shuffle=shuffle, params=train.stack([self.params]),
                         train_keys=seed_keys([self.last_sgd_seed])[1], on_epoch=report,
                         print_progress=True)
        self.params = train.unstack(out["params"])[0]
        self._sync()
        nb = out["num_training_batches"]
        self.history = {"seed": self.last_sgd_seed, "num_training_batches": nb,
                        "validation_accuracy": [float(v) for v in out["validation_accuracy"][:, 0]],
                        "test_accuracy": [float(v) for v in out["test_accuracy"][:, 0]]}
        print("Finished training network.")
        if "best_epoch" in out:
            self.history.update(best_validation_accuracy=float(out["best_validation"][0]),
                                best_iteration=nb * (int(out["best_epoch"][0]) + 1) - 1,
                                test_accuracy_at_best=float(out["test_at_best"][0]))
            print(f"Best validation accuracy of {self.history['best_validation_accuracy']:.2%} obtained at "
                  f"iteration {self.history['best_iteration']}")
            print(f"Corresponding test accuracy of {self.history['test_accuracy_at_best']:.2%}")

    def test_mb_predictions(self, i):
        """The predicted digits [mini_batch_size] of the ``i``-th mini-batch of
        the test data last given to ``SGD`` (the book's, which ``conv.py``'s
        ensemble calls for i in range(1000))."""
        if self._test_x is None:
            raise RuntimeError("test_mb_predictions needs test data: call net.SGD(training_data, "
                               "epochs, mini_batch_size, eta, validation_data, test_data) first, as in the book")
        mb = self.mini_batch_size
        num_test_batches = len(self._test_x) // mb
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"test_mb_predictions takes the index of a test mini-batch (an int), got {i!r}")
        if not 0 <= i < num_test_batches:
            raise IndexError(f"test mini-batch {i!r} out of range: the test data holds {num_test_batches} "
                             f"mini-batches of {mb}")
        return self.predict(self._test_x[int(i) * mb:(int(i) + 1) * mb])

    def predict(self, x):
        """Predicted labels [n] for images ``x`` [n, 784] (float, in [0, 1])."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.layers[0].n_in_values:
            raise ValueError(f"predict expects [n, {self.layers[0].n_in_values}] inputs, got {x.shape}")
        if len(x) == 0:
            return np.zeros(0, np.int32)
        return np.asarray(predictions(self.layers, train.stack([self.params]), x)[0])

    def accuracy(self, data):
        """The fraction of ``data`` classified correctly."""
        d = self._data(data, "data")
        return float(np.mean(self.predict(d.x) == d.y))

    def _data(self, data, what):
        """Any accepted data layout → ``data.Dataset``, checked against this
        network: as wide as the first layer's input, labels below the
        softmax layer's ``n_out``."""
        n_in, n_out = self.layers[0].n_in_values, self.layers[-1].n_out
        try:
            return network.device_arrays(data, n_inputs=n_in, n_classes=n_out)
        except ValueError as e:
            raise ValueError(f"{what} does not fit this network (its first layer takes {n_in} inputs, "
                             f"its softmax layer gives {n_out} classes): {e}") from None

    # --- save / load ----------------------------------------------------------------------
    def save(self, path):
        """Save the architecture and the trained params to ``path`` (.npz).

        Format: a tree file (``checkpoint.save_tree``, format ``FORMAT``): an
        uncompressed NumPy ``.npz`` with a JSON header holding ``spec`` (the
        layers' arguments and the mini-batch size, ``self.spec()``) and the
        params' leaves (layer i's ``w`` and ``b`` in the book's shapes), written
        to a temporary file in the same folder and renamed, so an interrupted
        save never leaves a half-written file over a good one (the folder must
        exist). Files of the older format "nndl-jax network3 v1" still load.

        Activations are saved by name: a layer with an activation of your own
        needs ``activations.register(name, fn)`` before saving (and before
        loading); otherwise saving is a ``ValueError`` and nothing is written.
        """
        save_tree(path, jax.device_get(self.params), {"spec": self.spec()}, fmt=FORMAT, parents=False)

    def load_params(self, path):
        """Load params saved by ``save`` into this network; a file for another
        architecture is an error."""
        spec, _ = _read(path)
        if spec["layers"] != self.spec()["layers"]:
            raise ValueError(f"{path}: saved for a different architecture:\n  file: {spec['layers']}\n"
                             f"  this network: {self.spec()['layers']}")
        self.params = jax.tree_util.tree_map(jnp.asarray, _read(path, self.params)[1])
        self._sync()


def _read(path, like=None):
    """``(spec, params)`` of a saved network: its spec, and with ``like`` (the
    skeleton of this architecture's params) its params, checked leaf by leaf
    and refused unless every weight and bias is finite (as network2's files)."""
    if _is_v1(path):
        spec, params = _read_v1(path, like)
    else:
        try:
            header, _ = read_tree(path, fmt=FORMAT)
            spec = _checked_spec(path, header["meta"].get("spec"))
            params = None if like is None else load_tree(path, jax.device_get(like), fmt=FORMAT)[0]
        except TreeFileError as e:
            reason = str(e).removeprefix(f"{path}: ")
            raise ValueError(f"{path}: not a readable network3 file: {reason}") from None
    if params is not None:
        _check_finite(path, params)
    return spec, params


def _is_v1(path):
    """Whether ``path`` is an .npz of the older format: a ``format`` entry and no tree header."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return "format" in f.files and HEADER not in f.files
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - not an .npz at all: the v2 reader says so
        return False


def _checked_spec(path, spec):
    if not isinstance(spec, dict) or "layers" not in spec or "mini_batch_size" not in spec:
        raise ValueError(f"{path}: not a readable network3 file (the spec lacks 'layers' or 'mini_batch_size')")
    return spec


def _check_finite(path, params):
    """Refuse params holding NaN or inf: a diverged net saved, or a damaged file."""
    for i, layer in enumerate(params):
        for name in ("w", "b"):
            if not np.all(np.isfinite(np.asarray(layer[name]))):
                raise ValueError(f"{path}: layer {i} {name} holds numbers that are not finite (NaN or inf); "
                                 "a network file holds finite weights and biases")


FORMAT_V1 = "nndl-jax network3 v1"


def _read_v1(path, like):
    """The older format: ``format``, ``spec`` (JSON) and ``layer{i}_w``/``layer{i}_b`` arrays."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        if str(arrays["format"]) != FORMAT_V1:
            raise ValueError(f"format {str(arrays['format'])!r}, expected {FORMAT!r}")
        spec = json.loads(str(arrays["spec"]))
        if not isinstance(spec, dict) or "layers" not in spec or "mini_batch_size" not in spec:
            raise ValueError("the spec lacks 'layers' or 'mini_batch_size'")
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means a bad file
        raise ValueError(f"{path}: not a readable network3 file ({type(e).__name__}: {e})") from e
    if like is None:
        return spec, None
    params = []
    for i, p in enumerate(like):
        layer = {}
        for name in ("w", "b"):
            key = f"layer{i}_{name}"
            if key not in arrays or arrays[key].shape != p[name].shape:
                got = arrays[key].shape if key in arrays else "nothing"
                raise ValueError(f"{path}: {key} holds {got}, expected shape {p[name].shape}")
            layer[name] = np.asarray(arrays[key], p[name].dtype)
        params.append(layer)
    return spec, params


def load(path, *, seed=None):
    """A Network rebuilt from a file written by ``Network.save`` (``seed`` is
    the new network's, see ``Network``; its weights are the file's)."""
    spec, _ = _read(path)
    try:
        net_layers = [layer_from_spec(s) for s in spec["layers"]]
        mini_batch_size = _positive(spec["mini_batch_size"], "mini_batch_size")
        build(net_layers)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad architecture in the file ({e})") from e
    net = Network(net_layers, mini_batch_size, seed=seed)
    net.load_params(path)
    return net
