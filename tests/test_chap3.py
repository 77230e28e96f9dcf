"""experiments.chap3 --quick: every row runs through the real code and the
results JSON says what it should."""
import json

from experiments import chap3


def test_chap3_quick_writes_every_row(tmp_path, mnist_dir):
    chap3.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "2"])
    out = json.loads((tmp_path / "results.json").read_text())
    assert out["chapter"] == "chap3" and out["quick"] is True
    assert out["seeds"] == [12345678, 12345679]
    ids = [r["id"] for r in out["rows"]]
    for spec in chap3.ROWS:  # every row of the table produced at least one line
        assert any(i == spec["id"] or i.startswith(spec["id"]) for i in ids), spec["id"]
    assert "3.5" in ids and "3.14@100" in ids and "3.14@500" in ids and "3.15@300" in ids
    by_id = {r["id"]: r for r in out["rows"]}
    for rid in ("3.2", "3.4", "3.10a", "3.14@100", "3.17d"):
        m = by_id[rid]["measured"]
        assert len(m["runs"]) == 2 and all(0.0 <= v <= 100.0 for v in m["runs"])
        assert m["best"] == max(m["runs"])
    assert by_id["3.2"]["book"] == 95.49 and by_id["3.2"]["set"] == "test"
    assert by_id["3.8"]["set"] == "validation"
    # the quick runs learn something: better than chance on 500 test images
    assert by_id["3.2"]["measured"]["mean"] > 30.0
    # multiple η: three curves of training cost, one per η, from one program
    eta_rows = [by_id[f"3.18{c}"] for c in "abc"]
    assert all(len(r["curve"]) == 3 and len(r["curve"][0]) == 2 for r in eta_rows)
    # the overfitting row records the four monitoring curves
    assert set(by_id["3.4"]["curves"]) == {"evaluation_cost", "evaluation_accuracy",
                                           "training_cost", "training_accuracy"}
    # early stopping / schedule record how long they ran
    assert all(1 <= e <= 12 for e in by_id["3.20"]["stopped_after_epochs"])
    for name in ("overfitting_evaluation_accuracy", "weight_initialization_30", "multiple_eta",
                 "more_data_log", "more_data_svm_linear"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_chap3_only_filters_rows(tmp_path, mnist_dir):
    chap3.main(["--quick", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--seeds", "1",
                "--only", "3.17"])
    out = json.loads((tmp_path / "results.json").read_text())
    assert [r["id"] for r in out["rows"]] == ["3.17a", "3.17b", "3.17c", "3.17d"]
