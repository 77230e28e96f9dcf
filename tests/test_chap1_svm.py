"""Chapter 1's SVM baseline (experiments.chap1.svm_baseline): it shows it is alive
while libsvm works, Ctrl-C stops it at once, and predicting on every core changes
its speed, never its answer."""
import signal
import threading
import time

import numpy as np
import pytest

from experiments import chap1
from nndl_jax.data import Dataset

svm = pytest.importorskip("sklearn.svm")  # installed by the [test] extra; CI has it


def test_progress_is_printed_every_period_while_the_work_runs_and_its_result_returned(capsys):
    def work():
        time.sleep(0.32)  # like libsvm: the GIL is released while it works
        return "fitted"

    assert chap1.while_printing_progress("fitting on 9 images", 90.0, work, every=0.05) == "fitted"
    lines = capsys.readouterr().out.splitlines()
    assert 4 <= len(lines) <= 7, lines
    assert all(ln.startswith("  SVM: fitting on 9 images, ") and ln.endswith(
        "so far (about 1 min 30 s expected on a 2-core CPU)") for ln in lines)
    assert chap1.while_printing_progress("quick", 1.0, lambda: 3, every=10.0) == 3
    assert capsys.readouterr().out == ""  # work shorter than the period prints nothing


def test_an_error_in_the_work_reaches_the_caller():
    def work():
        raise MemoryError("kernel cache (test)")

    with pytest.raises(MemoryError, match="kernel cache"):
        chap1.while_printing_progress("fitting", 1.0, work, every=0.05)


def test_ctrl_c_stops_the_wait_at_once_while_the_work_goes_on_in_c():
    """The main thread only waits, so SIGINT raises KeyboardInterrupt within one
    period, not when the (here 30 s) work would return."""
    main = threading.get_ident()
    threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT)).start()
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        chap1.while_printing_progress("fitting", 30.0, lambda: time.sleep(30), every=0.05)
    assert time.time() - t0 < 2.0


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
