"""The book's network.py (chapter 1), as a thin façade over the functional core.

    >>> from nndl_jax import mnist_loader, network
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network.Network([784, 30, 10])
    >>> net.SGD(training_data, 30, 10, 3.0, test_data=test_data)
    Epoch 0: ... / 10000
    ...

A sigmoid network, quadratic cost, weights and biases drawn from N(0, 1),
plain mini-batch SGD. The weights live in ``self.params`` (the core's
pytree: a list of {"w": [n_in, n_out], "b": [n_out]}); the book's attributes
``weights`` ([n_out, n_in] arrays) and ``biases`` ([n_out, 1]) are views
converted on access. Training runs as one compiled program per epoch
(``train.Trainer``). Beyond the book's arguments, ``SGD`` takes ``shuffle``
(False keeps dataset order, to replay a run step by step) and ``seed``.

Randomness, as the book's and where it differs on purpose: every new
``Network`` is a fresh random network (the book draws from NumPy's global
generator; here each network draws a fresh seed from the operating system's
entropy), and every ``SGD`` call shuffles with a fresh seed. Both seeds are
recorded, so any run can be replayed bit for bit: ``net.seed`` (pass it as
``Network(sizes, seed=net.seed)``) and ``net.last_sgd_seed`` (pass it as
``net.SGD(..., seed=net.last_sgd_seed)``).

The book's own random streams, to replay a seeded run of the book's code
exactly: ``Network(sizes, book_seed=S)`` draws the initial weights as the
book's code draws them after ``np.random.seed(S)`` (NumPy's legacy
``RandomState``: every layer's biases, then every layer's weights), and its
``SGD`` shuffles as the book's ``random.shuffle(training_data)`` does after
``random.seed(S)`` (Python 2.7's shuffle over ``random.Random(S)``, see
``book_random``), the stream continuing across epochs and across ``SGD``
calls. As the book's, the list ``training_data`` is shuffled in place: after
``SGD`` it is in the last epoch's order, and the next ``SGD`` on it starts
from there (data given as arrays or a ``zip`` starts from its own order each
call). ``book_seed`` may also be a ``book_random.BookStreams``, shared by
several networks, as a book script's networks share its two global
generators. ``seed=`` and ``SGD(seed=)`` (JAX's keys) do not apply then.
The streams alone give the book's draws and orders; the book's *numbers*
need its arithmetic too: make the network under ``jax.enable_x64(True)``
(params, and so all training, in float64; otherwise float32) and train on
the book's pixels, byte/256 (``mnist_loader.load_data_wrapper(book_pixels=True)``).
The mini-batch gradient is still summed in another order than the book's
per-example loop, so the weights agree with the book's to rounding (3e-15
after 200 steps on 1,000 images; ``tests/test_book_facades.py``).
"""
import contextlib
import operator
import secrets
import sys

import jax
import numpy as np

from nndl_jax import book_random, costs, layers, seeds, train, waits
from nndl_jax.activations import sigmoid
from nndl_jax.data import as_arrays


def book_to_params(weights, biases):
    """The book's ``weights`` [n_out, n_in] and ``biases`` [n_out, 1] → core params."""
    return [{"w": jax.numpy.asarray(np.asarray(w, np.float32).T),
             "b": jax.numpy.asarray(np.asarray(b, np.float32).reshape(-1))}
            for w, b in zip(weights, biases)]


def params_to_book(params):
    """Core params → the book's (weights [n_out, n_in], biases [n_out, 1])."""
    return ([np.asarray(p["w"]).T for p in params], [np.asarray(p["b"]).reshape(-1, 1) for p in params])


BOOK_DRAWS = {layers.large_weight_init: book_random.large_weights,
              layers.default_weight_init: book_random.default_weights}
"""The book's NumPy draw of each of its initializers (``book_seed`` networks)."""


def book_streams_of(book_seed):
    """``Network``'s ``book_seed``: None, a seed (fresh ``book_random.BookStreams``,
    as after ``random.seed(S); np.random.seed(S)``) or streams to share."""
    if book_seed is None or isinstance(book_seed, book_random.BookStreams):
        return book_seed
    return book_random.BookStreams(train.check_seed(book_seed))


def book_params(rng, sizes, init):
    """The book's NumPy draw of ``init``'s weights from ``rng`` (``BOOK_DRAWS``),
    as core params in JAX's default float dtype (float64 under ``jax.enable_x64``)."""
    if init not in BOOK_DRAWS:
        raise ValueError(f"a network with book_seed draws the book's initializers only "
                         f"(layers.large_weight_init, layers.default_weight_init), got {init!r}")
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    return [{k: jax.numpy.asarray(v, dtype) for k, v in layer.items()} for layer in BOOK_DRAWS[init](rng, sizes)]


def fresh_seed():
    """A new seed from the operating system's entropy, for a network or an SGD
    call that was given none. 32 bits: ``jax.random.key`` reads a larger int
    differently with and without 64-bit mode, so a larger seed would not replay
    the same run in both."""
    return secrets.randbits(32)


def sizes_of(sizes):
    """The book's ``sizes`` as a list of ints, refusing anything that is not a
    whole positive number (``[784, 2.7, 10]`` is an error, not [784, 2, 10])."""
    sizes = list(sizes)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, (int, np.integer, float, np.floating))
           or not np.isfinite(s) or s != int(s) or s < 1]
    if len(sizes) < 2 or bad:
        raise ValueError(f"sizes must list at least two positive whole numbers of neurons, e.g. "
                         f"[784, 30, 10]; got {sizes!r}")
    return [int(s) for s in sizes]


_CONVERTED_SLOTS = 4
_converted = []   # the most recent conversions: (data, its items, n_inputs, n_classes, dataset), newest last


def device_arrays(data, *, n_inputs, n_classes):
    """``data`` in any layout ``data.as_arrays`` accepts, as a ``Dataset`` of
    arrays on the device (x float32, y int32).

    The book calls ``SGD`` again and again on the same list of 50,000 pairs;
    converting it (0.1 s) and copying it to the device (0.1 s) each time would
    cost as much as the epoch. So the last few lists converted are kept with
    their converted arrays, and reused when the same list holds the same pair
    objects (checked item by item, by identity) and a sample of 32 images
    still equals the kept arrays. A list that was changed (items replaced,
    added, removed, shuffled) is converted again; an image edited in place
    outside the sample is not noticed (arrays hold no version number):
    pass a new list after such an edit.
    """
    if not isinstance(data, list) or not data:
        return _on_device(as_arrays(data, n_inputs=n_inputs, n_classes=n_classes))
    for i, (kept, items, n_in, n_cls, dataset) in enumerate(_converted):
        if (kept is data and n_in == n_inputs and n_cls == n_classes and len(items) == len(data)
                and all(map(operator.is_, items, data)) and _sample_unchanged(data, dataset)):
            _converted.append(_converted.pop(i))
            return dataset
    dataset = _on_device(as_arrays(data, n_inputs=n_inputs, n_classes=n_classes))
    _converted.append((data, tuple(data), n_inputs, n_classes, dataset))
    del _converted[:-_CONVERTED_SLOTS]
    return dataset


def _on_device(d):
    return type(d)(jax.numpy.asarray(d.x), jax.numpy.asarray(d.y))


def _sample_unchanged(data, dataset, count=32):
    rows = np.linspace(0, len(data) - 1, min(count, len(data))).astype(int)
    try:
        x = np.stack([np.asarray(data[i][0], np.float32).reshape(-1) for i in rows])
    except (TypeError, ValueError, IndexError):
        return False
    return np.array_equal(x, np.asarray(dataset.x[rows]))


def say_the_wait(program):
    """Before ``program``'s first training in this process, one line (``waits.say``,
    on standard error, so standard output stays the book's printout): the devices JAX trains on,
    and that the first epoch waits for compiling, which a later run finds in
    the user cache. A first epoch otherwise starts in silence, for seconds to
    a minute on a busy machine."""
    waits.say(program, waits.COMPILING, on_devices="training", once=True, stream=sys.stderr)


class Network:
    """A fully connected sigmoid network trained on the quadratic cost.

    ``sizes``: neurons per layer, e.g. [784, 30, 10]. ``seed``: the seed of
    the initial weights and biases; None (the default) draws a fresh one
    (``fresh_seed``), kept as ``self.seed`` so the network can be rebuilt.
    ``book_seed``: draw and shuffle with the book's streams instead (see the
    module docstring): a seed S, or a ``book_random.BookStreams`` to share;
    kept as ``self.book_streams`` (None otherwise; ``self.seed`` is None then).
    ``activation``, ``cost`` and ``init`` let network2 reuse this class.
    """

    cost = costs.quadratic
    activation = staticmethod(sigmoid)
    initializer = staticmethod(layers.large_weight_init)

    def __init__(self, sizes, *, seed=None, book_seed=None):
        self.sizes = sizes_of(sizes)
        self.num_layers = len(self.sizes)
        if seed is not None and book_seed is not None:
            raise ValueError("give seed (JAX's keys) or book_seed (the book's NumPy and Python "
                             "random streams), not both")
        self.book_streams = book_streams_of(book_seed)
        if self.book_streams is None:
            self.seed = fresh_seed() if seed is None else train.check_seed(seed)
            self._init_key = seeds.seed_keys([self.seed])[0][0]
        else:
            self.seed = self._init_key = None
        self.last_sgd_seed = None
        self.net = layers.mlp_net(self.sizes, self.activation, init=self.initializer)
        self._init, self._apply = self.net.init, self.net.apply
        self.params = self._drawn_params(self.initializer, self._init_key)

    # --- the book's attributes -------------------------------------------------
    @property
    def weights(self):
        return params_to_book(self.params)[0]

    @weights.setter
    def weights(self, weights):
        self.params = book_to_params(self._book_arrays(weights, "weights"), self.biases)

    @property
    def biases(self):
        return params_to_book(self.params)[1]

    @biases.setter
    def biases(self, biases):
        self.params = book_to_params(self.weights, self._book_arrays(biases, "biases"))

    def _book_arrays(self, arrays, name):
        """``arrays`` given for the book's ``weights`` ([n_out, n_in]) or
        ``biases`` ([n_out, 1], or [n_out]), checked against ``self.sizes``."""
        arrays = [np.asarray(a) for a in arrays]
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        wanted = [((n_out, n_in),) if name == "weights" else ((n_out, 1), (n_out,)) for n_in, n_out in pairs]
        if len(arrays) != len(pairs) or any(a.shape not in w for a, w in zip(arrays, wanted)):
            raise ValueError(f"{name} for sizes {self.sizes} must be {len(pairs)} arrays of shapes "
                             f"{[w[0] for w in wanted]}; got {[a.shape for a in arrays]}")
        return arrays

    # --- the book's methods ------------------------------------------------------
    def feedforward(self, a):
        """The network's output for ``a``: a column (784, 1) as in the book,
        giving a column (10, 1), or a batch [n, 784], giving [n, 10]."""
        a = np.asarray(a, self._dtype)
        column = a.ndim == 2 and a.shape == (self.sizes[0], 1)
        x = a.reshape(1, -1) if column or a.ndim == 1 else a
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"feedforward expects a ({self.sizes[0]}, 1) column or an "
                             f"[n, {self.sizes[0]}] batch, got shape {a.shape}")
        if len(x) == 0:  # an empty batch: nothing to compute (the layers' reshapes need an example)
            return np.zeros((0, self.sizes[-1]), self._dtype)
        out = np.asarray(self._core_cost.output(self._apply(self.params, x)))
        return out.T if column else (out[0] if a.ndim == 1 else out)

    def SGD(self, training_data, epochs, mini_batch_size, eta, test_data=None, *,
            shuffle=True, seed=None):
        """Train with mini-batch stochastic gradient descent, printing the
        book's ``Epoch j: correct / n`` when ``test_data`` is given.

        ``seed`` fixes the shuffling; None (the default) draws a fresh seed for
        this call, recorded as ``self.last_sgd_seed`` (pass it back to replay).
        A network made with ``book_seed`` shuffles the list in place with the
        book's stream instead (module docstring)."""
        training = self._data(training_data)
        test = self._data(test_data) if test_data is not None else None
        _check_hyper(epochs, mini_batch_size, eta)
        n_test = len(test.y) if test is not None else 0

        def report(e, record):
            if test is not None:
                print(f"Epoch {e}: {record['evaluation_accuracy'][0]} / {n_test}", flush=True)
            else:
                print(f"Epoch {e} complete", flush=True)

        key = self._sgd_key(seed)
        say_the_wait("network.py")
        with self._book_shuffles(training_data, len(training.y), shuffle) as orders:
            params, _, _ = train.fit(self._trainer(mini_batch_size, shuffle), train.stack([self.params]),
                                     training, epochs, key=key, eta=eta,
                                     evaluation={"evaluation": test} if test is not None else None,
                                     on_epoch=report, orders=orders)
        self.params = train.unstack(params)[0]

    def evaluate(self, test_data):
        """The number of inputs for which the network's most active output
        neuron is the correct label."""
        test = self._data(test_data)
        dtype = self._dtype
        evaluation = train.evaluation_for(self.net, self._core_cost)
        correct, _ = evaluation.evaluate(train.stack([self.params]), jax.numpy.asarray(test.x, dtype),
                                         test.y, np.zeros(1, dtype))
        return int(correct[0])

    def update_mini_batch(self, mini_batch, eta):
        """One gradient-descent step on one mini-batch, as the book's: the
        weights and biases move by −η times the gradient averaged over the
        mini-batch (``mini_batch`` in any accepted layout, e.g. the book's
        list of (x, y) pairs)."""
        batch = self._data(mini_batch)
        _check_hyper(1, 1, eta)
        trainer = self._trainer(len(batch.y), False)
        params, _, _ = train.fit(trainer, train.stack([self.params]), batch, 1,
                                 key=jax.random.key(0), eta=eta)  # no shuffle, no dropout: unused
        self.params = train.unstack(params)[0]

    def backprop(self, x, y):
        """(nabla_b, nabla_w): the gradient of the cost C_x of one example, in
        the book's layout, computed by ``jax.grad`` (``backprop.py`` holds the
        hand-written NumPy version that the tests compare it with)."""
        ex = self._data([(x, y)])
        grads = jax.grad(lambda p: train.example_costs(p, ex.x, ex.y, apply=self._apply,
                                                       cost=self._core_cost)[0])(self.params)
        nabla_w, nabla_b = params_to_book(grads)
        return nabla_b, nabla_w

    def cost_derivative(self, output_activations, y):
        """∂C_x/∂a for the quadratic cost: a − y."""
        return output_activations - y

    # --- plumbing --------------------------------------------------------------------
    def _data(self, data):
        """Any of the accepted data layouts → ``data.Dataset`` for this
        network's input and output widths (the book's loaders hand out
        ``zip`` objects in Python 3, read once here)."""
        if not isinstance(data, (tuple, list)) and not hasattr(data, "shape"):
            data = list(data)
        return device_arrays(data, n_inputs=self.sizes[0], n_classes=self.sizes[-1])

    @property
    def _dtype(self):
        """The dtype of the params (float32; float64 when made under ``jax.enable_x64``):
        data and coefficients are cast to it for evaluation."""
        return np.dtype(self.params[0]["w"].dtype)

    @property
    def _core_cost(self):
        """The core ``costs.Cost`` that training and feedforward use (network2
        keeps the book's cost class in ``self.cost`` and overrides this)."""
        return self.cost

    def _trainer(self, mini_batch_size, shuffle, **kw):
        return train.trainer_for(self.net, self._core_cost, int(mini_batch_size),
                                 shuffle=bool(shuffle), **kw)

    def _drawn_params(self, init, key):
        """Fresh params from ``init``: drawn from ``key`` by JAX, or, for a
        network with ``book_seed``, the book's NumPy draw from its stream."""
        if self.book_streams is None:
            return train.init_params(self.net, key, (self.sizes[0],))
        return book_params(self.book_streams.numpy, self.sizes, init)

    def _sgd_key(self, seed):
        """The key of one SGD call: from ``seed``, or from a fresh seed; either
        way recorded as ``self.last_sgd_seed``. A network with ``book_seed``
        shuffles with the book's stream (``_book_shuffles``): no seed, and a
        key that nothing draws from (these networks have no dropout)."""
        if self.book_streams is not None:
            if seed is not None:
                raise ValueError("this network shuffles with the book's stream (it was made with "
                                 "book_seed); SGD's seed= is for JAX's keys: leave it out")
            self.last_sgd_seed = None
            return jax.random.key(0)
        self.last_sgd_seed = fresh_seed() if seed is None else train.check_seed(seed)
        return seeds.key(self.last_sgd_seed)

    @contextlib.contextmanager
    def _book_shuffles(self, training_data, n, shuffle):
        """``train.fit``'s ``orders`` for one SGD call: None (JAX's keys shuffle)
        unless the network has ``book_seed``. Then epoch e's order is the
        book's ``random.shuffle(training_data)`` of the order epoch e − 1 left
        (``book_random.epoch_order_stream`` over the shared Python stream),
        and on leaving, a list ``training_data`` is put in the last epoch's
        order in place, as the book's SGD leaves it."""
        if self.book_streams is None or not shuffle:
            yield None
            return
        in_place = isinstance(training_data, list) and len(training_data) == n
        items, order = (list(training_data) if in_place else None), list(range(n))
        try:
            yield book_random.epoch_order_stream(self.book_streams.python, order)
        finally:
            if in_place:
                training_data[:] = [items[i] for i in order]


def _check_hyper(epochs, mini_batch_size, eta):
    """The book's SGD arguments, checked before any data is converted (``train``'s checks)."""
    train.check_hyperparameters(eta, 0.0, epochs)
    train.positive_int(mini_batch_size, "mini_batch_size")
