"""Chapter 3's rows as units of work (issue 30, item 1): a row's seeds trained
in two parts (``--part 1/2``, ``--part 2/2``), each part recording only its
seed's unit (``3.4@<seed>``), and ``nndl-jax merge`` composing the row and
redrawing its figures from the merged rows, as one unsplit run makes them."""
import numpy as np
import pytest

from experiments import chap3, merge, parts, report, store

SEEDS = [12345678, 12345679]
HOW = {"run", "finished", "seconds", "earlier_seconds", "trained_with", "devices"}   # when and how fast, not what


def less_how(record):
    return {k: v for k, v in record.items() if k not in HOW}


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved through ``report.save``: {path: [(label, y values) of each line]}."""
    seen, real = {}, report.save

    def save(fig, path):
        seen[str(path)] = [(line.get_label(), line.get_ydata().tolist()) for ax in fig.axes for line in ax.lines]
        return real(fig, path)

    monkeypatch.setattr(report, "save", save)
    return seen


def test_a_rows_seeds_in_two_parts_merge_to_the_unsplit_row_and_figures(tmp_path, mnist_dir, monkeypatch, drawn):
    """Row 3.4 (the overfitting curves) with two seeds: part 1/2 trains seed 12345678, part 2/2 seed
    12345679, neither records the row nor draws its figures; merged, row 3.4 (mean, sd, the per-seed
    peaks, epochs and curves, its note) equals one unsplit run's, and merge redraws the four
    overfitting figures from it with every seed's curve, as the unsplit run drew them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    command = ["--quick", "--only", "3.4", "--seeds", "2", "--data-dir", str(mnist_dir)]
    for i, seed in enumerate(SEEDS, 1):
        chap3.main(command + ["--part", f"{i}/2", "--out", str(tmp_path / f"part{i}")])
        part = store.read_results(tmp_path / f"part{i}")
        assert part["rows"] == [] and list(part["units"]) == [f"3.4@{seed}"]   # its seed alone
        assert not list((tmp_path / f"part{i}").glob("*.png"))                # no row, no figure
    chap3.main(command + ["--out", str(tmp_path / "one")])
    lines = merge.merge([tmp_path / "part1", tmp_path / "part2"], tmp_path / "merged")
    assert "chap3: composed 3.4 from 2 unit records of 3.4 trained in several parts" in lines
    names = [f"overfitting_{m}.png" for m in sorted(chap3.MONITORS)]
    assert f"chap3: redrew {', '.join(names)} from the merged rows" in lines

    merged = store.read_results(tmp_path / "merged" / "chap3")
    one = store.read_results(tmp_path / "one")
    assert [r["id"] for r in merged["rows"]] == [r["id"] for r in one["rows"]] == ["3.4"]
    row, unsplit = (less_how(r["rows"][0]) for r in (merged, one))
    assert row["seeds"] == SEEDS and len(row["measured"]["runs"]) == 2
    assert row["measured"] == unsplit["measured"]          # mean, sd, best of k, the per-seed peaks
    assert {k: v for k, v in row.items() if k != "curves"} == {k: v for k, v in unsplit.items() if k != "curves"}
    same_curves(row["curves"], unsplit["curves"])                                # [epochs][seeds] each
    assert {k: len(v[0]) for k, v in row["curves"].items()} == {m: 2 for m in chap3.MONITORS}
    assert merged["units"].keys() == one["units"].keys() == {f"3.4@{s}" for s in SEEDS}
    for uid, unit in merged["units"].items():
        assert {k: v for k, v in less_how(unit).items() if k != "history"} == {
            k: v for k, v in less_how(one["units"][uid]).items() if k != "history"}
        same_curves(unit["history"], one["units"][uid]["history"])
    for name in names:   # redrawn from the merged rows: each seed's curve, as the unsplit run drew it
        redrawn, first = drawn[str(tmp_path / "merged" / "chap3" / name)], drawn[str(tmp_path / "one" / name)]
        assert [label for label, _ in redrawn] == [label for label, _ in first] == [
            f"measured (seed {s})" for s in SEEDS] + ["book"] * (len(first) - 2)
        same_curves(dict(redrawn), dict(first), exact=lambda _, name=name: "accuracy" in name)


def test_a_rows_seeds_planned_apart_name_the_unit_records_its_table_rows_are_composed_from(tmp_path):
    """3.10 writes the table rows 3.10a-d from one unit record a seed (3.10@<seed>); planned over two
    parts, seed by seed, the parts' run entries tell merge to compose 3.10a-d from those records."""
    args = chap3.command_line(["--quick", "--only", "3.10", "--seeds", "2", "--out", str(tmp_path)], plan_only=True)
    plan = parts.chapter_plan("chap3", args, chap3.planned_jobs, 2)
    assert [[u.job for u in p] for p in plan] == [[f"3.10@{SEEDS[0]}"], [f"3.10@{SEEDS[1]}"]]
    assert parts.part_record(plan, 1, "chap3")["composed"] == {
        "3.10": {"rows": ["3.10a", "3.10b", "3.10c", "3.10d"], "units": [f"3.10@{s}" for s in SEEDS]}}


def same_curves(a, b, exact=lambda name: "accuracy" in name):
    """Curves ({name: values}) equal: counts exactly; costs to float32's rounding, since a seed trained
    alone (K = 1, in a part) and beside another (K = 2) are two XLA programs whose float32 sums may
    round apart in the last bit (their accuracies, counts, agree exactly)."""
    assert a.keys() == b.keys()
    for name in a:
        if exact(name):
            assert a[name] == b[name], name
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
