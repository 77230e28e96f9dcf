"""One run over several processes or hosts, with JAX's own multi-process runtime.

``initialize(...)`` starts ``jax.distributed`` before anything touches JAX:
every process of the run calls it with the same coordinator (``HOST:PORT`` of
process 0), the number of processes and its own id, or lets JAX read them
from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``) or detect them on a cluster it knows (Slurm, TPU pods,
Open MPI). On the CPU the processes' collectives go through gloo. Then
``jax.devices()`` lists the devices of every process, and ``train.fit``
shards the K stacked nets of a run over all of them: each process trains its
share, the metrics are gathered, and only process 0 (``is_main()``) prints
and writes results, figures and checkpoints (which resume with any process
count, as with any device count).

Such a run is all-or-nothing, and its failures end every process with a
message, never a hang. Before JAX starts, the processes meet at the
coordinator's address (``rendezvous``): process 0 listens there (a busy port
is refused within seconds), the others connect, and a process that has not arrived
within ``timeout`` seconds is named in the error every process prints. Each
process then keeps its connection to process 0 open as a watchdog: when a
process ends (it finished, it crashed, it was killed), its connection closes,
and a process that is still running and did not hear it say goodbye stops
within a second with a message naming it (JAX's own heartbeats, bounded by
the same ``timeout``, remain for a peer that hangs without closing its
connection). What was finished stays saved (finished rows in results.json,
the last epoch's checkpoint): start every process again with ``--resume``.

At the rendezvous each process also says who it is and what it was asked
to do (``agree``: the settings of its command line that must be the same
everywhere); process 0 refuses, in every process and before anything
trains, a second process with its id, another ``--num-processes`` or other
arguments. A stop in one process (Ctrl-C, SIGTERM) is told to the others
(``tell_peers_stopping``), so each ends with its own note. After JAX starts,
``connect_collectives`` makes the processes' first collective operation
while they are still side by side, so gloo's fixed 30 s deadline for
connecting never meets a process that is still loading or compiling; later
waits at a collective are bounded by XLA's 30 min, or ``timeout`` if longer.
An error that ends a process prints one paragraph; JAX's own account (the
traceback) goes to a log file, or to stderr with ``debug``.
"""
import atexit
import json
import os
import select
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
DEFAULT_TIMEOUT = 60


class DistributedError(RuntimeError):
    """The processes of a multi-process run could not start together."""


def settings(coordinator=None, num_processes=None, process_id=None, environ=None):
    """``(coordinator, num_processes, process_id)`` from the arguments, else from
    the environment variables ``ENV`` names; None where neither gives one."""
    environ = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    out = {k: v if v is not None else environ.get(ENV[k]) for k, v in given.items()}
    for k in ("num_processes", "process_id"):
        if out[k] is not None:
            try:
                out[k] = int(out[k])
            except ValueError:
                raise DistributedError(f"{k.replace('_', ' ')} must be a whole number, got {out[k]!r}") from None
    if out["num_processes"] is not None and out["num_processes"] < 1:
        raise DistributedError(f"the number of processes must be at least 1, got {out['num_processes']}")
    if out["process_id"] is not None and out["num_processes"] is not None \
            and not 0 <= out["process_id"] < out["num_processes"]:
        raise DistributedError(f"process id {out['process_id']} is not one of 0..{out['num_processes'] - 1}")
    if out["coordinator"] is not None:
        parse_coordinator(out["coordinator"])
    return out["coordinator"], out["num_processes"], out["process_id"]


def parse_coordinator(text):
    """``(host, port)`` of a coordinator ``HOST:PORT`` (``[IPv6]:PORT`` too),
    or a ``DistributedError`` saying what is wrong with it: caught here, before
    any process waits for a port that cannot be meant."""
    host, colon, port = str(text).strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    problem = ("it has no ':PORT'" if not colon else "the host is empty" if not host
               else "the port is empty" if not port
               else f"the port {port!r} is not a number" if not port.isdigit()
               else f"the port {int(port)} is not one of 1..65535" if not 1 <= int(port) <= 65535 else None)
    if problem:
        raise DistributedError(f"the coordinator must be HOST:PORT, process 0's address with a port from 1 to "
                               f"65535 (e.g. 127.0.0.1:6543), got {text!r}: {problem}")
    return host, int(port)


def wanted(coordinator=None, num_processes=None, process_id=None, environ=None):
    """Whether a multi-process run is asked for: by the arguments or the environment."""
    c, n, _ = settings(coordinator, num_processes, process_id, environ)
    return c is not None or (n is not None and n > 1)


def initialize(coordinator=None, num_processes=None, process_id=None, *, timeout=DEFAULT_TIMEOUT,
               auto=False, agree=None, debug=False):
    """Start ``jax.distributed`` for this process (call it first, before any
    other JAX call). ``auto``: with no coordinator given, let JAX detect a
    cluster it knows (Slurm, TPU pods, Open MPI). ``timeout`` bounds how long
    this process waits for the others to arrive and how long a dead peer goes
    unnoticed (JAX's default is 300 s). ``agree``: a JSON-able dict of the
    settings every process must share ({"--epochs": 3, ...}), compared at the
    rendezvous. ``debug``: an error that ends the process prints its traceback
    here rather than into a log file. Returns ``(process_id, num_processes)``;
    ``(0, 1)`` when no multi-process run is asked for."""
    if _STARTED:  # a second call (reproduce, then each chapter) joins nothing new
        return _STARTED[0]
    coordinator, num_processes, process_id = settings(coordinator, num_processes, process_id)
    if coordinator is None and not auto and (num_processes or 1) == 1:
        return 0, 1
    if coordinator is not None and (num_processes is None or process_id is None):
        raise DistributedError("a multi-process run needs all three: --coordinator HOST:PORT, --num-processes N "
                               "and --process-id I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    timeout = max(1, int(timeout))
    _OPTIONS.update(debug=bool(debug), timeout=timeout)
    if coordinator is not None:
        host, port = parse_coordinator(coordinator)
        rendezvous(host, port, num_processes, process_id, timeout, agree)
    import jax
    _bound_jax_waits(jax, timeout)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout)
    except (RuntimeError, ValueError) as e:  # JAX's own error: a busy port, a missing peer, a started JAX
        where = f"coordinator {coordinator}" if coordinator else "the cluster's coordinator"
        raise DistributedError(f"process {process_id} of {num_processes} could not join the run at {where} "
                               f"within {timeout} s: {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                               "Start every process with the same --coordinator and --num-processes, "
                               "each with its own --process-id; process 0 must be able to listen on the "
                               "coordinator's port") from None
    _STARTED.append((jax.process_index(), jax.process_count()))
    if coordinator is None:   # JAX found the processes (a cluster): no rendezvous of ours compared them
        agree_through_jax(agree, timeout)
    return _STARTED[0]


def agree_through_jax(agree, timeout):
    """The rendezvous's check for a run whose processes JAX found itself
    (``auto``): each process publishes its settings in JAX's key-value store
    and reads every other's; all refuse with the first disagreement, the same
    message in every process."""
    import jax
    from jax._src import distributed as jax_distributed
    client, me, n = jax_distributed.global_state.client, jax.process_index(), jax.process_count()
    if client is None or n == 1:
        return
    try:
        client.key_value_set(f"nndl-jax/agree/{me}", json.dumps({"id": me, "n": n, "agree": agree or {}}))
        hellos = [json.loads(client.blocking_key_value_get(f"nndl-jax/agree/{i}", int(timeout) * 1000))
                  for i in range(n)]
    except Exception as e:  # JAX's runtime error: a process that did not publish within the timeout
        raise DistributedError(f"process {me} of {n} did not hear every other process's settings within "
                               f"{timeout} s ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    problem = next(filter(None, (disagreement(hellos[0], theirs) for theirs in hellos[1:])), None)
    if problem:
        raise DistributedError(problem)


def _bound_jax_waits(jax, timeout):
    """JAX's own waits of the start-up, set before it starts: gloo on the CPU;
    no preemption notifier (it takes SIGTERM, which stops the run here as
    Ctrl-C does); the CPU devices' exchange of their topology waits
    ``timeout`` (in whole minutes: JAX's unit; its defaults are 2 and 5 min);
    a collective operation waits at least ``timeout`` (XLA's default: 30 min,
    so that a process that reaches an epoch later than another, on a busy
    machine, is waited for)."""
    if (os.environ.get("JAX_PLATFORMS") or "").strip() in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    for name in ("jax_cpu_get_local_topology_timeout_minutes", "jax_cpu_get_global_topology_timeout_minutes"):
        jax.config.update(name, -(-timeout // 60))
    if timeout > 30 * 60 and "xla_cpu_collective_timeout_seconds" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_collective_timeout_seconds={timeout}"


_OPTIONS = {"debug": False, "timeout": DEFAULT_TIMEOUT, "collectives": False}


def connect_collectives():
    """Once JAX runs with its devices (after ``--devices``): one all-reduce over
    every device of the run, so the processes connect their collectives (gloo
    allows 30 s for that, fixed) while they are side by side, just after JAX's
    own start-up barrier, and not at the first epoch, which one process may
    reach minutes after another (loading data, compiling). A no-op in a
    single-process run and after the first call. Returns the device count."""
    import jax
    if len(_STARTED) == 0 or jax.process_count() == 1 or _OPTIONS["collectives"]:
        return len(jax.devices())
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("k",))
    ones = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("k")),
                                                  np.ones(len(jax.local_devices()), np.int32))
    sys.stdout.flush()
    stdout = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)   # gloo prints "[Gloo] Rank 0 is connected to 1 peer ranks ..." there
    try:
        count = int(jax.jit(lambda a: a.sum())(ones))
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
        os.close(devnull)
    _OPTIONS["collectives"] = True
    return count


def started():
    """``(process_id, num_processes)`` of this process's multi-process run, or None."""
    return _STARTED[0] if _STARTED else None


_STARTED = []


def is_main():
    """Whether this process prints and writes (process 0; every process of a single-process run)."""
    import jax
    return jax.process_index() == 0


def process_count():
    import jax
    return jax.process_count()


# --- the processes meet before JAX starts, and watch each other after --------------------

EXIT_PEER_ENDED = 75
_GO, _BYE, _NO, _STOP = "go", "bye", "no ", "stop "
_LINE_LIMIT = 1 << 16


def rendezvous(host, port, num_processes, process_id, timeout, agree=None):
    """Meet the other processes at ``host:port`` within ``timeout`` seconds
    (process 0 listens, the others connect and say who they are and what
    they were asked: ``agree``), then watch them: a process that ends without
    saying goodbye stops the others (``_peer_ended``). Raises
    ``DistributedError`` naming the port, the missing processes, a process id
    given twice, or the arguments that differ, in every process that took part."""
    deadline = time.monotonic() + timeout
    hello = {"id": process_id, "n": num_processes, "agree": agree or {}}
    if process_id == 0:
        conns = _gather(host, port, hello, deadline, timeout)
    else:
        conns = {0: _join(host, port, hello, deadline, timeout)}
    _watch(conns, process_id, num_processes)
    _end_at_once_on_errors(process_id, num_processes)


def disagreement(mine, theirs):
    """Why process ``theirs["id"]`` cannot join process 0 (``mine``): another
    ``--num-processes``, an id already taken, other settings; None when they agree."""
    n, peer = mine["n"], theirs.get("id")
    if theirs.get("n") != n:
        return (f"process {peer} was started with --num-processes {theirs.get('n')}, process 0 with {n}: "
                "give every process the same --num-processes")
    if not isinstance(peer, int) or not 0 <= peer < n:
        return f"process id {peer} is not one of 0..{n - 1}"
    differ = [_difference(k, theirs.get("agree", {}).get(k), v)
              for k, v in sorted(mine.get("agree", {}).items()) if theirs.get("agree", {}).get(k) != v]
    differ += [_difference(k, v, None) for k, v in sorted(theirs.get("agree", {}).items())
               if k not in mine.get("agree", {})]
    if differ:
        return (f"process {peer}'s arguments differ from process 0's: {'; '.join(differ)}. Start every process "
                "with the same arguments; only --process-id (and --coordinator-timeout, --data-dir, --devices) "
                "may differ")
    return None


def taken(peer, n):
    """The refusal of a second process with the id ``peer``."""
    return (f"process id {peer} is taken: two processes were started with --process-id {peer}; give each "
            f"process its own --process-id, 0 .. {n - 1}")


def _difference(name, theirs, mine):
    """"--epochs 3 vs 2" (the other process's value first), "--quick vs no --quick"."""
    def text(v):
        return " ".join(map(str, v)) if isinstance(v, list) else str(v)

    def shown(v):
        return f"no {name}" if v is None or v is False else name if v is True else f"{name} {text(v)}"
    if any(v is None or isinstance(v, bool) for v in (theirs, mine)):
        return f"{shown(theirs)} vs {shown(mine)}"
    return f"{name} {text(theirs)} vs {text(mine)}"


def _end_at_once_on_errors(process_id, num_processes):
    """An uncaught error in one process of the run (a failed collective when a
    peer died or was too slow, say) ends it at once with one paragraph, rather
    than in JAX's shutdown barrier, which would wait for the others and then
    abort. The traceback goes to a log file (to stderr with ``debug``)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        log = None if _OPTIONS["debug"] else _log_error(kind, value, tb, process_id)
        if log is None:
            previous(kind, value, tb)
        print(error_note(value, process_id, num_processes, log), file=sys.stderr, flush=True)
        os._exit(1)
    sys.excepthook = hook


def error_note(error, process_id, num_processes, log=None):
    """The paragraph an error that ends one process of the run prints."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first = first if len(first) <= 240 else first[:239] + "…"
    text = f"nndl-jax: process {process_id} of {num_processes} stopped on an error: {type(error).__name__}: {first}"
    if "gloo" in str(error).lower() and any(w in str(error) for w in ("DEADLINE_EXCEEDED", "Timed out", "timed out")):
        text += (" (another process did not reach the same collective operation in time: it stopped, is stuck, "
                 "or was given other arguments)")
    if log is not None:
        text += f". JAX's account of it is in {log} (--debug prints it here instead)"
    return (text + ". A run over several processes is all-or-nothing, so the others stop too. What was finished "
            "is saved: start every process again, with --resume, to continue from the last finished epoch.")


def _log_error(kind, value, tb, process_id):
    """Write the traceback to ``<cache>/logs/process-<id>-<pid>.log`` (else the
    temporary folder); its path, or None when neither can be written."""
    from nndl_jax.data import cache_dir
    text = "".join(traceback.format_exception(kind, value, tb))
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        path = folder / f"nndl-jax-process-{process_id}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n{text}")
            return path
        except OSError:
            continue
    return None


def _gather(host, port, hello, deadline, timeout):
    n = hello["n"]
    try:
        server = socket.create_server((host, port))
    except OSError as e:
        _refused_by_a_process_0(host, port, hello, deadline)
        raise DistributedError(f"process 0 cannot listen on the coordinator's address {host}:{port} "
                               f"({e.strerror or e}): the port is taken (by a run already under way, or another "
                               "program) or the address is not this machine's; pick a free port") from None
    conns = {}
    try:
        while len(conns) < n - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, n)) - set(conns))
                raise DistributedError(f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                                       f"of {n} did not arrive at {host}:{port} within {timeout} s; start every "
                                       "process with the same --coordinator and --num-processes (and check that "
                                       "they can reach this host)")
            server.settimeout(min(left, 1.0))
            conn, theirs = _next_hello(server, deadline)
            if conn is None:
                continue
            peer = theirs["id"]
            problem = taken(peer, n) if peer == 0 or peer in conns else disagreement(hello, theirs)
            if problem:
                _send(conn, _NO + json.dumps(problem))
                conn.close()
                raise DistributedError(problem)
            conns[peer] = conn
        for conn in conns.values():
            _send(conn, _GO)
    except BaseException as e:
        for conn in conns.values():   # the processes that arrived stop with process 0's message
            if isinstance(e, DistributedError):
                _send(conn, _NO + json.dumps(str(e)))
            conn.close()
        raise
    finally:
        server.close()
    return conns


def _next_hello(server, deadline):
    """``(connection, its hello)`` of the next process to arrive, or ``(None, None)``
    when none did within the server's timeout or what arrived is not one of ours
    (a port scanner, an older client: process 0 waits on for the others)."""
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return None, None
    conn.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        theirs = json.loads(_read_line(conn))
    except (OSError, ValueError):
        theirs = None
    if isinstance(theirs, dict) and "id" in theirs:
        return conn, theirs
    conn.close()
    return None, None


def _refused_by_a_process_0(host, port, hello, deadline):
    """When process 0 cannot listen: ask whoever listens there whether it is
    process 0 of this run; when it answers that this id is taken (or the
    arguments differ), raise that. Waits 10 s at most."""
    try:
        with socket.create_connection((host, port), timeout=max(0.1, min(10.0, deadline - time.monotonic()))) as c:
            c.sendall((json.dumps(hello) + "\n").encode())
            answer = _read_line(c)
    except (OSError, ValueError):
        return
    if answer.startswith(_NO):
        raise DistributedError(json.loads(answer[len(_NO):]))


def _join(host, port, hello, deadline, timeout):
    last, answered = None, False
    while time.monotonic() < deadline:
        try:
            conn = socket.create_connection((host, port), timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            answered = True
            conn.sendall((json.dumps(hello) + "\n").encode())
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            answer = _read_line(conn)
            if answer == _GO:
                conn.settimeout(None)
                return conn
            conn.close()
            if answer.startswith(_NO):
                raise DistributedError(json.loads(answer[len(_NO):]))
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.2)
    if answered:
        raise DistributedError(f"process {hello['id']} reached {host}:{port}, but no process 0 of a starting run "
                               f"answered there within {timeout} s: a run may already be running at that address "
                               f"(was --process-id {hello['id']} given twice?), or another program uses the port")
    raise DistributedError(f"process {hello['id']} found no coordinator at {host}:{port} within {timeout} s "
                           f"({last.strerror if isinstance(last, OSError) and last.strerror else last or 'no answer'}):"
                           " start process 0 with the same --coordinator, or check the address")


def _send(conn, line):
    try:
        conn.sendall((line + "\n").encode())
    except OSError:
        pass


def _read_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("the connection closed")
        data += chunk
        if len(data) > _LINE_LIMIT:
            raise ValueError("a line too long")
    return data.decode().strip()


_PEERS = {"conns": {}, "on_stop": None}


def on_peer_stop(callback):
    """``callback(peer, why, status)`` runs (in the watching thread) when another
    process of the run says it stops (Ctrl-C, SIGTERM): it should end this
    process too. Without one, this process prints a line and ends."""
    _PEERS["on_stop"] = callback


def tell_peers_stopping(why, status):
    """Tell the other processes that this one stops (``why``: "SIGTERM", ...;
    ``status``: its exit status); process 0 tells every process, the others
    tell process 0, which passes it on. A no-op in a single-process run."""
    for conn in list(_PEERS["conns"].values()):
        _send(conn, _STOP + json.dumps({"why": why, "status": status}))


def _watch(conns, process_id, num_processes):
    """A daemon thread that ends this process when a peer's connection closes
    before it said goodbye, or when a peer says it stops; at exit, this
    process says goodbye to its peers."""
    done = threading.Event()
    _PEERS["conns"] = dict(conns)

    def say_goodbye():
        done.set()
        for conn in conns.values():
            _send(conn, _BYE)
            conn.close()

    def watch():
        open_conns, pending = dict(conns), {peer: b"" for peer in conns}
        while open_conns and not done.is_set():
            ready, _, _ = select.select(list(open_conns.values()), [], [], 0.5)
            for conn in ready:
                peer = next(p for p, c in open_conns.items() if c is conn)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                pending[peer] += data
                *lines, pending[peer] = pending[peer].split(b"\n")
                for line in (x.decode(errors="replace") for x in lines):
                    if line == _BYE or done.is_set():
                        open_conns.pop(peer, None)
                    elif line.startswith(_STOP):
                        _peer_stopped(peer, json.loads(line[len(_STOP):]), process_id, num_processes)
                if not data and peer in open_conns and not done.is_set():
                    _peer_ended(peer, process_id, num_processes)

    atexit.register(say_goodbye)
    threading.Thread(target=watch, name="nndl-jax peers", daemon=True).start()


def _peer_stopped(peer, message, process_id, num_processes):
    """A peer said it stops: process 0 passes it on to the others; then this process stops too."""
    why, status = message.get("why", "stopped"), int(message.get("status", EXIT_PEER_ENDED))
    if process_id == 0:
        for other, conn in _PEERS["conns"].items():
            if other != peer:
                _send(conn, _STOP + json.dumps({"why": f"{why} in process {peer}", "status": status}))
    if _PEERS["on_stop"] is not None:
        _PEERS["on_stop"](peer, why, status)
    print(f"nndl-jax: process {peer} of {num_processes} stopped ({why}), so process {process_id} stops too.",
          file=sys.stderr, flush=True)
    os._exit(status)


def _peer_ended(peer, process_id, num_processes):
    print(f"nndl-jax: process {peer} of {num_processes} ended before the run did, so process {process_id} stops "
          "too (a run over several processes is all-or-nothing). What was finished is saved: start every "
          "process again, with --resume, to continue from the last finished epoch.", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_ENDED)
