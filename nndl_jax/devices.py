"""K networks spread over several devices, each device running the one-net program.

On a CPU, JAX sees one device however many cores there are, and one small conv
net's step keeps barely more than one core busy. ``use_cpu_devices(n)`` asks
for ``n`` host devices (call it right after ``import jax``, before any array is
made); ``over_devices(fn, ...)`` then runs ``fn`` (written for ONE network) on
each device's share of K stacked networks, one after another within a device
(``lax.map``) and the devices side by side (``jax.shard_map``).

Why not ``vmap`` of the K axis with a sharded input (what ``train.shard_stacked``
does): the compiler partitions the vmapped program, but a vmapped convolution
is a grouped convolution (``feature_group_count = K``) before partitioning and
stays one on each device, the form XLA:CPU runs slowly. ``shard_map`` hands
each device the one-net program, ungrouped (``benchmarks/bench_conv.py``
measures both).
"""
import os

import jax
import numpy as np
from jax.sharding import PartitionSpec


def cpu_count():
    """The cores this process may run on (``sched_getaffinity``, so ``taskset`` counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_devices(n=None):
    """Make JAX's CPU backend expose ``n`` devices (default: one per core).

    Must run before JAX executes anything (JAX raises a RuntimeError saying so
    otherwise). Devices share the process's cores; they only let one program
    run K/n networks on each of them side by side.
    """
    n = cpu_count() if n is None else int(n)
    if n < 1:
        raise ValueError(f"need at least one CPU device, got {n}")
    jax.config.update("jax_num_cpu_devices", n)
    return n


def use_cpu_devices_unless_started(n=None):
    """``use_cpu_devices(n)`` when JAX has not run anything yet; otherwise the
    device count stays as it is. Returns the number of local devices in use.
    For command-line entry points (``python -m experiments.chap6``), which may
    also be called from a process where JAX already runs (tests, ``reproduce``)."""
    try:
        use_cpu_devices(n)
    except RuntimeError:  # JAX has started: its device count is fixed
        pass
    return len(jax.local_devices())


def net_count(args, stacked):
    """K: the leading size of the arguments stacked on the K axis (``stacked[i]`` True)."""
    return jax.tree_util.tree_leaves([a for a, s in zip(args, stacked) if s])[0].shape[0]


def map_over_nets(fn, stacked, args):
    """``fn`` (for ONE network) applied to each of the K networks stacked in
    ``args`` in turn (``lax.map``), the shared arguments passed to every call;
    the outputs are stacked on K. One network calls ``fn`` directly."""
    net_args = tuple(a for a, s in zip(args, stacked) if s)

    def one(one_net):
        it = iter(one_net)
        return fn(*(next(it) if s else a for a, s in zip(args, stacked)))

    if net_count(args, stacked) == 1:
        out = one(jax.tree_util.tree_map(lambda a: a[0], net_args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.lax.map(one, net_args)


def over_devices(fn, stacked, devices=None, within="map"):
    """``fn`` for one network, lifted to K networks stacked on a leading axis
    and spread over ``devices`` (default: all local devices).

    ``stacked`` is a tuple of booleans, one per positional argument of ``fn``:
    True for arguments stacked on the K axis (params, optimizer state, keys),
    False for arguments every network shares (the data). Every output is
    stacked on the K axis. K must be a multiple of the number of devices (see
    ``train.padded_count``). Within a device the nets run one after another
    (``within="map"``: ``lax.map``, the fast way for conv nets on the CPU) or
    batched (``within="vmap"``, the fast way for fully connected nets); a
    device holding one net calls ``fn`` directly.
    """
    if within not in ("map", "vmap"):
        raise ValueError(f"within must be 'map' or 'vmap', got {within!r}")
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("k",))
    k_spec, shared = PartitionSpec("k"), PartitionSpec()
    in_specs = tuple(k_spec if s else shared for s in stacked)

    def per_device(*args):
        if within == "vmap" and net_count(args, stacked) > 1:
            return jax.vmap(fn, in_axes=tuple(0 if s else None for s in stacked))(*args)
        return map_over_nets(fn, stacked, args)

    def run(*args):
        if len(args) != len(stacked):
            raise TypeError(f"expected {len(stacked)} arguments (one per entry of stacked), got {len(args)}")
        k = net_count(args, stacked)
        if k % len(devices):
            raise ValueError(f"K = {k} networks do not split evenly over {len(devices)} devices; "
                             f"pad K to a multiple (train.padded_count)")
        return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=k_spec,
                             check_vma=False)(*args)

    return run
