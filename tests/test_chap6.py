"""experiments.chap6 in quick mode, through the real layers and train.fit.

The whole quick table (14 rows, 12 distinct compiled networks) takes about two
minutes of CPU, so this test runs a representative subset: the shallow net,
the conv-only net and the dropout ensemble (6.11 + 6.12, five nets voting on
expanded data), which also draws all three figures."""
import json

import numpy as np
import pytest

from experiments import chap6, session
from nndl_jax import data, network3


def test_rows_table_matches_the_book():
    ids = [r["id"] for r in chap6.ROWS]
    assert ids[0] == "6.1" and ids[-1] == "6.13" and len(set(ids)) == len(ids)
    book = {r["id"]: r["book"] for r in chap6.ROWS}
    assert book["6.2"] == 98.78 and book["6.11"] == 99.60 and book["6.12"] == 99.67
    assert book["6.13"] == {"conv": 520, "fc": 23550, "ratio": 40}
    for r in chap6.ROWS:
        if r["arch"] == "counts":  # 6.13 trains nothing
            continue
        layers = chap6.architecture(r["arch"], r["activation"], r["n"])   # every architecture builds
        assert layers[-1].n_out == 10


def test_quick_main_writes_results(tmp_path, mnist_dir):
    chap6.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir),
                      "--only", "6.1", "6.3", "6.11", "6.12", "6.13", "--seeds", "2"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["seeds"] == [12345678, 12345679]
    assert results["complete"] is True
    counts = {r["id"]: r for r in results["rows"] if r["id"].startswith("6.13")}
    check_parameter_counts(counts)
    assert not any("SHORTENED" in r["note"] for r in counts.values())   # exact counts, the same in --quick
    nets = [r for r in results["rows"] if r["id"].startswith("6.11@")]
    rows = {r["id"]: r for r in results["rows"] if not r["id"].startswith(("6.13", "6.11@"))}
    assert set(rows) == {"6.1", "6.3", "6.11", "6.12"}
    # each dropout net is a row of its own, and 6.11 is made of them
    assert [n["id"] for n in nets] == [f"6.11@{s}" for s in range(12345678, 12345683)] == rows["6.11"]["nets"]
    assert rows["6.11"]["measured"]["runs"] == [n["measured"] for n in nets]
    assert all(n["book"] is None and n["trained_with"] == rows["6.11"]["seeds"] for n in nets)
    assert len(rows["6.1"]["measured"]["runs"]) == 2
    assert len(rows["6.11"]["measured"]["runs"]) == 5 and rows["6.12"]["seeds"] == list(range(12345678, 12345683))
    for r in rows.values():
        assert "SHORTENED" in r["note"] and r["epochs"] == 1
        m = r["measured"]
        vals = m["runs"] if isinstance(m, dict) else [m]
        assert all(0.0 <= v <= 100.0 for v in vals)
    assert rows["6.11"]["train_size"] == 5 * results["settings"]["train_size"]  # expanded
    assert rows["6.12"]["errors"] == pytest.approx(
        results["settings"]["eval_size"] * (1 - rows["6.12"]["measured"] / 100))
    # the vote recomputed from the recorded per-net test predictions, without the weights
    test_y = data.load_mnist(mnist_dir).test.y[:results["settings"]["eval_size"]]
    assert [len(p) for p in rows["6.12"]["test_predictions"]] == [len(test_y)] * 5
    assert rows["6.12"]["test_predictions"] == [n["test_predictions"] for n in nets]
    vote = chap6.recorded_vote(rows["6.12"])
    assert int(np.sum(vote != test_y)) == rows["6.12"]["errors"]
    assert 100 * float(np.mean(vote == test_y)) == pytest.approx(rows["6.12"]["measured"])
    for name in ("ensemble_errors.png", "filters_6.3_layer_0.png", "filters_6.11_layer_0.png",
                 "filters_6.11_layer_1.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "filters_6.1_layer_0.png").exists()    # the shallow net has no filters
    assert not (tmp_path / "filters_6.12_layer_0.png").exists()   # 6.12 votes with 6.11's nets


def test_ensemble_trained_in_parts_is_the_ensemble_trained_at_once(tmp_path, mnist_dir, capsys):
    """6.11's five nets trained as --nets 3 4, then --nets 0 1 2 in a later
    command into the same --out, give rows 6.11 and 6.12 only once all five
    are recorded, and the very nets (same test predictions, bit for bit) and
    vote of one command training all five."""
    common = ["--quick", "--data-dir", str(mnist_dir), "--only", "6.11", "6.12"]
    parts, whole = tmp_path / "parts", tmp_path / "whole"
    chap6.main(common + ["--out", str(parts), "--nets", "3", "4"])
    first = {r["id"] for r in json.loads((parts / "results.json").read_text())["rows"]}
    assert first == {"6.11@12345681", "6.11@12345682"}   # no 6.11 / 6.12 yet: 2 of 5 nets
    assert "2 of the ensemble's 5 nets are recorded" in capsys.readouterr().out
    chap6.main(common + ["--out", str(parts), "--nets", "0", "1", "2", "4", "--resume"])
    assert "nets of seeds 12345682 already in" in capsys.readouterr().out   # recorded: not retrained
    chap6.main(common + ["--out", str(whole)])
    got, want = ({r["id"]: r for r in json.loads((d / "results.json").read_text())["rows"]} for d in (parts, whole))
    assert set(got) == set(want) == {"6.11", "6.12"} | {f"6.11@{s}" for s in range(12345678, 12345683)}
    assert got["6.12"]["test_predictions"] == want["6.12"]["test_predictions"]
    assert got["6.12"]["measured"] == want["6.12"]["measured"] and got["6.12"]["errors"] == want["6.12"]["errors"]
    assert got["6.11"]["measured"] == want["6.11"]["measured"]
    assert got["6.11@12345681"]["trained_with"] == [12345681, 12345682] and got["6.11"]["seconds"] > 0
    with pytest.raises(session.Refusal, match="the ensemble has nets 0 to 4"):
        chap6.main(common + ["--out", str(tmp_path / "bad"), "--nets", "5"])


def test_devices_below_1_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        chap6.main(["--quick", "--out", str(tmp_path), "--devices", "0"])
    assert e.value.code == 2 and "--devices: 0: must be at least 1" in capsys.readouterr().err


def check_parameter_counts(rows):
    """6.13 counts the leaves of initialized params; the expected numbers here
    are the book's arithmetic, (inputs + 1) × outputs per layer, conv maps
    sharing one 5×5 filter and one bias each."""
    assert rows["6.13a"]["measured"] == 520 == 20 * (5 * 5 + 1)          # the book's 520
    assert rows["6.13b"]["measured"] == 23550 == 784 * 30 + 30           # the book's 23,550
    assert rows["6.13c"]["measured"] == pytest.approx(23550 / 520) and rows["6.13c"]["measured"] > 40
    conv1, conv2 = 20 * (1 * 25 + 1), 40 * (20 * 25 + 1)
    expected = {"6.1": 785 * 100 + 101 * 10, "6.2": conv1 + 2881 * 100 + 101 * 10, "6.3": conv1 + 2881 * 10,
                "6.4": conv1 + conv2 + 641 * 100 + 101 * 10,
                "6.10b": conv1 + conv2 + 641 * 1000 + 1001 * 1000 + 1001 * 10}
    for row_id, n in expected.items():
        r = rows[f"6.13@{row_id}"]
        assert r["measured"] == n and sum(r["per_layer"]) == n, (row_id, r["per_layer"])
    assert rows["6.13@6.4"]["rows"] == ["6.4", "6.5", "6.6", "6.7"]   # same params, other settings
    assert rows["6.13@6.11"]["measured"] == rows["6.13@6.10b"]["measured"]   # dropout adds no params


def test_a_run_cut_off_keeps_its_finished_rows_and_the_rows_of_earlier_runs(tmp_path, mnist_dir,
                                                                             monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    """Rows are merged into results.json as they finish; a run that dies in its
    second row keeps the first, and the rows of an earlier run survive."""
    earlier = {"chapter": "chap6", "quick": True, "curves": {"6.4": "earlier curves"},
               "rows": [{"id": "6.4", "experiment": "an earlier run", "book": 99.06, "unit": "%",
                         "measured": 12.5, "quick": True, "run": "earlier"}]}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    real, calls = network3.train_many, []

    def dies_on_the_second_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("cut off")
        return real(*args, **kwargs)

    monkeypatch.setattr(network3, "train_many", dies_on_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        chap6.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--only", "6.1", "6.3"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is False and [r["id"] for r in results["rows"]] == ["6.1", "6.4"]
    assert results["rows"][1] == earlier["rows"][0]
    assert set(results["curves"]) == {"6.1", "6.4"} and results["curves"]["6.4"] == "earlier curves"
    assert not (tmp_path / "results.partial.json").exists()
    assert not (cache / "nndl-jax" / "checkpoints").exists()    # 6.3 had saved nothing: no folder left


def test_a_row_interrupted_after_epoch_1_of_3_resumes_to_the_uninterrupted_result(tmp_path, mnist_dir,
                                                                                monkeypatch):
    """6.3 (2 seeds, 3 epochs, quick data) run whole, and run again into another
    folder, interrupted after its second epoch: rerunning without --resume is
    refused (the saved epochs are not thrown away), --resume runs only the
    last epoch, and every per-epoch accuracy equals the uninterrupted run's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["--quick", "--only", "6.3", "--seeds", "2", "--epochs", "3", "--data-dir", str(mnist_dir)]
    chap6.main(argv + ["--out", str(tmp_path / "whole")])

    real_progress, seen = chap6._progress, []

    def interrupted_after_epoch_1(*args, **kw):
        show = real_progress(*args, **kw)

        def on_epoch(e, record):
            seen.append(e)
            show(e, record)
            if e == 1:
                raise KeyboardInterrupt("killed after epoch 1")
        return on_epoch

    monkeypatch.setattr(chap6, "_progress", interrupted_after_epoch_1)
    out = ["--out", str(tmp_path / "cut")]
    with pytest.raises(KeyboardInterrupt):
        chap6.main(argv + out)
    with pytest.raises(session.Refusal, match="6.3.*--resume"):
        chap6.main(argv + out)
    seen.clear()
    chap6.main(argv + out + ["--resume"])
    assert seen == [2]
    whole, cut = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    assert whole["curves"]["6.3"] == cut["curves"]["6.3"]
    assert whole["rows"][0]["measured"] == cut["rows"][0]["measured"]
    assert not list((tmp_path / "cache").rglob("*.npz"))        # the finished row's checkpoint is gone


def test_resume_skips_rows_already_recorded_with_the_same_settings(tmp_path, mnist_dir, capsys):
    """A queue of rows (--only 6.3 6.4) resumed after 6.3 finished trains only 6.4;
    other settings (here --seeds) or no --resume train the row again."""
    base = ["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "1"]
    chap6.main([*base, "--only", "6.3"])
    first = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    capsys.readouterr()
    chap6.main([*base, "--only", "6.3", "6.4", "--resume"])
    out = capsys.readouterr().out
    assert "6.3: already in" in out and "6.4: Two conv" in out
    rows = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["6.3"] == first["6.3"] and "6.4" in rows          # 6.3 kept as it was, stamps and all
    chap6.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "2",
                "--only", "6.3", "--resume"])
    again = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert again["6.3"]["seeds"] == [12345678, 12345679] and again["6.3"]["run"] != first["6.3"]["run"]
