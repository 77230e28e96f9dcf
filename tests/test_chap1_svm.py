"""Chapter 1's SVM baseline (experiments.chap1.svm_baseline): it shows it is alive
while libsvm works, and its kernel cache changes its speed, never its answer."""
import time

import numpy as np
import pytest

from experiments import chap1
from nndl_jax.data import Dataset

svm = pytest.importorskip("sklearn.svm")  # installed by the [test] extra; CI has it


def test_still_running_prints_a_line_every_period_while_the_block_blocks(capsys):
    with chap1.still_running("fitting on 9 images", expected=90.0, every=0.05):
        time.sleep(0.32)  # like libsvm: the GIL is released while it works
    lines = capsys.readouterr().out.splitlines()
    assert 4 <= len(lines) <= 7, lines
    assert all(ln.startswith("  SVM: fitting on 9 images, ") and ln.endswith(
        "so far (about 1 min 30 s expected on a quiet 2-core CPU)") for ln in lines)
    with chap1.still_running("quick", expected=1.0, every=10.0):
        pass
    assert capsys.readouterr().out == ""  # a block shorter than the period prints nothing


def test_the_estimate_grows_with_the_data_and_matches_the_measured_full_run():
    assert chap1.svm_seconds(50000, 10000) == (chap1.SVM_SECONDS_50K["fit"], chap1.SVM_SECONDS_50K["predict"])
    fit, predict = chap1.svm_seconds(25000, 5000)
    assert fit == pytest.approx(chap1.SVM_SECONDS_50K["fit"] / 4)
    assert predict == pytest.approx(chap1.SVM_SECONDS_50K["predict"] * 0.5 ** 0.8 * 0.5)


def test_the_kernel_cache_changes_the_speed_not_the_answer(mnist, capsys):
    """The baseline's larger kernel cache is only a speed-up: an SVC with a 1 MB cache,
    which holds a few hundred kernel rows and recomputes the rest again and again, gets
    the same test images right. (On the full data: 9434 / 10000 with either cache.)"""
    training, test = mnist.training, Dataset(mnist.test.x[:500], mnist.test.y[:500])
    correct = chap1.svm_baseline(training, test, 1500)
    small_cache = svm.SVC(gamma="auto", cache_size=1).fit(training.x[:1500], training.y[:1500])
    assert correct == int(np.sum(small_cache.predict(test.x) == test.y))
    out = capsys.readouterr().out
    assert "SVM: fitting SVC(gamma='auto') on 1500 training images (about " in out
    assert f"SVM: {correct} / 500 correct" in out
