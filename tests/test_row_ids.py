"""--only takes the ids the results tables show (experiments.driver.row_of,
asked_jobs), and --help lists every chapter's rows with their titles in the
book's order, under the command's own name."""
import re

import pytest

from experiments import chap3, chap5, chap6, driver, session


@pytest.mark.parametrize("table_id, row", [
    ("3.10a", "3.10"), ("3.10-100a", "3.10-100"), ("3.14@100", "3.14"), ("3.17c", "3.17"), ("3.10", "3.10"),
    ("3.1b", "3.1"), ("3.12@0.1", "3.12"), ("3.5", "3.5"), ("3.11", None), ("3.100", None), ("7.1", None)])
def test_each_table_id_belongs_to_the_row_that_makes_it(table_id, row):
    assert driver.row_of(table_id, driver.chapter_args("chap3", []).row_ids) == row


def test_chapter_5_and_6_ids_nest_by_dots_and_letters():
    assert driver.row_of("5.8.2.1", ["5.8", "5.1"]) == "5.8"
    assert driver.row_of("5.10.3", ["5.1", "5.10"]) == "5.10"
    assert driver.row_of("4.2w.5", ["4.2", "4.2w", "4.2m"]) == "4.2w"
    assert driver.row_of("6.11@12345679", list(chap6.ROW_IDS)) == "6.11"


def planned(chapter, *only):
    args = driver.chapter_args(chapter.__name__.split(".")[-1], ["--only", *only])
    return [job.id for job in chapter.planned_jobs(args)], args


def test_only_runs_what_each_table_id_needs_and_a_size_alone():
    ids, args = planned(chap3, "3.10a", "3.14@100", "3.17c")
    assert ids == ["3.10", "3.14@100", "3.17"]
    assert args.only == ("3.10", "3.14", "3.17") and args.asked == ("3.10a", "3.14@100", "3.17c")
    assert planned(chap3, "3.14")[0] == [f"3.14@{n}" for n in chap3.ROW["3.14"]["train_sizes"]]
    assert planned(chap3, "3.14", "3.14@100")[0] == planned(chap3, "3.14")[0]   # the whole row asked too
    assert planned(chap5, "5.8.3.2")[0] == ["5.8@3"]


def test_an_id_its_row_does_not_make_is_refused_naming_those_it_makes(capsys):
    with pytest.raises(session.Refusal, match=r"--only 3.14@7: row 3.14 makes 3.14@100 3.14@200 .* not 3.14@7"):
        planned(chap3, "3.14@7")
    with pytest.raises(SystemExit) as e:
        driver.chapter_args("chap3", ["--only", "3.11"])
    assert e.value.code == 2 and "unknown row id 3.11 for --only" in capsys.readouterr().err


def test_help_lists_the_rows_in_the_books_order_with_their_titles(capsys):
    with pytest.raises(SystemExit):   # main called without main_entry's session: the python -m command
        chap3.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m experiments.chap3 ")
    listed = [ln.split()[0] for ln in out.split("rows of chap3")[1].splitlines()[1:] if ln.startswith("  ")]
    assert listed == ["3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9", "3.10", "3.10-100", "3.12",
                      "3.14", "3.15", "3.16", "3.17", "3.18", "3.20", "3.21", "3.22"]
    assert f"  3.17      {chap3.ROW['3.17']['what']}" in out


def test_the_nndl_jax_command_names_itself_in_the_usage_line(capsys):
    assert session.main_entry(chap6.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: nndl-jax chap6 ") and re.search(r"\n  6\.8 +both of 6\.8a and 6\.8b\n", out)


def test_a_single_ensemble_net_asked_by_its_table_id_is_that_net(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(chap6, "run", lambda args: seen.append(args) or ([], {}))
    chap6.main(["--quick", "--out", str(tmp_path), "--only", "6.11@12345680"])
    assert seen[0].nets == (2,) and seen[0].only == ("6.11",)
    with pytest.raises(session.Refusal, match="the ensemble's nets are 6.11@12345678 "):
        chap6.main(["--quick", "--out", str(tmp_path), "--only", "6.11@7"])
