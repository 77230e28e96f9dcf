"""Saving any pytree of arrays, and the checkpoints of a training run.

``save_tree(path, tree, meta)`` writes a pytree's leaves into an uncompressed
``.npz`` together with a JSON header (the format, the caller's ``meta`` and, for
each leaf, its path in the tree, shape and dtype); ``load_tree(path, like)``
reads them back into the structure of ``like`` (a skeleton: a tree of the same
shape, e.g. freshly initialized params). The files know nothing of training:
``train.fit`` saves its whole ``TrainState`` through them, and
``network3.Network.save`` the params of a network.

JAX is imported only when a tree is saved or loaded, so the error classes
here can be caught by code that must not start JAX (a command's ``--help``).

``Checkpoint(path, meta)`` is where ``fit`` keeps a run: ``meta`` says what run
it is (the caller's facts plus ``fit``'s own: η, λ, epochs, shapes, data
fingerprints, rules). A file of another run is refused with a
``CheckpointError`` listing each differing setting on its own line; an
unreadable file is refused too, and left as it is.
"""
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nndl_jax import files

TREE_FORMAT = "nndl-jax tree v1"
CHECKPOINT_FORMAT = "nndl-jax fit checkpoint v2"
HEADER = "header"


class TreeFileError(ValueError):
    """A file that is not a readable tree file, or not of the expected shape."""


def _leaf_name(i):
    return f"leaf_{i}"


def _path_text(path):
    import jax
    return jax.tree_util.keystr(path)


def save_tree(path, tree, meta=None, *, fmt=TREE_FORMAT, parents=True):
    """Save the leaves of ``tree`` (arrays or scalars) and the JSON-able ``meta``
    to ``path`` atomically (``files.atomic_write``)."""
    import jax
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays = {_leaf_name(i): np.asarray(leaf) for i, (_, leaf) in enumerate(leaves)}
    header = {"format": fmt, "meta": meta if meta is not None else {},
              "leaves": [[_path_text(p), list(a.shape), str(a.dtype)]
                         for (p, _), a in zip(leaves, arrays.values())]}
    files.atomic_write(path, lambda f: np.savez(f, **{HEADER: np.array(json.dumps(header))}, **arrays),
                       parents=parents)
    return Path(path)


def read_tree(path, *, fmt=TREE_FORMAT):
    """``(header, leaves)`` of a tree file: the header dict and the list of
    leaves (NumPy arrays, in the saved order). Any unreadable, truncated or
    foreign file raises ``TreeFileError`` (the file is left untouched), and so
    does a file whose header does not describe its arrays (their number,
    shapes and dtypes)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if HEADER not in f.files:
                older = str(f["format"]) if "format" in f.files else None
                raise ValueError(f"written by an older nndl-jax, in the format {older!r}" if older
                                 else "no header: not a file nndl-jax wrote")
            header = json.loads(str(f[HEADER]))
            if not isinstance(header, dict) or header.get("format") != fmt:
                found = header.get("format") if isinstance(header, dict) else header
                raise ValueError(f"format {found!r}, expected {fmt!r}")
            _check_header(header)
            n = len(header["leaves"])
            if sorted(f.files) != sorted([HEADER] + [_leaf_name(i) for i in range(n)]):
                raise ValueError(f"its header lists {n} arrays, the file holds {len(f.files) - 1}")
            leaves = [f[_leaf_name(i)] for i in range(n)]
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise TreeFileError(f"{path} is a folder, not a file") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
        reason = "not a .npz file" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise TreeFileError(f"{path}: unreadable ({reason})") from None
    for (name, shape, dtype), leaf in zip(header["leaves"], leaves):
        if list(leaf.shape) != shape or str(leaf.dtype) != dtype:
            raise TreeFileError(f"{path}: unreadable (its header says {name or 'the tree'} is {dtype} {tuple(shape)}, "
                                f"the file holds {leaf.dtype} {leaf.shape})")
    return header, leaves


def _check_header(header):
    """Raise ValueError unless ``header`` has a dict ``meta`` and a list of
    ``[path, shape, dtype]`` ``leaves``, as ``save_tree`` writes them."""
    if not isinstance(header.get("meta"), dict):
        raise ValueError("its header has no 'meta' dict")
    leaves = header.get("leaves")
    if not isinstance(leaves, list) or not all(
            isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)
            and isinstance(e[1], list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in e[1]) for e in leaves):
        raise ValueError("its header's 'leaves' are not a list of [path, shape, dtype]")


def load_tree(path, like, *, fmt=TREE_FORMAT, check_shapes=True, check_dtypes=False):
    """``(tree, meta)``: the leaves of the file at ``path`` in the structure of
    ``like`` (and with its leaves' dtypes). Each leaf must sit at the same path
    in both trees (a file saved from another structure is refused, even one
    with leaves of the same shapes). With ``check_shapes`` every leaf must
    have the shape of ``like``'s; otherwise only their number must match (for
    trees whose leaves grow, such as a run's history). With ``check_dtypes``
    every leaf must have ``like``'s dtype too (a checkpoint: a state cast from
    another dtype would continue to other numbers); otherwise leaves are cast."""
    import jax
    header, leaves = read_tree(path, fmt=fmt)
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    if len(leaves) != len(like_leaves):
        raise TreeFileError(f"{path}: holds {len(leaves)} arrays, expected {len(like_leaves)}")
    like_names = [_path_text(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    out = []
    for (name, _, _), like_name, leaf, ref in zip(header["leaves"], like_names, leaves, like_leaves):
        if name != like_name:
            raise TreeFileError(f"{path}: holds {name or 'the tree'} where {like_name or 'the tree'} was expected "
                                "(saved from another structure)")
        ref_shape = np.shape(ref)
        if check_shapes and leaf.shape != ref_shape:
            raise TreeFileError(f"{path}: {name or 'the tree'} holds shape {leaf.shape}, expected {ref_shape}")
        dtype = ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if check_dtypes and leaf.dtype != dtype:
            raise TreeFileError(f"{path}: {name or 'the tree'} holds {leaf.dtype} values, this run's are {dtype} "
                                "(saved by another run or edited)")
        out.append(leaf.astype(dtype, copy=False))
    return jax.tree_util.tree_unflatten(treedef, out), header["meta"]


# --- checkpoints ------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another run.

    ``path``: the file. ``differences``: for a file of another run, one
    ``(setting, saved value, this run's value)`` per differing setting (the
    message gives one line each); empty for an unreadable file."""

    def __init__(self, message, path=None, differences=()):
        super().__init__(message)
        self.path = path
        self.differences = list(differences)


def flat_settings(meta, prefix=""):
    """A nested dict as ``{"a.b": value}``, so two runs' identities can be compared setting by setting."""
    out = {}
    for k, v in meta.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_settings(v, f"{name}."))
        else:
            out[name] = v
    return out


def differences(saved, this_run):
    """``[(setting, saved, this run)]`` for every setting whose value differs."""
    a, b = flat_settings(saved), flat_settings(this_run)
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]


def _shown(v, width=60):
    text = "(not set)" if not isinstance(v, (str, int, float, bool, list, dict, type(None))) else json.dumps(v)
    return text if len(text) <= width else text[:width - 1] + "…"


@dataclass
class Checkpoint:
    """Where ``fit`` saves its whole state after every epoch, and what run it is.

    ``meta``: JSON-able facts that identify the run (architecture, row, seeds,
    settings); ``fit`` adds its own (shapes, η, λ, epochs, data fingerprints,
    rules). A file whose facts differ is refused with ``CheckpointError``,
    never silently reused. The state is saved unpadded and without any record
    of the devices it ran on, so a run resumes on any number of devices.
    """

    path: Path
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)

    def exists(self):
        return self.path.is_file()

    def _header(self):
        try:
            return read_tree(self.path, fmt=CHECKPOINT_FORMAT)
        except (TreeFileError, FileNotFoundError) as e:
            raise CheckpointError(
                f"{self.path}: unreadable checkpoint ({e}); it is left as it is: move it away to start "
                f"this run afresh (--restart in the experiments)", self.path) from None

    def epochs_done(self):
        """How many epochs the saved state holds (0 when there is no file)."""
        if not self.exists():
            return 0
        done = self._header()[0]["meta"].get("epochs_done", 0)
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise CheckpointError(f"{self.path}: unreadable checkpoint (its header says {done!r} epochs are done); "
                                  "it is left as it is: move it away to start this run afresh "
                                  "(--restart in the experiments)", self.path)
        return done

    def check(self, identity):
        """Refuse (``CheckpointError``) a saved run whose identity is not ``identity``."""
        saved = self._header()[0]["meta"].get("identity")
        if saved != identity:
            diff = differences(saved if isinstance(saved, dict) else {}, identity)
            lines = "\n".join(f"  {k}: saved {_shown(s)}, this run {_shown(t)}" for k, s, t in diff)
            raise CheckpointError(
                f"{self.path} holds another run; these settings differ:\n{lines}\n"
                "Run with the saved settings to continue it, or discard it (--restart in the experiments).",
                self.path, diff)

    def load(self, like, identity):
        """``(state, meta)``: the saved state in the structure of ``like``, after
        checking it is this run's (``check``)."""
        self.check(identity)
        try:
            return load_tree(self.path, like, fmt=CHECKPOINT_FORMAT, check_shapes=False, check_dtypes=True)
        except TreeFileError as e:
            raise CheckpointError(f"{e}; it is left as it is: move it away to start this run afresh "
                                  "(--restart in the experiments)", self.path) from None

    def save(self, state, identity, epochs_done):
        save_tree(self.path, state, {"identity": identity, "epochs_done": int(epochs_done),
                                     "pid": os.getpid()}, fmt=CHECKPOINT_FORMAT)

    def remove(self):
        self.path.unlink(missing_ok=True)
        files.remove_stale_parts(self.path.parent, self.path.name)


def fingerprint(x, y):
    """A cheap identity of a data set for a checkpoint's identity: its shape and
    a hash of its labels and of a sample of its inputs (every 1/1000th row)."""
    import hashlib
    x, y = np.asarray(x), np.asarray(y)
    h = hashlib.sha1(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(x.reshape(x.shape[0], -1)[::max(1, x.shape[0] // 1000)]).tobytes())
    return {"shape": list(x.shape), "sha1": h.hexdigest()}
