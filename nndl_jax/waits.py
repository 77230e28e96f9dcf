"""What a program says before a wait, on a line of its own.

Loading MNIST takes seconds (a first download, minutes), and a first epoch
waits for compiling (seconds to a minute on a busy machine; a later run finds
the programs in the user cache, ``compile_cache``): said nothing, a new user
cannot tell such a wait from a hang. The book's façades (``mnist_loader``,
``network``, ``network2``, ``network3``) and the chapters
(``experiments.progress.say_start``) say it through ``say``, the one place
these lines are made, flushed at once, with the devices the run uses where it
names them: the chapters' on standard output, the façades' on standard error,
so that a façade's standard output stays the book's printout, line for line.

Standard library only (layer 1); the devices are described by
``devices.describe`` (JAX), imported only when a line names them.
"""

LOADING_MNIST = "loading MNIST"
COMPILING = "compiling before the first epoch (first run only: the user cache keeps compiled programs)"

_SAID = set()   # (who, wait) of the lines said once in this process


def say(who, wait=None, *, on_devices=None, once=False, stream=None):
    """Print ``"{who}: {on_devices} on {the devices}; {wait} ..."`` on
    ``stream`` (standard output if None), e.g. "network.py: training on 1 CPU device; compiling
    before the first epoch (...) ..." or "mnist_loader.py: loading MNIST ...".

    ``wait``: what the program is about to wait for (``LOADING_MNIST``,
    ``COMPILING``), None for nothing. ``on_devices``: the verb for the devices
    JAX computes on ("training", "computing"; ``devices.describe``), None to
    name none. ``once``: say it only the first time in this process (a
    façade's first call: later calls load from the cache and find the
    compiled programs). Returns whether the line was printed."""
    if once:
        if (who, wait) in _SAID:
            return False
        _SAID.add((who, wait))
    said = []
    if on_devices:
        from nndl_jax import devices
        said.append(f"{on_devices} on {devices.describe()}")
    if wait:
        said.append(f"{wait} ...")
    print(f"{who}: {'; '.join(said)}", file=stream, flush=True)
    return True
