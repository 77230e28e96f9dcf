"""Writing files so that an interrupted write never leaves half a file over a good one.

The one write-to-temp-then-rename of the project: results, checkpoints, saved
networks, figures, the MNIST cache and the expanded set all go through
``atomic_write``. The temporary file lives in the target's folder (a rename
within one file system is atomic), is named ``.<name>.<pid>.<random>.part``
and is removed when the write fails; a process killed in the middle of a write
leaves such a file behind, which ``remove_stale_parts`` clears: the one home of
"which temporary files are stale" (a checkpoint's, the results store's) and of
"is this writer's process alive" (``_pid_alive``).

Standard library only (layer 1: everything else may import it).
"""
import contextlib
import os
import re
import secrets
from pathlib import Path

PART_SUFFIX = ".part"


def part_path(path):
    """The temporary file a write of ``path`` goes through (unique per call)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}")


def atomic_write(path, write, mode="wb", *, parents=False):
    """Write ``path`` by calling ``write(f)`` on a temporary file beside it, then
    renaming it into place. The file gets the usual mode (0666 less the umask);
    a text ``mode`` writes UTF-8, whatever the locale.

    ``parents``: create missing folders first; otherwise a missing folder is a
    ``FileNotFoundError`` that names it. Returns ``path``.
    """
    path = Path(path)
    folder = path.parent
    if parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise FileNotFoundError(f"cannot save {path.name}: the folder {folder.resolve()} does not exist "
                                "(create it first)")
    tmp = part_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def atomic_write_text(path, text, *, parents=True):
    """Write the text file ``path`` atomically (UTF-8), creating its folder."""
    return atomic_write(path, lambda f: f.write(text), "w", parents=parents)


def stale_parts(folder, name=None):
    """The temporary files that interrupted ``atomic_write`` calls left in
    ``folder`` (of the file ``name`` only, when given) by processes that are no
    longer running: ``part_path``'s names, and ``.<name>.<pid>.tmp``, the name
    this project's writes used before (a folder written then may still hold
    one). Files named otherwise (another tool's, or a temporary file without a
    pid) are never listed: nothing tells whether their writer lives."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted([*folder.glob(f".*{PART_SUFFIX}"), *folder.glob(".*.tmp")]):
        parsed = _parse_part(p.name)
        if parsed is not None and (name is None or parsed[0] == name) and not _pid_alive(parsed[1]):
            out.append(p)
    return out


def remove_stale_parts(folder, name=None):
    """Remove ``stale_parts(folder, name)``; returns how many were removed."""
    removed = 0
    for p in stale_parts(folder, name):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


_PART = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)(?:\.[0-9a-f]+" + re.escape(PART_SUFFIX) + r"|\.tmp)")


def _parse_part(part_name):
    """``(target name, pid)`` of a temporary file named by ``part_path`` (or
    by the earlier ``.<name>.<pid>.tmp``), else None."""
    m = _PART.fullmatch(part_name)
    return (m["name"], int(m["pid"])) if m else None


def _pid_alive(pid):
    """Whether the process ``pid`` (a writer named in a part's name) still runs."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    return True


def json_default(x):
    """``json.dumps(..., default=json_default)``: the one way NumPy (and JAX)
    values enter JSON in the project: arrays as lists, scalars as numbers,
    paths as text; anything else is a TypeError, as ``json`` would raise.
    (Duck-typed on ``tolist``, so this module needs no NumPy.)"""
    if hasattr(x, "tolist") and hasattr(x, "dtype"):
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
