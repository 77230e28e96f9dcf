"""Writing files so that an interrupted write never leaves half a file over a good one.

The one write-to-temp-then-rename of the project: results, checkpoints, saved
networks, figures, the MNIST cache and the expanded set all go through
``atomic_write``. The temporary file lives in the target's folder (a rename
within one file system is atomic), is named ``.<name>.<pid>.<random>.part``
and is removed when the write fails; a process killed in the middle of a write
leaves such a file behind, which ``remove_stale_parts`` clears.

Standard library only (layer 1: everything else may import it).
"""
import contextlib
import os
import secrets
from pathlib import Path

PART_SUFFIX = ".part"


def part_path(path):
    """The temporary file a write of ``path`` goes through (unique per call)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}")


def atomic_write(path, write, mode="wb", *, parents=False):
    """Write ``path`` by calling ``write(f)`` on a temporary file beside it, then
    renaming it into place. The file gets the usual mode (0666 less the umask).

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
        with os.fdopen(fd, mode) as f:
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
    """The temporary files that interrupted writes left in ``folder`` (of the
    file ``name`` only, when given) by processes that are no longer running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{name}.*{PART_SUFFIX}" if name else f".*{PART_SUFFIX}"
    return [p for p in folder.glob(pattern) if not _writer_alive(p)]


def remove_stale_parts(folder, name=None):
    """Remove ``stale_parts(folder, name)``; returns how many were removed."""
    removed = 0
    for p in stale_parts(folder, name):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
    return removed


def _writer_alive(part):
    """Whether the process that is writing ``part`` (its pid is in the name) still runs."""
    try:
        pid = int(part.name[: -len(PART_SUFFIX)].split(".")[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
