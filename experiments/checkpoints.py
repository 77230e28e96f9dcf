"""The checkpoints of unfinished rows: one folder per job in the user cache
(``checkpoint_root``), claimed by the process that trains it (a lock on its
owner file), checked before a run starts (a live owner, a stale checkpoint,
unfinished rows that need ``--resume`` or ``--restart``) and removed once the
job's rows are recorded.
"""
import contextlib
import datetime
import glob
import hashlib
import json
import os
from pathlib import Path

from experiments import session, store
from nndl_jax import data, files

CHECKPOINT_FILE = "state.npz"


OWNER_FILE = "owner.json"   # in a row's checkpoint folder: the pid that trains it (locked), its rows


def checkpoint_root(args):
    """``<cache>/checkpoints/<first 12 hex of sha1(absolute --out)>/<chapter>``, with
    ``<cache>`` the user cache (``$XDG_CACHE_HOME/nndl-jax``): one folder per
    output folder, so runs into different ``--out`` folders never share checkpoints."""
    digest = hashlib.sha1(str(Path(args.out).resolve()).encode()).hexdigest()[:12]
    return data.cache_dir() / "checkpoints" / digest / args.chapter


def checkpoint_dir(args, job_id):
    """The folder where job ``job_id`` keeps its checkpoint. Not created here."""
    return checkpoint_root(args) / str(job_id)


def probe_checkpoint_folder(args):
    """Before any training: the checkpoint folder can be written (a folder made
    for the probe is removed again), else a one-line ``session.Refusal``."""
    folder = checkpoint_root(args)
    try:
        with store.probed_folder(folder):
            pass
    except OSError as e:
        raise session.Refusal(f"{args.chapter}: the checkpoint folder {folder} cannot be written "
                      f"({e.strerror or e}); set XDG_CACHE_HOME to a folder you can write to "
                      "(checkpoints go to $XDG_CACHE_HOME/nndl-jax/checkpoints)") from None


def live_owner(folder, held=()):
    """The pid of the live process that trains the job of ``folder`` (it holds
    the lock of its owner file), or None; ``held``: the folders this command
    holds (``session.Session.locks``), which are its own, not another's."""
    path = Path(folder) / OWNER_FILE
    if Path(folder) in held or not path.exists():
        return None
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _owner(folder).get("pid", "?")
    finally:
        os.close(fd)
    return None


def _owner(folder):
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def claim(args, job_id, rows, group=None):
    """Make the folder of ``job_id`` this command's (``args.session.locks``): a
    lock held until its rows are recorded (``remove_checkpoints``), its job
    stops or the process ends, so a second command on the same rows is told
    who trains them. The owner file names the pid, the rows, the --out and the
    checkpoint group the folder belongs to (``group``: the name the row driver
    gave the running job, whose folder or sub-run folder it is; default
    ``job_id``), which ``remove_checkpoints`` removes together."""
    folder = checkpoint_dir(args, job_id)
    locks = args.session.locks
    if not session.is_main_process():  # process 0 holds the lock and writes the checkpoints
        return folder
    pid = live_owner(folder, locks)
    if pid is not None:
        raise session.Refusal(f"{args.chapter}: row {job_id} is being trained by pid {pid} (into {args.out}); "
                      "wait for it to finish, or give another --out")
    if folder in locks:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except OSError:
        os.close(fd)
        raise session.Refusal(f"{args.chapter}: row {job_id} is being trained by pid "
                      f"{_owner(folder).get('pid', '?')}; wait for it to finish, or give another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "rows": list(rows), "out": str(args.out),
                             "job": group or job_id}).encode())
    locks[folder] = fd
    return folder


def checkpoint_name(given, job, job_id):
    """The checkpoint folder's name for ``job_id``: the name the driver gave the
    running job (``given``: a job of units names the seeds it trains), with a
    sub-run's own suffix kept (``3.22@0.25``, ``3.10@book@large``: one
    checkpoint per sub-run, never one folder shared by two runs)."""
    if not given or job is None:
        return given or job_id
    if job_id.startswith(job.id + "@"):
        return given + job_id[len(job.id):]
    return given


def row_checkpoint(args, job_id, meta, rows=None):
    """The ``train.Checkpoint`` of job ``job_id`` (or one of its sub-runs,
    ``<id>@...``), saved after every epoch in ``checkpoint_dir(args, job_id)``
    and removed by ``remove_checkpoints`` once its rows are recorded.
    ``--resume`` continues from it; ``--restart`` discards it. ``rows``: the
    table rows it makes (default: the running job's)."""
    from nndl_jax import train
    job = getattr(args, "job", None)   # the row driver's view of the job it runs
    group = getattr(args, "checkpoint_id", None) or job_id
    job_id = checkpoint_name(getattr(args, "checkpoint_id", None), job, job_id)
    rows = rows or (job.rows if job is not None else [job_id])
    folder = claim(args, job_id, rows, group=group)
    ckpt = train.Checkpoint(folder / CHECKPOINT_FILE,
                            dict(meta, chapter=args.chapter, quick=bool(args.quick), x64=bool(args.x64)))
    if ckpt.exists() and args.restart:
        ckpt.remove()
    args.session.note_checkpoint(ckpt.path)
    if not args.quick:
        print(f"  checkpoint after every epoch: {ckpt.path} (Ctrl-C stops at once; "
              "--resume continues from the last finished epoch)", flush=True)
    return ckpt


def saved_checkpoints(args):
    """{job id: the table rows it makes} for every job of this command's
    chapter and --out with a saved checkpoint."""
    root = checkpoint_root(args)
    if not root.is_dir():
        return {}
    return {p.parent.name: _owner(p.parent).get("rows", [p.parent.name])
            for p in sorted(root.glob(f"*/{CHECKPOINT_FILE}"))}


def _asked_for(args, job_id):
    """"1.1+1.2" (a group of rows), "3.12@..." (a sub-run), "6.8a" (--only 6.8)."""
    share = getattr(args, "share", None)
    if share is not None and not any(job_id.split("@")[0] == s.split("@")[0] for s in share):
        return False   # another part's job
    def wanted(row_id):   # as ``driver.wanted``: asked for by --only
        return args.only is None or row_id in args.only
    return any(wanted(part) or wanted(part.rstrip("ab"))
               for part in (p.split("@")[0] for p in job_id.split("+")))


def _stale(args, folder, rows):
    """Whether every row of a saved checkpoint has been recorded since it was written."""
    try:
        written = datetime.datetime.fromtimestamp((folder / CHECKPOINT_FILE).stat().st_mtime,
                                                  datetime.timezone.utc).isoformat(timespec="seconds")
        recorded = {r["id"]: r for r in store.recorded_rows(args)}
    except OSError:
        return False
    return bool(rows) and all(rid in recorded and recorded[rid].get("finished", "") >= written for rid in rows)


def check_unfinished(args):
    """Before any training, for each checkpoint folder of the rows asked for:
    a live process training it is named (its checkpoint is never discarded);
    a saved checkpoint whose rows have all been recorded since is stale and
    removed; others need ``--resume`` (continue) or ``--restart`` (discard):
    nothing saved is dropped silently. Leftovers of a run that saved nothing are cleared."""
    root, left = checkpoint_root(args), []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        job_id = folder.name
        if not _asked_for(args, job_id):
            continue
        pid = live_owner(folder, args.session.locks)
        if pid is not None:
            raise session.Refusal(f"{args.chapter}: row {job_id} is being trained by pid {pid} (into {args.out}); "
                          "wait for it to finish, or give another --out")
        rows = _owner(folder).get("rows", [job_id])
        if not (folder / CHECKPOINT_FILE).exists() or args.restart:
            remove_checkpoints(args, job_id)
        elif _stale(args, folder, rows):
            print(f"{args.chapter}: removed the checkpoint of {job_id}, whose rows were recorded since",
                  flush=True)
            remove_checkpoints(args, job_id)
        else:
            left.append(job_id)
    if left and not args.resume:
        raise session.Refusal(
            f"{args.chapter}: rows {', '.join(left)} of an interrupted run into {args.out} are saved in "
            f"{root}: add --resume to continue them from their last finished epoch, "
            "or --restart to discard them")


def job_folders(args, job_id):
    """The checkpoint folders of job ``job_id``: its own and those of its
    sub-runs (``<id>@<which>`` whose `group` is ``job_id``). A folder
    ``<id>@...`` of another job is not among them: ``3.7@book`` (the book
    replay of 3.7) is not a sub-run of 3.7, nor ``3.14@100`` of 3.14."""
    root = checkpoint_root(args)
    found = [root / job_id] if (root / job_id).is_dir() else []
    return found + [f for f in sorted(root.glob(f"{glob.escape(job_id)}@*")) if f.is_dir() and group(f) == job_id]


def group(folder):
    """The checkpoint group (the row driver's name of a job) that ``folder``
    belongs to, as its owner file names it (`claim`). An owner file written
    before owners named it: a folder whose only row is its own name is a job
    of its own (``3.7@book``), any other the sub-run of the name before its
    last "@" (``3.18@book@0.025``)."""
    owner, folder = _owner(folder), Path(folder)
    if "job" in owner:
        return owner["job"]
    return folder.name if owner.get("rows") == [folder.name] else folder.name.rsplit("@", 1)[0]


def remove_checkpoints(args, job_id):
    """Remove the checkpoints of job ``job_id`` and of its sub-runs
    (`job_folders`), with the temporary files interrupted writes left there
    (``files.remove_stale_parts``: a live writer's is kept, and so its folder),
    then every folder this leaves empty up to the cache's checkpoints folder
    (process 0's work in a multi-process run); their locks are released."""
    if not session.is_main_process():
        return
    root = checkpoint_root(args)
    for folder in job_folders(args, job_id):
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        files.remove_stale_parts(folder)   # interrupted writes; the job is over
        (folder / OWNER_FILE).unlink(missing_ok=True)
        fd = args.session.locks.pop(folder, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            folder.rmdir()
    remove_empty_folders(root, data.cache_dir())


def drop_unsaved(args, job_id):
    """Remove the checkpoint folders of ``job_id`` (and its sub-runs) that hold no saved state."""
    for folder in job_folders(args, job_id):
        if not (folder / CHECKPOINT_FILE).exists():
            remove_checkpoints(args, folder.name)


def remove_empty_folders(folder, stop):
    """Remove ``folder`` and its parents while they are empty, below ``stop``."""
    folder, stop = Path(folder), Path(stop)
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
