"""network3's bookkeeping over K nets: the best validation epoch and the plurality vote.

What the book's network3 reports after training (the best validation
accuracy, its epoch and the test accuracy there, with the book's ``>=`` tie
rule) and what its ensemble (``conv.py``) computes from the nets'
predictions (a plurality vote with ``Counter.most_common``'s tie rule), for
K nets at once. Nothing here trains: these read a finished run's history
and predictions.
"""
import jax
import jax.numpy as jnp
import numpy as np


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
