"""Devices and the K axis: where K stacked networks run, and how.

The one home of device code: the CPU device count (``use_cpu_devices``), the
compiler options the trainer's programs get on the CPU
(``cpu_compiler_options``), how a program runs K nets (``k_axis_mode``,
``k_nets``: vmapped, one after another, or over devices) and where their
stacked params live (``Layout``, ``layout_for``: the K axis padded and
sharded over one mesh, ``mesh``).

A run's numbers depend on its seeds and settings only, never on the device or
process count (issue 31): XLA compiles a program K nets wide and one K/2 wide
to different float32 code, and SGD amplifies the last bits. So each mode runs
the same per-net arithmetic on every layout:

- "vmap" (fully connected nets everywhere, conv nets on an accelerator): one
  program K nets wide, on one device (over several processes, every device
  runs all K: ``Layout.copies``). It gives the numbers the book's rows were
  recorded with on one CPU device; extra CPU devices do not speed it up.
- "map"/"devices" (conv nets on the CPU): each net by the one-net program,
  one after another within a device (``lax.map``) and the devices side by
  side (``jax.shard_map``). A vmapped convolution is a grouped convolution
  (``feature_group_count = K``), the form XLA:CPU runs slowly; ``shard_map``
  hands each device the one-net program, ungrouped (``benchmarks/bench_conv.py``).

On a CPU, JAX sees one device however many cores there are, and one small conv
net's step keeps barely more than one core busy. ``use_cpu_devices(n)`` asks
for ``n`` host devices (call it right after ``import jax``, before any array is
made).
"""
import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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


# --- several processes on one accelerator ----------------------------------------

PREALLOCATE_ENV, MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION"


def share_device(processes, environ=None):
    """Let ``processes`` processes (parts of a plan, ``--part``) run on one
    accelerator at once: JAX's memory preallocation off
    (``XLA_PYTHON_CLIENT_PREALLOCATE=false``: a process takes memory as it
    needs it) and each process capped at 0.9/``processes`` of the device's
    memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``), so no process can starve the
    others. Values the user set in the environment are kept. Returns the
    settings in force.

    Why: one of the book's nets leaves most of an accelerator idle, and by
    default the first JAX process takes 75 % of its memory, so a second
    process on the same device fails to start. JAX reads these variables when
    its backend starts: call this first (it raises RuntimeError once JAX has
    started; the CPU backend ignores them)."""
    processes = int(processes)
    if processes < 1:
        raise ValueError(f"need at least one process per device, got {processes}")
    if _backend_started():
        raise RuntimeError("share_device must run before JAX starts its backend (it reads the memory "
                           "settings once, at start)")
    environ = os.environ if environ is None else environ
    environ.setdefault(PREALLOCATE_ENV, "false")
    environ.setdefault(MEM_FRACTION_ENV, f"{0.9 / processes:.3f}")
    return {name: environ[name] for name in (PREALLOCATE_ENV, MEM_FRACTION_ENV)}


def _backend_started():
    """Whether JAX has started a backend in this process (then its memory settings are fixed)."""
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()


# --- compiler options -------------------------------------------------------------

# XLA:CPU's library fusions without YNNPACK's convolutions (its default list
# also holds LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION); dots and reductions
# keep going to YNNPACK, which is faster than XLA's own for them.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def cpu_compiler_options(backend=None):
    """The ``compiler_options`` the trainer's programs are compiled with:
    ``CPU_COMPILER_OPTIONS`` on the CPU, None (XLA's defaults) elsewhere or
    where this XLA does not know the option (it is an experimental one).
    ``backend``: the backend to choose for (default: JAX's default backend;
    tests pass "gpu" to exercise the accelerator's branch on the CPU).

    Why: jaxlib 0.10's XLA:CPU hands each convolution to YNNPACK, which runs
    the book's small convolutions (10 images, 5×5 filters, 20–40 maps) at
    about half the speed of XLA's own (Eigen) kernel, the weight-gradient one
    at a quarter (1.15 ms of a 4 ms step). With these options a scanned step
    of the two-conv net takes 0.66× the time on the 2-core CPU (benchmarks/README.md;
    ``bench_conv.py --variants`` times both). Fully connected nets compile
    the same either way. Passed per ``jax.jit``, so nothing changes for other
    JAX code in the process (unlike ``XLA_FLAGS``)."""
    if (backend or jax.default_backend()) != "cpu":
        return None
    return _cpu_options_if_known()


@functools.cache
def _cpu_options_if_known():
    try:
        jax.jit(jnp.negative, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.zeros(())).compile()
    except jax.errors.JaxRuntimeError:  # an XLA without this option, or without these values
        return None
    return dict(CPU_COMPILER_OPTIONS)


# --- how one program runs K nets ----------------------------------------------------

K_MODES = ("vmap", "map", "devices")


def k_axis_mode(mode="auto", backend=None, n_devices=None):
    """"vmap", "map" or "devices" for ``Trainer.over_k``. "auto" is "map" on
    a single CPU device, "devices" on several CPU devices
    (``use_cpu_devices``) and "vmap" on an accelerator (``backend`` and
    ``n_devices`` default to JAX's; tests force the other backend's choice).

    It is meant for conv nets (``Trainer``'s default, "vmap", serves fully
    connected ones). On the CPU a vmapped convolution over K stacked filter
    banks becomes a grouped convolution that XLA runs slowly (the two-conv
    net, K = 3: vmapped 17.9 ms per step, mapped 10.2 ms), and one net's step
    keeps barely more than one core busy, so devices running one-net programs
    side by side give nearly twice the throughput (benchmarks/README.md). An
    accelerator is launch-bound for these small nets: there the K nets are
    one batched program. Every mode gives numbers that depend on the seeds
    and settings only, never on the device or process count (``k_nets``)."""
    if mode == "auto":
        if (backend or jax.default_backend()) != "cpu":
            return "vmap"
        n = len(jax.devices()) if n_devices is None else n_devices
        return "map" if n == 1 else "devices"
    if mode not in K_MODES:
        raise ValueError(f"over_k must be 'auto' or one of {K_MODES}, got {mode!r}")
    return mode


def k_nets(fn, in_axes, mode):
    """``fn``, written for ONE network, lifted to K networks stacked on a leading axis.

    ``in_axes`` is ``jax.vmap``'s, one entry per positional argument of
    ``fn``: 0 for the arguments stacked on the K axis (params, optimizer
    state, keys), None for those every net shares (the data). Every output is
    stacked on K. ``mode`` (see ``k_axis_mode``) and why the numbers are the
    same on every layout:

    - "vmap": ``jax.vmap(fn)``, one program K nets wide. Its layout
      (``layout_for``) keeps it K wide whatever the devices: one device in one
      process; over several processes every device holds all K nets (its own
      copies), never a share, since XLA compiles a K-wide and a K/2-wide
      program to different float code (issue 31).
    - "map" and "devices": each net by the one-net program ``fn``, the nets
      of a device one after another (``lax.map``), the devices of
      ``devices_for(K)`` side by side (``over_devices``; K must be a multiple
      of their count, which ``Layout`` ensures by padding). One net, two or
      four on a device run the same per-net program.
    """
    if mode not in K_MODES:
        raise ValueError(f"mode must be one of {K_MODES}, got {mode!r}")
    in_axes = checked_in_axes(in_axes)
    if mode == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def run(*args):
        used = devices_for(net_count(args, in_axes))
        if len(used) > 1:
            return over_devices(fn, in_axes, used, within="map")(*args)
        return map_over_nets(fn, in_axes, args)

    return run


def checked_in_axes(in_axes):
    """``in_axes`` as a tuple, refusing entries other than 0 (stacked on K) and None (shared)."""
    in_axes = tuple(in_axes)
    if any(a not in (0, None) or isinstance(a, bool) for a in in_axes):
        raise ValueError(f"in_axes entries must be 0 (stacked on the K axis) or None (shared), got {in_axes}")
    return in_axes


def net_count(args, in_axes):
    """K: the leading size of the arguments stacked on the K axis (``in_axes[i] == 0``)."""
    return jax.tree_util.tree_leaves([a for a, ax in zip(args, in_axes) if ax == 0])[0].shape[0]


def map_over_nets(fn, in_axes, args):
    """``fn`` (for ONE network) applied to each of the K networks stacked in
    ``args`` in turn (``lax.map``), the shared arguments passed to every call;
    the outputs are stacked on K. One network calls ``fn`` directly (the same
    per-net program)."""
    net_args = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

    def one(one_net):
        it = iter(one_net)
        return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

    if net_count(args, in_axes) == 1:
        out = one(jax.tree_util.tree_map(lambda a: a[0], net_args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    return jax.lax.map(one, net_args)


def over_devices(fn, in_axes, devices=None, within="map"):
    """``fn`` for one network, lifted to K networks stacked on a leading axis
    and spread over ``devices`` (default: all devices).

    ``in_axes``: as ``k_nets``'s (0: stacked on K, None: shared). Every output
    is stacked on the K axis. K must be a multiple of the number of devices
    (see ``Layout``). Within a device the nets run one after another
    (``within="map"``: ``lax.map``, the per-net program ``k_nets`` uses) or
    batched (``within="vmap"``: a program as wide as the device's share,
    so its numbers depend on the device count; benchmarks only).
    """
    if within not in ("map", "vmap"):
        raise ValueError(f"within must be 'map' or 'vmap', got {within!r}")
    in_axes = checked_in_axes(in_axes)
    the_mesh = mesh(devices)
    k_spec, shared = PartitionSpec("k"), PartitionSpec()
    in_specs = tuple(k_spec if ax == 0 else shared for ax in in_axes)

    def per_device(*args):
        if within == "vmap" and net_count(args, in_axes) > 1:
            return jax.vmap(fn, in_axes=in_axes)(*args)
        return map_over_nets(fn, in_axes, args)

    def run(*args):
        if len(args) != len(in_axes):
            raise TypeError(f"expected {len(in_axes)} arguments (one per entry of in_axes), got {len(args)}")
        k = net_count(args, in_axes)
        if k % the_mesh.size:
            raise ValueError(f"K = {k} networks do not split evenly over {the_mesh.size} devices; "
                             f"pad K to a multiple (devices.Layout)")
        return jax.shard_map(per_device, mesh=the_mesh, in_specs=in_specs, out_specs=k_spec,
                             check_vma=False)(*args)

    return run


# --- where K stacked nets live ------------------------------------------------------

def mesh(devices=None):
    """The one mesh of the project: a 1-D mesh named "k" over ``devices``
    (default: every device, ``jax.devices()``), along which the K axis of
    stacked nets is sharded."""
    return _mesh(tuple(jax.devices() if devices is None else devices))


@functools.lru_cache(maxsize=8)
def _mesh(devices):
    return jax.sharding.Mesh(np.array(devices), ("k",))


def devices_for(k, devices=None, mode="map"):
    """The devices K stacked nets are spread over: the first min(K, D) of
    ``devices`` (default: the D devices), so no device trains only padding
    and one net stays on one device; in ``mode`` "vmap" (one K-wide program,
    see ``k_nets``) the first device alone. A run over several processes uses
    every device (each process runs its share of every program)."""
    devices = list(jax.devices() if devices is None else devices)
    if jax.process_count() > 1:
        return devices
    return devices[:1 if mode == "vmap" else max(1, min(int(k), len(devices)))]


def describe():
    """The devices JAX computes on, as a run's first lines say it: "2 CPU
    devices", "1 GPU device (NVIDIA H100 80GB HBM3)", with "in 2 processes, 4
    in all" in a multi-process run."""
    local = jax.local_devices()
    platform = local[0].platform.upper()
    kinds = sorted({d.device_kind for d in local if d.device_kind.lower() != platform.lower()})
    text = f"{len(local)} {platform} device{'s' if len(local) != 1 else ''}" + (f" ({', '.join(kinds)})" if kinds
                                                                                and platform != "CPU" else "")
    if jax.process_count() > 1:
        text += f" in each of {jax.process_count()} processes, {len(jax.devices())} in all"
    return text


def multi_process():
    """Whether this is one process of a run over several (``distributed.initialize``)."""
    return jax.process_count() > 1


def to_host(x):
    """A NumPy copy of ``x``, whole: an array sharded over the devices of
    several processes is gathered from all of them first (every process must
    call this for such an array, as for any collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class Nets(NamedTuple):
    """The per-net part of a run's state, each leaf stacked on K: what a
    ``Layout`` places on the devices and gathers back, in one call."""

    params: Any
    opt_state: Any
    keys: Any


class Layout(NamedTuple):
    """How K stacked nets are laid out for one run: over ``devices``, the K
    axis padded to ``k_all``, a multiple of their count. Padding nets are
    copies of the last, trained and dropped; with ``copies`` (the K-wide
    vmapped program over several processes, ``layout_for``) every device
    holds all K nets instead, so each runs the K-wide program. A run's saved
    state never holds the padding, and each net's numbers do not depend on
    the layout (``k_nets``), so a checkpoint resumes under any layout (any
    device count, any process count) and continues the same curve."""

    k: int
    devices: tuple
    copies: bool = False

    @property
    def k_all(self):
        n = len(self.devices)
        return self.k * n if self.copies else -(-self.k // n) * n

    def pad(self, tree):
        """``tree`` (leaves stacked on K) padded to ``k_all``: with copies of
        the last net, or, with ``copies``, the K nets repeated for each device."""
        extra = self.k_all - self.k
        if not extra:
            return tree
        xp = np if multi_process() else jnp
        if self.copies:
            return jax.tree_util.tree_map(lambda a: xp.concatenate([a] * len(self.devices)), tree)
        return jax.tree_util.tree_map(lambda a: xp.concatenate([a, xp.repeat(a[-1:], extra, axis=0)]), tree)

    def unpad(self, tree):
        """The first K nets of a padded tree."""
        if self.k_all == self.k:
            return tree
        return jax.tree_util.tree_map(lambda a: a[:self.k], tree)

    def put(self, tree):
        """``tree`` (stacked on ``k_all``) sharded along K over the layout's
        devices (``NamedSharding`` over ``mesh``); with one device, as it is.
        Over several processes the values go from each process's host, which
        holds them all (``jax.device_put`` of NumPy values to a global sharding)."""
        if len(self.devices) < 2:
            return tree
        if multi_process():
            tree = jax.tree_util.tree_map(to_host, tree)
        return jax.device_put(tree, jax.sharding.NamedSharding(mesh(self.devices), PartitionSpec("k")))

    def place(self, tree):
        """``tree`` (stacked on K) padded and sharded: ``put(pad(tree))``."""
        if multi_process():
            tree = jax.tree_util.tree_map(to_host, tree)
        return self.put(self.pad(tree))

    def replicate(self, x):
        """``x`` (data every net shares) on every device of the layout."""
        if not multi_process():
            return jnp.asarray(x)
        return jax.device_put(to_host(x), jax.sharding.NamedSharding(mesh(self.devices), PartitionSpec()))

    def gathered(self, tree):
        """The first K nets of ``tree`` as local arrays of this process (gathered
        from every process in a multi-process run; as they are otherwise)."""
        if not multi_process():
            return self.unpad(tree)
        return jax.tree_util.tree_map(lambda a: jnp.asarray(to_host(a)[:self.k]), tree)


def layout_for(k, devices=None, mode="map"):
    """The ``Layout`` of K nets run in ``mode`` (``k_nets``): over
    ``devices_for(k, devices, mode)``; in "vmap" mode over several devices
    (several processes) every device holds all K nets (``copies``)."""
    used = tuple(devices_for(k, devices, mode))
    return Layout(int(k), used, copies=mode == "vmap" and len(used) > 1)
