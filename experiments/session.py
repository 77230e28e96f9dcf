"""The session of one command: its processes and devices, Ctrl-C and SIGTERM,
the note that says what is saved and how to resume, and ``main_entry``, the
wrapper that turns every refusal into a message without a traceback.

A ``Session`` is what that note needs to know about the command running (its
runs, the rows recorded, the checkpoint being written, the resume command, the
command's name), with the rest of the command's changing state (the owner
locks it holds, the figures it announced): one object per command, made by
``main_entry`` and handed explicitly to the command, to the signal handlers
(as closures) and to the peer-stop callback. Nothing here is module state.
"""
import contextlib
import json
import os
import shlex
import sys
import threading
from pathlib import Path

from experiments import store
from nndl_jax import data


class Refusal(SystemExit):
    """A command refused before or while it trains: the message says why and
    what to do. A SystemExit, so even uncaught it prints no traceback (exit 1)."""


# What may differ between the processes of one run: each process's own place in it.
_PER_PROCESS = {"process_id", "coordinator", "coordinator_timeout", "cluster", "debug", "data_dir", "devices",
                "share", "part_record", "share_device"}
_LABELS = {"chapter": "the command", "code": "the code version", "asked": "--only"}


def agreed_settings(args):
    """The settings every process of a run must share, as {"--epochs": 3, ...}:
    the parsed command line (a run context's ``settings()``, or a namespace)
    but each process's own place in it (``_PER_PROCESS``)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
    given = args.settings() if hasattr(args, "settings") else vars(args)
    # from --part; --only's rows, from its ids
    derived = {"book_plan"} | ({"only"} if given.get("asked") is not None else set())
    left_out = _PER_PROCESS | derived
    return {_LABELS.get(k, "--" + k.replace("_", "-")): plain(v)
            for k, v in sorted(given.items()) if k not in left_out and not k.startswith("_")}


def start_processes(args, prog="nndl-jax"):
    """Join the run's other processes (before JAX starts) when asked to, after
    checking that every process was given the same arguments; the processes
    other than 0 then print nothing and write nothing (process 0 does). A stop
    of any process (Ctrl-C, SIGTERM) stops this one too, with its note."""
    from nndl_jax import distributed
    try:
        if not (args.cluster or distributed.wanted(args.coordinator, args.num_processes, args.process_id)):
            return
        index, count = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                              timeout=args.coordinator_timeout, auto=args.cluster,
                                              agree=agreed_settings(args), debug=getattr(args, "debug", False))
    except distributed.DistributedError as e:
        raise Refusal(f"{prog}: {e}") from None
    distributed.on_peer_stop(lambda peer, why, status: args.session.stop_now(
        why if " in process " in why else f"{why} in process {peer}", status))
    if index != 0:  # stdout, its file descriptor too (the collectives' libraries print there)
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def is_main_process():
    """Whether this process prints and writes: process 0 of a multi-process run, or the only one."""
    from nndl_jax import distributed
    return distributed.is_main() if "jax" in sys.modules else True


def use_devices(n, *, per_core=False, prog="nndl-jax"):
    """Ask JAX for ``n`` CPU devices (None: one per core when ``per_core``,
    else leave JAX's default) before it runs anything. When JAX already runs
    (a test, or an earlier chapter of ``reproduce``) with another count, says
    so on stderr; the numbers do not depend on the device count. The count is
    this process's own (``--devices`` in a run over several processes); then
    the processes connect their collectives (``distributed.connect_collectives``)."""
    from nndl_jax import distributed
    if n is None and not per_core:
        if distributed.started():
            distributed.connect_collectives()
        return None
    from nndl_jax import devices
    want = devices.cpu_count() if n is None else n
    devices.use_cpu_devices_unless_started(want)
    import jax
    got = len(jax.local_devices(backend="cpu"))
    if n is not None and got != n:
        print(f"{prog}: --devices {n} cannot apply: JAX already runs with {got} CPU devices in this "
              f"process (the count is fixed once JAX has run anything); run the command in a fresh "
              f"process to use {n}. The results do not depend on it.", file=sys.stderr, flush=True)
    if distributed.started():
        distributed.connect_collectives()
    return got


class Session:
    """The state of one command while it runs: what Ctrl-C's note says (the
    chapter runs, the rows recorded, the checkpoint being written, the resume
    command), the owner-file locks of the checkpoint folders it trains (an
    flock lasts as long as its open file), the figures whose "wrote" line it
    printed, the rows whose table it printed and the payload the running job
    adds to its rows.

    `main_entry` makes one per command and hands it to the command's ``main``
    (``run_session=``), which hands it to ``driver.parse_args``: every run
    context of the command carries it (``args.session``), and the signal
    handlers get it through their closures. A ``main`` called without one
    (a test) gets a fresh one from ``parse_args``. ``prog``: the command's
    base name when `main_entry` runs it for the ``nndl-jax`` command."""

    def __init__(self, prog=None):
        self.prog = prog
        self.runs, self.recorded = [], []
        self.checkpoint, self.resume = None, None
        self.locks = {}        # checkpoint folder -> the open, locked owner file of a job this command trains
        self.announced = set()  # figures whose "wrote" line was printed: each file is announced once
        self.shown = {}         # run id -> the rows whose table `progress.show_table` printed
        self.payload = {}       # what the running job adds to its rows (``driver.add_payload``)
        self.stopping = threading.Lock()   # only the first stop (a signal, a peer) prints the note

    def command_name(self, chapter):
        """How the user typed chapter ``chapter``'s command: ``nndl-jax chapN``
        when `main_entry` runs it for the ``nndl-jax`` command, else
        ``python -m experiments.chapN``."""
        return f"{self.prog} {chapter}" if self.prog else f"python -m experiments.{chapter}"

    def note_run(self, args):
        """A chapter run of this command (its context): the resume command and the messages name the last one."""
        self.runs.append(args)

    def note_recorded(self, out, row_ids):
        """Rows recorded in ``out`` by this command, for the Ctrl-C note."""
        self.recorded += [(out, rid) for rid in row_ids]

    def note_checkpoint(self, path):
        """The checkpoint file of the row being trained, for the Ctrl-C note."""
        self.checkpoint = path

    def set_resume_command(self, command):
        """The command that Ctrl-C's note offers (``nndl-jax reproduce`` sets its own)."""
        self.resume = command

    def resume_command(self):
        if self.resume:
            return self.resume
        if not self.runs:
            return None
        args = self.runs[-1]
        argv = [a for a in args.argv if a not in ("--restart", "--resume")] + ["--resume"]
        return f"{args.prog or self.command_name(args.chapter)} " + shlex.join(argv)

    def announce(self, path):
        """Whether the figure ``path`` is written for the first time in this command (then say so)."""
        first = Path(path).resolve() not in self.announced
        self.announced.add(Path(path).resolve())
        return first

    def add_payload(self, payload):
        """Add ``payload`` to what the running job records with its rows."""
        self.payload = merged_payload(self.payload, payload)

    def take_payload(self):
        """What the running job added (``add_payload``), handed over once."""
        payload, self.payload = self.payload, {}
        return payload

    def release_locks(self):
        """Close every owner file this command holds locked: its jobs are over."""
        while self.locks:
            _, fd = self.locks.popitem()
            with contextlib.suppress(OSError):
                os.close(fd)

    def interrupted_note(self, why="Ctrl-C"):
        """What Ctrl-C (or SIGTERM: ``why``) prints: the rows saved where, and the
        command that resumes. In a process other than 0 of a run over several,
        which saves nothing itself: that process 0 keeps what is saved."""
        from nndl_jax import distributed
        lines = ["", f"stopped ({why})."]
        place = distributed.started()
        if place is not None and place[0] != 0:
            lines.append(f"process {place[0]} of {place[1]}: process 0 records the finished rows and keeps the "
                         "unfinished row's checkpoint; its note says what is saved.")
        else:
            lines += self._saved_lines()
        command = self.resume_command()
        if command:
            lines.append(f"resume with: {command}" + (" (and every other process with its own --process-id)"
                                                      if place is not None else ""))
        return "\n".join(lines)

    def _saved_lines(self):
        """Where the finished rows and the unfinished row's last epoch are saved."""
        lines, by_out = [], {}
        for out, rid in self.recorded:
            by_out.setdefault(str(out), []).append(rid)
        for out, ids in by_out.items():
            lines.append(f"rows recorded in {Path(out) / store.RESULTS}: {', '.join(ids)}")
        saved = self.checkpoint   # the path of the checkpoint file of the row being trained
        if saved is not None and Path(saved).exists():
            lines.append(f"the unfinished row's last finished epoch is saved in {Path(saved).parent}")
        if not by_out and self.checkpoint is None:
            lines.append("no row was finished yet.")
        return lines

    def stop_now(self, why, status):
        """End this process at once (from any thread): tell the run's other
        processes, print the note, exit with ``status``. Only the first caller
        gets through; a second one waits for the exit."""
        self.stopping.acquire()
        from nndl_jax import distributed
        distributed.tell_peers_stopping(why, status)
        print(self.interrupted_note(why), file=sys.stderr, flush=True)
        os._exit(status)

    def chapter_or(self, prog):
        """The chapter of this command's last run, else ``prog``: the name its messages start with."""
        return self.runs[-1].chapter if self.runs else prog


def merged_payload(a, b):
    """Two chapter payloads as one: dict entries merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def checkpoint_refusal(e):
    """A refused checkpoint as lines: one per differing setting, then what to do."""
    differences = getattr(e, "differences", None) or []
    path = getattr(e, "path", None)
    if not differences:
        return f"{e}" + ("" if "--restart" in str(e) else "\n--restart discards the saved checkpoint")
    lines = [f"the saved checkpoint {path or ''} is of another run of this row:".replace("  ", " ")]
    for setting, saved, now in differences:
        option = _OPTIONS.get(str(setting).rsplit(".", 1)[-1])
        scalar = isinstance(saved, (str, int, float, bool))
        hint = f" (pass {option} {_short(saved)} to continue it)" if option and scalar else ""
        lines.append(f"  {setting}: saved {_short(saved)}, this run {_short(now)}{hint}")
    lines.append("Pass the saved settings back to continue it, or add --restart to discard it and train afresh.")
    return "\n".join(lines)


_OPTIONS = {"epochs": "--epochs", "train_size": "--train-size", "n_train": "--train-size", "seed": "--seed",
            "devices": "--devices", "svm_train_size": "--svm-train-size", "x64": "--x64", "quick": "--quick",
            "book_seed": "--book-seed"}


def _short(value, limit=60):
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return "(not set)"   # a setting one of the two runs does not have
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


_STOPS = {"SIGINT": ("Ctrl-C", 130), "SIGTERM": ("SIGTERM", 143)}   # signal: what the note says, exit status


@contextlib.contextmanager
def _stop_at_once_with_a_note(session):
    """Ctrl-C (SIGINT) and SIGTERM (what Slurm sends before it kills a job)
    end the process at once, even in the middle of a compiled epoch (Python
    alone would only see it when the epoch returns), after printing which rows
    are saved where and the command that resumes (exit status 130, 143); in a
    run over several processes every process stops so. Nothing saved is lost:
    checkpoints and results are written atomically. The signal's byte reaches
    a helper thread through ``signal.set_wakeup_fd``, which needs no help
    from the busy main thread; the note is ``session``'s (`Session.stop_now`)."""
    import signal
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "set_wakeup_fd"):
        yield
        return
    caught = {getattr(signal, name): stop for name, stop in _STOPS.items()}
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_handlers = {sig: signal.signal(sig, lambda *_: None) for sig in caught}
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                return
            if not got:
                return
            for sig, (why, status) in caught.items():
                if sig in got:
                    session.stop_now(why, status)

    thread = threading.Thread(target=watch, name="ctrl-c", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        os.close(w)
        thread.join(timeout=1)
        os.close(r)


def main_entry(main, argv=None, prog=None):
    """Run an experiment command's ``main(argv, run_session=...)`` for the
    command line; its exit status. The command's `Session` is made here and
    handed to ``main`` and to the Ctrl-C / SIGTERM handlers. Every refusal (bad
    arguments, a refused checkpoint, a bad results file, missing MNIST) prints
    its message without a Python traceback and gives a non-zero status; Ctrl-C
    stops at once and says what is saved and how to resume (130; SIGTERM
    likewise, 143). Used by every ``__main__`` block and by ``nndl-jax``;
    ``prog``: the command's name for its messages, usage line and resume
    command (default, given an ``argv``: ``nndl-jax``; a chapter adds its name)."""
    from nndl_jax.checkpoint import CheckpointError
    prog = Path(sys.argv[0]).stem if argv is None else (prog or "nndl-jax")
    session = Session(prog=None if argv is None else prog)
    with _stop_at_once_with_a_note(session):
        try:
            result = main(argv, run_session=session)
        except KeyboardInterrupt:
            print(session.interrupted_note(), file=sys.stderr, flush=True)
            return 130
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                return e.code or 0
            print(e.code, file=sys.stderr, flush=True)
            return 1
        except CheckpointError as e:
            print(checkpoint_refusal(e), file=sys.stderr, flush=True)
            return 1
        except (store.ResultsError, data.MNISTError) as e:
            print(f"{session.chapter_or(prog)}: {e}", file=sys.stderr, flush=True)
            return 1
        finally:
            session.release_locks()
    return result if isinstance(result, int) else 0
