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
  softmax ``w`` as ``[n_in, n_out]``.

Beyond the book: ``save``/``load`` (a documented ``.npz`` format),
``train_many`` (K nets, one per seed, as one vmapped program) and
``ensemble`` (K nets and their plurality vote), which shard the K axis over
all local devices when there are several.
"""
import functools
import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nndl_jax import activations, costs, layers, train
from nndl_jax.activations import linear, relu, sigmoid, tanh  # noqa: F401 (the book's names)
from nndl_jax.data import as_arrays

ReLU = relu

CONV_LAYOUT = "auto"
"""The internal layout of conv-pool layers: "auto" (NHWC on the CPU, NCHW elsewhere), "NCHW"
or "NHWC" (see ``layers.conv_layout`` and ``benchmarks/bench_conv.py``)."""

FORMAT = "nndl-jax network3 v1"


# --- the book's layers ----------------------------------------------------------

class FullyConnectedLayer:
    """A fully connected layer: a = act((1−p)·x·w + b) at evaluation, dropout
    on its input during training. w ~ N(0, 1/n_out), b ~ N(0, 1)."""

    def __init__(self, n_in, n_out, activation_fn=sigmoid, p_dropout=0.0):
        self.n_in, self.n_out = _positive(n_in, "n_in"), _positive(n_out, "n_out")
        self.activation_fn = activation_fn
        self.p_dropout = float(p_dropout)
        activations.name_of(activation_fn)  # a clear error for an unknown activation
        self.w = self.b = None

    def spec(self):
        return {"type": "FullyConnectedLayer", "n_in": self.n_in, "n_out": self.n_out,
                "activation_fn": activations.name_of(self.activation_fn), "p_dropout": self.p_dropout}

    def layer(self):
        return layers.fully_connected(self.n_out, self.activation_fn, p_dropout=self.p_dropout)

    n_in_values = property(lambda self: self.n_in)
    n_out_values = property(lambda self: self.n_out)


class ConvPoolLayer:
    """A convolutional layer followed by max-pooling: a = act(maxpool(x ⋆ w) + b).
    ``filter_shape = (maps, input maps, fh, fw)``, ``image_shape = (mini_batch_size,
    input maps, h, w)``. w ~ N(0, 1/n_out) with n_out = maps·fh·fw/prod(poolsize)."""

    def __init__(self, filter_shape, image_shape, poolsize=(2, 2), activation_fn=sigmoid):
        self.filter_shape = tuple(int(s) for s in filter_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.poolsize = tuple(int(s) for s in poolsize)
        self.activation_fn = activation_fn
        activations.name_of(activation_fn)
        self._layer = layers.conv_pool(self.filter_shape, self.image_shape, self.poolsize,
                                       activation_fn, layout=CONV_LAYOUT)  # validates the shapes
        self.w = self.b = None

    def spec(self):
        return {"type": "ConvPoolLayer", "filter_shape": list(self.filter_shape),
                "image_shape": list(self.image_shape), "poolsize": list(self.poolsize),
                "activation_fn": activations.name_of(self.activation_fn)}

    def layer(self):
        return self._layer

    n_in_values = property(lambda self: int(np.prod(self.image_shape[1:])))

    @property
    def n_out_values(self):
        k, _, fh, fw = self.filter_shape
        _, h, w = self.image_shape[1:]
        return k * ((h - fh + 1) // self.poolsize[0]) * ((w - fw + 1) // self.poolsize[1])


class SoftmaxLayer:
    """The output layer: softmax of (1−p)·x·w + b at evaluation, dropout on its
    input during training; w and b start at zero; trained with the
    log-likelihood cost."""

    def __init__(self, n_in, n_out, p_dropout=0.0):
        self.n_in, self.n_out = _positive(n_in, "n_in"), _positive(n_out, "n_out")
        self.p_dropout = float(p_dropout)
        self.w = self.b = None

    def spec(self):
        return {"type": "SoftmaxLayer", "n_in": self.n_in, "n_out": self.n_out,
                "p_dropout": self.p_dropout}

    def layer(self):
        return layers.softmax(self.n_out, p_dropout=self.p_dropout)

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
    if int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def build(net_layers):
    """The (init, apply) pair of a list of network3 layers, checking that each
    layer's input size is the previous layer's output size."""
    net_layers = list(net_layers)
    if not net_layers:
        raise ValueError("a network needs at least one layer")
    for i, (prev, nxt) in enumerate(zip(net_layers, net_layers[1:])):
        if prev.n_out_values != nxt.n_in_values:
            raise ValueError(f"layer {i} gives {prev.n_out_values} values but layer {i + 1} "
                             f"expects {nxt.n_in_values}")
    if not isinstance(net_layers[-1], SoftmaxLayer):
        raise ValueError("the last layer must be a SoftmaxLayer (network3 trains with the log-likelihood cost)")
    return layers.serial(*(layer.layer() for layer in net_layers))


# --- data -----------------------------------------------------------------------------

def load_data_shared(filename=None):
    """The book's three sets, ``[training, validation, test]``, each an ``(x, y)``
    Dataset of arrays (there is no Theano shared variable here: ``train.fit``
    moves the data to the device once). ``filename``: the book's
    ``mnist.pkl.gz``, or a folder of MNIST IDX files; None: ``$NNDL_JAX_DATA``
    or the user cache (see ``data.load_mnist``)."""
    from nndl_jax import data
    if filename is not None and Path(filename).is_file():
        splits = data.read_pickle(filename)
    else:
        splits = data.load_mnist(filename)
    return [splits.training, splits.validation, splits.test]


# --- K networks at once ---------------------------------------------------------------

def print_iteration(iteration):
    """The book's progress line, every 1,000 mini-batches (``Trainer.on_iteration``)."""
    print(f"Training mini-batch number {int(iteration)}", flush=True)


def _trainer(apply, mini_batch_size, shuffle, print_progress=False):
    return train.trainer_for(apply, costs.log_likelihood, int(mini_batch_size), penalty="l2",
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
    ``>=`` rule, ``diverged_at`` [K], ``num_training_batches``, ``seeds``.
    """
    init, apply = _apply_cache(net_layers)
    mb = _positive(mini_batch_size, "mini_batch_size")
    training = as_arrays(training_data)
    validation, test = as_arrays(validation_data), as_arrays(test_data)
    num_batches = len(training.y) // mb
    if num_batches < 1:
        raise ValueError(f"{len(training.y)} training examples make no mini-batch of {mb}")
    training = type(training)(training.x[:num_batches * mb], training.y[:num_batches * mb])
    from_seeds = params is None
    if from_seeds:
        params, train_keys = train.from_seeds(init, (training.x.shape[1],), seeds)
    run = train.fit(_trainer(apply, mb, shuffle, print_progress), params, training, epochs,
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
           "devices": len(jax.local_devices())}
    if len(out["validation_accuracy"]):
        out["best_validation"], out["best_epoch"], out["test_at_best"] = train.best_validation(
            out["validation_accuracy"], out["test_accuracy"])
    return out


_APPLY = {}


def _apply_cache(net_layers):
    """(init, apply) for an architecture, built once per spec so that its
    compiled trainer is reused."""
    key = json.dumps([layer.spec() for layer in net_layers], sort_keys=True)
    if key not in _APPLY:
        _APPLY[key] = build(net_layers)
    return _APPLY[key]


_PREDICT = {}


def predictions(net_layers, params, x):
    """Predicted labels [K, n] of K stacked networks on ``x``. The compiled
    predictor is kept per architecture, so repeated calls do not recompile."""
    _, apply = _apply_cache(net_layers)
    if apply not in _PREDICT:
        _PREDICT[apply] = jax.jit(jax.vmap(functools.partial(train.predict, apply=apply),
                                           in_axes=(0, None)))
    z = _PREDICT[apply](params, jnp.asarray(x, jnp.float32))
    return jnp.argmax(z, axis=-1)


def ensemble(net_layers, mini_batch_size, training_data, epochs, eta, validation_data, test_data,
             lmbda=0.0, *, seeds=(0, 1, 2, 3, 4), shuffle=False, on_epoch=None, checkpoint=None):
    """The book's ensemble (conv.ensemble): K nets trained from different seeds
    (one vmapped program), each net's final test predictions, and their
    plurality vote (``train.plurality_vote``: ties go to the label of the
    earliest net, as ``Counter.most_common``). Returns ``train_many``'s dict
    plus ``predictions`` [K, n], ``vote`` [n], ``vote_accuracy``, ``errors``
    (indices of the misclassified test images)."""
    out = train_many(net_layers, mini_batch_size, training_data, epochs, eta, validation_data,
                     test_data, lmbda, seeds=seeds, shuffle=shuffle, on_epoch=on_epoch,
                     checkpoint=checkpoint)
    test = as_arrays(test_data)
    preds = predictions(net_layers, out["params"], test.x)
    vote = np.asarray(train.plurality_vote(preds, net_layers[-1].n_out))
    out.update(predictions=np.asarray(preds), vote=vote,
               vote_accuracy=float(np.mean(vote == test.y)),
               errors=np.flatnonzero(vote != test.y))
    return out


# --- the book's Network -----------------------------------------------------------------

class Network:
    """A network of network3 layers trained with the log-likelihood cost.

    ``layers``: ConvPoolLayer / FullyConnectedLayer / SoftmaxLayer objects, the
    last a SoftmaxLayer. ``seed``: the seed of the initial weights and of the
    training keys (dropout), so a run is replayable.
    """

    def __init__(self, layers, mini_batch_size, *, seed=0):
        self.layers = list(layers)
        self.mini_batch_size = _positive(mini_batch_size, "mini_batch_size")
        self._init, self._apply = _apply_cache(self.layers)
        init_keys, self._train_keys = train.seed_keys([seed])
        self.seed = int(seed)
        self.params = self._init(init_keys[0], (self.layers[0].n_in_values,))[1]
        self._sgd_calls = 0
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
        best to date (``>=``). Returns ``train_many``'s dict for this one net."""
        if int(mini_batch_size) != self.mini_batch_size:
            raise ValueError(f"the network was built for mini-batches of {self.mini_batch_size}, "
                             f"SGD was given {mini_batch_size}")
        n_val, n_test = len(as_arrays(validation_data).y), len(as_arrays(test_data).y)
        best = [-1.0]

        def report(e, record):
            val = record["validation_accuracy"][0] / n_val
            print(f"Epoch {e}: validation accuracy {val:.2%}", flush=True)
            if val >= best[0]:
                best[0] = val
                print("This is the best validation accuracy to date.")
                print(f"The corresponding test accuracy is {record['test_accuracy'][0] / n_test:.2%}",
                      flush=True)

        if seed is not None:
            keys = train.seed_keys([seed])[1]
        else:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(self._train_keys, self._sgd_calls)
            self._sgd_calls += 1
        out = train_many(self.layers, mini_batch_size, training_data, epochs, eta, validation_data,
                         test_data, lmbda, shuffle=shuffle, params=train.stack([self.params]),
                         train_keys=keys, on_epoch=report, print_progress=True)
        self.params = train.unstack(out["params"])[0]
        self._sync()
        print("Finished training network.")
        if "best_epoch" in out:
            nb = out["num_training_batches"]
            print(f"Best validation accuracy of {out['best_validation'][0]:.2%} obtained at "
                  f"iteration {nb * (int(out['best_epoch'][0]) + 1) - 1}")
            print(f"Corresponding test accuracy of {out['test_at_best'][0]:.2%}")
        return out

    def predict(self, x):
        """Predicted labels [n] for images ``x`` [n, 784] (float, in [0, 1])."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.layers[0].n_in_values:
            raise ValueError(f"predict expects [n, {self.layers[0].n_in_values}] inputs, got {x.shape}")
        return np.asarray(predictions(self.layers, train.stack([self.params]), x)[0])

    def accuracy(self, data):
        """The fraction of ``data`` classified correctly."""
        d = as_arrays(data)
        return float(np.mean(self.predict(d.x) == d.y))

    # --- save / load ----------------------------------------------------------------------
    def save(self, path):
        """Save the architecture and the trained params to ``path`` (.npz).

        Format (``FORMAT``): an uncompressed NumPy ``.npz`` holding ``format``
        (the string "nndl-jax network3 v1"), ``spec`` (JSON of ``self.spec()``:
        the layers' arguments and the mini-batch size) and, for layer i,
        ``layer{i}_w``, ``layer{i}_b`` in the book's shapes. Written to a
        temporary file in the same folder and renamed, so an interrupted save
        never leaves a half-written file over a good one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"format": np.array(FORMAT), "spec": np.array(json.dumps(self.spec()))}
        for i, p in enumerate(self.params):
            arrays[f"layer{i}_w"], arrays[f"layer{i}_b"] = np.asarray(p["w"]), np.asarray(p["b"])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_params(self, path):
        """Load params saved by ``save`` into this network; a file for another
        architecture is an error."""
        spec, arrays = _read(path)
        if spec["layers"] != self.spec()["layers"]:
            raise ValueError(f"{path}: saved for a different architecture:\n  file: {spec['layers']}\n"
                             f"  this network: {self.spec()['layers']}")
        self.params = _params_from(arrays, self.params, path)
        self._sync()


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        if str(arrays["format"]) != FORMAT:
            raise ValueError(f"format {str(arrays['format'])!r}, expected {FORMAT!r}")
        spec = json.loads(str(arrays["spec"]))
        if not isinstance(spec, dict) or "layers" not in spec or "mini_batch_size" not in spec:
            raise ValueError("the spec lacks 'layers' or 'mini_batch_size'")
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means a bad file
        raise ValueError(f"{path}: not a readable network3 file ({type(e).__name__}: {e})") from e
    return spec, arrays


def _params_from(arrays, like, path):
    params = []
    for i, p in enumerate(like):
        layer = {}
        for name in ("w", "b"):
            key = f"layer{i}_{name}"
            if key not in arrays or arrays[key].shape != p[name].shape:
                got = arrays[key].shape if key in arrays else "nothing"
                raise ValueError(f"{path}: {key} holds {got}, expected shape {p[name].shape}")
            layer[name] = jnp.asarray(arrays[key], p[name].dtype)
        params.append(layer)
    return params


def load(path, *, seed=0):
    """A Network rebuilt from a file written by ``Network.save``."""
    spec, _ = _read(path)
    try:
        net_layers = [layer_from_spec(s) for s in spec["layers"]]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad architecture in the file ({e})") from e
    net = Network(net_layers, spec["mini_batch_size"], seed=seed)
    net.load_params(path)
    return net
