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
is refused at once), the others connect, and a process that has not arrived
within ``timeout`` seconds is named in the error every process prints. Each
process then keeps its connection to process 0 open as a watchdog: when a
process ends (it finished, it crashed, it was killed), its connection closes,
and a process that is still running and did not hear it say goodbye stops
within a second with a message naming it (JAX's own heartbeats, bounded by
the same ``timeout``, remain for a peer that hangs without closing its
connection). What was finished stays saved (finished rows in results.json,
the last epoch's checkpoint): start every process again with ``--resume``.
"""
import atexit
import os
import select
import socket
import sys
import threading
import time

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
    if out["coordinator"] is not None and ":" not in str(out["coordinator"]):
        raise DistributedError(f"the coordinator must be HOST:PORT (process 0's address), got {out['coordinator']!r}")
    return out["coordinator"], out["num_processes"], out["process_id"]


def wanted(coordinator=None, num_processes=None, process_id=None, environ=None):
    """Whether a multi-process run is asked for: by the arguments or the environment."""
    c, n, _ = settings(coordinator, num_processes, process_id, environ)
    return c is not None or (n is not None and n > 1)


def initialize(coordinator=None, num_processes=None, process_id=None, *, timeout=DEFAULT_TIMEOUT,
               auto=False):
    """Start ``jax.distributed`` for this process (call it first, before any
    other JAX call). ``auto``: with no coordinator given, let JAX detect a
    cluster it knows (Slurm, TPU pods, Open MPI). ``timeout`` bounds how long
    this process waits for the others to arrive and how long a dead peer goes
    unnoticed (JAX's default is 300 s). Returns ``(process_id, num_processes)``;
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
    if coordinator is not None:
        host, port = str(coordinator).rsplit(":", 1)
        rendezvous(host, int(port), num_processes, process_id, timeout)
    import jax
    if (os.environ.get("JAX_PLATFORMS") or "").strip() in ("", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
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
    return _STARTED[0]


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
_GO, _BYE = b"go\n", b"bye\n"


def rendezvous(host, port, num_processes, process_id, timeout):
    """Meet the other processes at ``host:port`` within ``timeout`` seconds
    (process 0 listens, the others connect), then watch them: a process that
    ends without saying goodbye stops the others (``_peer_ended``). Raises
    ``DistributedError`` naming the port or the missing processes."""
    deadline = time.monotonic() + timeout
    if process_id == 0:
        conns = _gather(host, port, num_processes, deadline, timeout)
    else:
        conns = {0: _join(host, port, process_id, deadline, timeout)}
    _watch(conns, process_id, num_processes)
    _end_at_once_on_errors(process_id, num_processes)


def _end_at_once_on_errors(process_id, num_processes):
    """An uncaught error in one process of the run (a failed collective when a
    peer died, say) ends it at once with its traceback and a note, rather than
    in JAX's shutdown barrier, which would wait for the others and then abort."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        print(f"nndl-jax: process {process_id} of {num_processes} stops on this error; a run over several "
              "processes is all-or-nothing, so the others stop too. What was finished is saved: start every "
              "process again, with --resume, to continue from the last finished epoch.", file=sys.stderr, flush=True)
        os._exit(1)
    sys.excepthook = hook


def _gather(host, port, n, deadline, timeout):
    try:
        server = socket.create_server((host, port))
    except OSError as e:
        raise DistributedError(f"process 0 cannot listen on the coordinator's address {host}:{port} "
                               f"({e.strerror or e}): the port is taken or the address is not this machine's; "
                               "pick a free port") from None
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
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                peer = int(_read_line(conn))
            except (OSError, ValueError):
                conn.close()
                continue
            if not 0 < peer < n or peer in conns:
                conn.close()
                raise DistributedError(f"a second process says it is process {peer} of {n}: give each process "
                                       "its own --process-id")
            conns[peer] = conn
        for conn in conns.values():
            conn.sendall(_GO)
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise
    finally:
        server.close()
    return conns


def _join(host, port, process_id, deadline, timeout):
    last = None
    while time.monotonic() < deadline:
        try:
            conn = socket.create_connection((host, port), timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            conn.sendall(f"{process_id}\n".encode())
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            if _read_line(conn) + "\n" == _GO.decode():
                conn.settimeout(None)
                return conn
            conn.close()
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise DistributedError(f"process {process_id} found no coordinator at {host}:{port} within {timeout} s "
                           f"({last.strerror if isinstance(last, OSError) and last.strerror else last or 'no answer'}):"
                           " start process 0 with the same --coordinator, or check the address")


def _read_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            raise OSError("the connection closed")
        data += chunk
    return data.decode().strip()


def _watch(conns, process_id, num_processes):
    """A daemon thread that ends this process when a peer's connection closes
    before it said goodbye; at exit, this process says goodbye to its peers."""
    done = threading.Event()

    def say_goodbye():
        done.set()
        for conn in conns.values():
            try:
                conn.sendall(_BYE)
                conn.close()
            except OSError:
                pass

    def watch():
        open_conns = dict(conns)
        while open_conns and not done.is_set():
            ready, _, _ = select.select(list(open_conns.values()), [], [], 0.5)
            for conn in ready:
                peer = next(p for p, c in open_conns.items() if c is conn)
                try:
                    data = conn.recv(64)
                except OSError:
                    data = b""
                if data.startswith(_BYE) or done.is_set():
                    open_conns.pop(peer)
                elif not data:
                    _peer_ended(peer, process_id, num_processes)

    atexit.register(say_goodbye)
    threading.Thread(target=watch, name="nndl-jax peers", daemon=True).start()


def _peer_ended(peer, process_id, num_processes):
    print(f"nndl-jax: process {peer} of {num_processes} ended before the run did, so process {process_id} stops "
          "too (a run over several processes is all-or-nothing). What was finished is saved: start every "
          "process again, with --resume, to continue from the last finished epoch.", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_ENDED)
