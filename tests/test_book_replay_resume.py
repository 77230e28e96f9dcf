"""A book replay is an ordinary job of chapter 3's row driver: stopped with
Ctrl-C after its first progress line and continued with ``--resume``, it says
it resumed and records the very curve of an uninterrupted run (issue 30).

Each command runs as a subprocess (the SIGINT handling is the command's own);
every wait is bounded by a timeout, not by how fast the machine is, and a
process left running when the test fails is killed by its pid.
"""
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nndl_jax import book_random

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 600      # seconds for one command on a busy machine (it takes about 30 s alone)
SEED = str(book_random.BOOK_SEED)


def replay_command(out, *more):
    """The smallest replay: --quick (the first 3 epochs of fig/overfitting.py's λ 5 run)."""
    return [sys.executable, "-m", "experiments.chap3", "--quick", "--only", "3.7", "--book-seed", SEED,
            "--out", str(out), *more]


class Command:
    """A command whose merged stdout and stderr are read line by line on a thread,
    so that every wait for a line or for the end has a timeout."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines, self.seen = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, deadline):
        try:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            pytest.fail(f"no output within the timeout; so far:\n{self.text()[-3000:]}")
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for_line(self, pattern, timeout=RUN_TIMEOUT):
        """The first line matching ``pattern``; fails if the command ends or the timeout passes first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(deadline)
            if line is None:
                pytest.fail(f"the command ended before a line matching {pattern!r}:\n{self.text()[-3000:]}")
            if re.search(pattern, line):
                return line

    def finish(self, timeout=RUN_TIMEOUT):
        """Its exit status, once its output has ended (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 0.01))

    def text(self):
        return "".join(self.seen)

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


@pytest.fixture
def commands(tmp_path, mnist_dir):
    """Start commands with one private cache (checkpoints, compiled programs); kill any left running."""
    env = dict(os.environ, NNDL_JAX_DATA=str(mnist_dir), XDG_CACHE_HOME=str(tmp_path / "cache"), MPLBACKEND="Agg")
    started = []

    def start(argv):
        started.append(Command(argv, env))
        return started[-1]

    yield start
    for command in started:
        command.kill()


def replayed_row(out):
    (row,) = json.loads((Path(out) / "results.json").read_text())["rows"]
    return row


def test_a_replay_stopped_by_ctrl_c_resumes_to_the_uninterrupted_curve(tmp_path, commands):
    whole = commands(replay_command(tmp_path / "whole"))
    assert whole.finish() == 0, whole.text()[-3000:]

    stopped = commands(replay_command(tmp_path / "stopped"))
    stopped.wait_for_line(r"\[3\.7@book\] Epoch 0 \(1 of 3\)")
    stopped.proc.send_signal(signal.SIGINT)
    assert stopped.finish() == 130, stopped.text()[-3000:]
    note = stopped.text()
    assert "stopped (Ctrl-C)" in note and "the unfinished row's last finished epoch is saved in" in note
    assert not (tmp_path / "stopped" / "results.json").exists()   # nothing recorded half-way
    checkpoints = tmp_path / "cache" / "nndl-jax" / "checkpoints"
    assert [p.parent.name for p in checkpoints.rglob("state.npz")] == ["3.7@book"]
    offered = shlex.split(note.split("resume with: ", 1)[1].splitlines()[0])
    assert offered == ["python"] + replay_command(tmp_path / "stopped", "--resume")[1:]

    resumed = commands([sys.executable, *offered[1:]])             # the command the note offers
    line = resumed.wait_for_line(r"\[3\.7@book\] resumed from ")
    done = int(re.search(r"(\d+) of 3 epochs done", line).group(1))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert 1 <= done < 3
    epochs_shown = [int(e) for e in re.findall(r"\[3\.7@book\] Epoch \d \((\d) of 3\)", resumed.text())]
    assert epochs_shown and min(epochs_shown) == done + 1           # the saved epochs were not trained again

    got, want = replayed_row(tmp_path / "stopped"), replayed_row(tmp_path / "whole")
    assert got["id"] == want["id"] == "3.7@book" and got["book_seed"] == int(SEED) and got["x64"] is True
    assert got["curves"] == want["curves"] and len(got["curves"]["evaluation_accuracy"]) == 3
    assert got["replay"] == want["replay"] and got["measured"] == want["measured"]
    assert not list(checkpoints.rglob("state.npz"))                 # removed once the row is recorded
