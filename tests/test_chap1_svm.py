"""Chapter 1's SVM baseline (experiments.chap1.svm_baseline): it shows it is alive
while libsvm works, in a bounded number of lines, Ctrl-C stops it at once, and predicting on every core changes
its speed, never its answer."""
import signal
import sys
import threading
import time

import numpy as np
import pytest

from experiments import chap1
from nndl_jax.data import Dataset

svm = pytest.importorskip("sklearn.svm")  # installed by the [test] extra; CI has it


def test_progress_is_said_after_each_wait_while_the_work_runs_and_its_result_returned():
    """The work goes on until three lines have been said, so the count does not
    depend on how fast the machine is (no sleep races a period)."""
    lines, three_said = [], threading.Event()

    def say(line):
        lines.append(line)
        if len(lines) == 3:
            three_said.set()

    def work():
        assert three_said.wait(timeout=120), "the progress lines never came"
        return "fitted"

    assert chap1.while_printing_progress("fitting on 9 images", 90.0, work, every=0.01, say=say) == "fitted"
    assert len(lines) >= 3, lines
    assert all(ln.startswith("  SVM: fitting on 9 images, ") and ln.endswith(
        "so far (about 1 min 30 s expected on a 2-core CPU)") for ln in lines), lines


def test_work_that_returns_before_the_first_wait_ends_says_nothing():
    said = []
    assert chap1.while_printing_progress("quick", 1.0, lambda: 3, every=600.0, say=said.append) == 3
    assert said == []


def test_progress_lines_come_soon_then_less_and_less_often_never_more_than_the_cap_apart():
    """Bounded output: a 50-minute fit says how far it is in at most 20 lines, a
    stalled 30 s wait at a 0.05 s period in at most 20 (not 600)."""
    def lines_within(seconds, every):
        waits, waited = chap1.progress_waits(every), 0.0
        count = 0
        while (waited := waited + next(waits)) <= seconds:
            count += 1
        return count

    waits = chap1.progress_waits(20.0)
    first = [next(waits) for _ in range(40)]
    assert first[:2] == [20.0, 20.0]
    assert all(b >= a for a, b in zip(first, first[1:]))  # never more often than before
    assert max(first) == chap1.PROGRESS_CAP
    assert lines_within(50 * 60, 20.0) <= 20
    assert lines_within(30.0, 0.05) <= 20
    assert lines_within(3 * 3600, 20.0) <= 3 * 3600 / chap1.PROGRESS_CAP + 10


def test_an_error_in_the_work_reaches_the_caller():
    def work():
        raise MemoryError("kernel cache (test)")

    with pytest.raises(MemoryError, match="kernel cache"):
        chap1.while_printing_progress("fitting", 1.0, work, every=0.05)


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test, as a command typed at a terminal
    has it: a test run started in the background (``pytest &`` in a script) or
    under ``nohup`` inherits SIGINT ignored, and then no Ctrl-C is delivered."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def waiting_in_join(thread_id, timeout=120.0):
    """Whether the thread ``thread_id`` gets to wait in a ``Thread.join`` within
    ``timeout`` seconds (a state it reaches, whatever the machine's speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread_id)
        while frame is not None:
            if frame.f_code.co_name == "join":
                return True
            frame = frame.f_back
        time.sleep(0.001)
    return False


def test_ctrl_c_stops_the_wait_at_once_while_the_work_goes_on_in_c(ctrl_c_raises):
    """The main thread only waits, so SIGINT raises KeyboardInterrupt in the
    middle of a wait (here an hour long) while the work still runs: the work
    sends the signal once the main thread waits, then blocks until the test has
    seen the interrupt."""
    main, interrupted, work_running = threading.get_ident(), threading.Event(), threading.Event()

    def work():
        work_running.set()
        assert waiting_in_join(main), "the main thread never waited for the work"
        signal.pthread_kill(main, signal.SIGINT)
        interrupted.wait(timeout=120)  # bounded: a broken wait ends, and the test fails, in 2 min

    said = []
    try:
        with pytest.raises(KeyboardInterrupt):
            chap1.while_printing_progress("fitting", 30.0, work, every=3600.0, say=said.append)
        assert work_running.is_set() and not interrupted.is_set()  # the work had not returned
    finally:
        interrupted.set()
    assert said == []  # interrupted in the first wait, not at its end


def test_the_estimate_grows_with_the_data_and_matches_the_measured_full_run():
    assert chap1.svm_seconds(50000, 10000) == (chap1.SVM_SECONDS_50K["fit"], chap1.SVM_SECONDS_50K["predict"])
    fit, predict = chap1.svm_seconds(25000, 5000)
    assert fit == pytest.approx(chap1.SVM_SECONDS_50K["fit"] / 4)
    assert predict == pytest.approx(chap1.SVM_SECONDS_50K["predict"] * 0.5 ** 0.8 * 0.5)


def test_the_baseline_gives_the_books_svc_answer_with_prediction_over_every_core(mnist, capsys, monkeypatch):
    """Prediction split over threads is only a speed-up: the book's SVC() predicting
    all at once gets the same test images right, image for image."""
    training, test = mnist.training, Dataset(mnist.test.x[:500], mnist.test.y[:500])
    book = svm.SVC(gamma="auto").fit(training.x[:1500], training.y[:1500])
    monkeypatch.setattr(chap1.os, "cpu_count", lambda: 3)
    np.testing.assert_array_equal(chap1.predict_on_every_core(book, test.x), book.predict(test.x))
    correct = chap1.svm_baseline(training, test, 1500)
    assert correct == int(np.sum(book.predict(test.x) == test.y))
    out = capsys.readouterr().out
    assert "SVM: fitting SVC(gamma='auto') on 1500 training images (about " in out
    assert f"SVM: {correct} / 500 correct" in out


def test_an_error_in_a_prediction_thread_reaches_the_caller():
    class Broken:
        def predict(self, x):
            raise ValueError(f"{len(x)} images of the wrong width (test)")

    with pytest.raises(ValueError, match="wrong width"):
        chap1.predict_on_every_core(Broken(), np.zeros((4, 3)))
