"""The nndl-jax command: its experiment shortcuts (`nndl-jax chap6 --quick`,
`nndl-jax chap1 --help`, `nndl-jax reproduce`, `nndl-jax report`), help
without JAX, and refusals as one message without a traceback."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from experiments import cli
from nndl_jax import data

REPO = Path(__file__).resolve().parents[1]


def exit_status(argv):
    """cli.main's exit status, whether it returns it or raises SystemExit (argparse)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def _offline(url, *a, **k):
    raise urllib.error.URLError("no network (test)")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh machine: an empty user cache, NNDL_JAX_DATA unset, no network."""
    cache = tmp_path / "xdg"
    cache.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("NNDL_JAX_DATA", raising=False)
    monkeypatch.setattr(data, "urlopen", _offline)
    return cache


def _fresh_interpreter(argv, env=None, offline=False):
    """``nndl-jax ARGV`` in a new Python (offline: every download fails); prints, last on
    stderr, whether JAX was imported."""
    code = ("import sys\n"
            "from experiments import cli\n"
            "from nndl_jax import data\n"
            + ("def offline(url, *a, **k):\n    raise OSError('no network (test)')\n"
               "data.urlopen = offline\n" if offline else "")
            + "try:\n    status = cli.main()\n"
              "except SystemExit as e:\n    status = e.code\n"
              "print('jax imported:', 'jax' in sys.modules, file=sys.stderr)\n"
              "raise SystemExit(status)\n")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["expand", "--help"], ["run", "--help"],
                                  ["reproduce", "--help"], ["report", "--help"],
                                  *([f"chap{n}", "--help"] for n in (1, 3, 4, 5, 6)),
                                  ["run", "chap3", "--help"], ["run", "6", "--help"]])
def test_help_answers_without_starting_jax(argv):
    done = _fresh_interpreter(argv)
    assert done.returncode == 0, done.stderr
    assert "usage: " in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "jax imported: False"


@pytest.mark.parametrize("chapter", ["chap1", "chap3", "chap4", "chap5", "chap6"])
def test_chapter_module_help_answers_without_starting_jax(chapter):
    """`python -m experiments.chapN --help` imports no part of JAX (``-X importtime``
    lists every module the interpreter imports, on stderr)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", f"experiments.{chapter}", "--help"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "usage: " in done.stdout, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "numpy" in imported  # the listing works
    assert not [m for m in imported if m == "jax" or m.startswith("jax.")]


def test_top_level_help_lists_every_command_and_how_to_start():
    done = _fresh_interpreter(["--help"])
    for command in ("data", "expand", "run", "chap1", "chap6", "reproduce", "report"):
        assert command in done.stdout
    assert "nndl-jax chap1" in done.stdout and "report --out results" in done.stdout


def test_an_offline_first_run_prints_one_message_and_leaves_the_cache_as_it_was(tmp_path):
    """The README's first command on a machine without MNIST and without a network,
    through the real entry point: a message saying what to do, no traceback."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("NNDL_JAX_DATA", None)
    (tmp_path / "xdg").mkdir()
    done = _fresh_interpreter(["chap1", "--quick", "--only", "1.5", "--out", str(tmp_path / "out")],
                              env=env, offline=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    folder = tmp_path / "xdg" / "nndl-jax" / "mnist"
    assert f"could not be downloaded into {folder}" in done.stderr and "no network (test)" in done.stderr
    assert f"into {folder}, or set NNDL_JAX_DATA" in done.stderr
    assert list((tmp_path / "xdg").iterdir()) == []  # no empty nndl-jax/mnist/ left behind


def test_data_offline_is_one_message_and_leaves_no_empty_folder(empty_cache, capsys):
    assert cli.main(["data", "--download"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nndl-jax data: MNIST could not be downloaded into ") and "Traceback" not in err
    assert "t10k-labels-idx1-ubyte.gz" in err and "NNDL_JAX_DATA" in err
    assert list(empty_cache.iterdir()) == []


def test_expand_into_a_folder_that_cannot_be_made_is_one_message(mnist_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    assert cli.main(["expand", "--data-dir", str(mnist_dir), "--out-dir", str(tmp_path / "a-file" / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nndl-jax expand: ") and str(tmp_path / "a-file") in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("target", ["file", "link-to-file"])
def test_expand_into_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys, target):
    """Issue 31 item 12: `nndl-jax expand --out-dir <a file>` used to expand for 13 s, then say "File
    exists". Now one message naming it, before MNIST is even read, and the file is left as it was."""
    from nndl_jax import expand_mnist
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file"
    if target == "link-to-file":
        (tmp_path / "link").symlink_to(out)
        out = tmp_path / "link"
    monkeypatch.setattr(expand_mnist, "load_mnist", lambda *a, **k: pytest.fail("read MNIST before refusing"))
    assert cli.main(["expand", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"nndl-jax expand: --out-dir {out} is not a folder: give a folder to save the expanded set " \
                  "in (it is created when missing)\n"
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_expand_through_a_file_names_the_file_before_any_work(tmp_path, monkeypatch, capsys):
    from nndl_jax import expand_mnist
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(expand_mnist, "load_mnist", lambda *a, **k: pytest.fail("read MNIST before refusing"))
    assert cli.main(["expand", "--out-dir", str(tmp_path / "a-file" / "x" / "y")]) == 1
    assert f"is not a folder ({tmp_path / 'a-file'} is a file)" in capsys.readouterr().err


# --- the library never imports the experiments; the script is the experiments' (issue 30 item 5) -----

def _experiments_imports(path):
    """Every import of an ``experiments`` module written in ``path``, at the top or inside a function,
    and every string naming one (what ``importlib.import_module`` would be given)."""
    import ast
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom)
                 else [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else [])
        found += [f"{path.name}:{node.lineno}: {n}" for n in names
                  if n == "experiments" or n.startswith("experiments.")]
    return found


def test_no_library_module_names_an_experiments_module():
    assert [f for p in sorted((REPO / "nndl_jax").glob("*.py")) for f in _experiments_imports(p)] == []


def test_importing_every_library_module_imports_no_experiments_module():
    code = ("import pkgutil, importlib, sys, nndl_jax\n"
            "names = [m.name for m in pkgutil.iter_modules(nndl_jax.__path__)]\n"
            "for name in names:\n    importlib.import_module('nndl_jax.' + name)\n"
            "print(len(names), sorted(m for m in sys.modules if m == 'experiments' or m.startswith('experiments.')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, imported = done.stdout.split(" ", 1)
    assert int(count) >= 20 and imported.strip() == "[]", done.stdout


def test_the_library_cli_runs_its_own_commands_and_the_script_is_the_experiments():
    import tomllib

    from nndl_jax import cli as library_cli
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nndl-jax": "experiments.cli:main"}
    choices = library_cli.build_parser()._subparsers._group_actions[0].choices
    assert sorted(choices) == ["data", "expand"]
    done = subprocess.run([sys.executable, "-m", "nndl_jax.cli", "expand", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--out-dir" in done.stdout


def test_run_with_an_unknown_chapter_names_the_chapters(capsys):
    assert cli.main(["run", "chap9"]) == 2
    assert "no chapter 'chap9'; the chapters are chap1 chap3" in capsys.readouterr().err


def test_bad_arguments_to_an_own_command_are_argparse_usage_errors(capsys):
    assert exit_status(["data", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_chapter_help_is_the_chapters_own(capsys):
    assert exit_status(["chap1", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--svm-train-size" in out and "--resume" in out and "--only ID" in out


def test_chapter_help_from_the_command_line_exits_0():
    """The real entry point, in a fresh interpreter (argparse's exit status included)."""
    done = subprocess.run([sys.executable, "-m", "experiments.cli", "chap6", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--train-size" in done.stdout


def test_chapter_shortcut_takes_options_and_runs(tmp_path):
    assert cli.main(["chap4", "--quick", "--only", "4.1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["id"] for r in results["rows"]] == ["4.1"] and results["quick"] is True


def test_chapter_shortcut_with_a_bad_row_id_exits_non_zero(tmp_path, capsys):
    assert exit_status(["chap4", "--only", "9.9", "--out", str(tmp_path)]) == 2
    assert "unknown row id 9.9" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_reproduce_quick_chapter_4_end_to_end(tmp_path):
    assert cli.main(["reproduce", "--quick", "--only", "4", "--seeds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "chap4" / "results.json").read_text())
    assert results["complete"] is True and results["seeds"] == [12345678]
    page = (tmp_path / "REPORT.md").read_text()
    for r in results["rows"]:
        assert f"| {r['id']} |" in page
    assert "![universality_error](chap4/universality_error.png)" in page
    assert (tmp_path / "chap4" / "universality_error.png").stat().st_size > 0
    # the report again from what is there, training nothing
    (tmp_path / "REPORT.md").unlink()
    assert cli.main(["report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == page


def test_reproduce_refuses_a_folder_that_holds_the_other_kind_before_training(tmp_path, capsys):
    (tmp_path / "chap5").mkdir()
    (tmp_path / "chap5" / "results.json").write_text(json.dumps({"quick": False, "rows": [
        {"id": "5.1", "experiment": "depth", "unit": "%", "book": 96.5, "measured": 96.5, "quick": False}]}))
    assert exit_status(["reproduce", "--quick", "--only", "4", "5", "--out", str(tmp_path)]) == 2
    assert "holds full results" in capsys.readouterr().err
    assert not (tmp_path / "chap4" / "results.json").exists()  # nothing trained


def test_report_needs_an_existing_folder(tmp_path):
    assert exit_status(["report", "--out", str(tmp_path / "missing")]) == 2


def test_every_command_the_readme_shows_is_one_the_cli_knows():
    """The README's commands (`nndl-jax <command> ...` in its code blocks) exist, and each
    option it passes is one that command's --help lists."""
    import re
    text = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```$", text, flags=re.S | re.M))
    shown = re.findall(r"nndl-jax ([a-z0-9]+)((?: +--?[a-z0-9-]+(?: +[^-#\s][^\s]*)*)*)", blocks)
    assert {c for c, _ in shown} >= {"chap1", "reproduce", "report", "data", "expand"}
    known = set(cli.experiment_commands()) | {"data", "expand", "run"}
    for command, rest in shown:
        assert command in known, command
        options = re.findall(r"(--[a-z0-9-]+)", rest)
        if options:
            done = subprocess.run([sys.executable, "-m", "experiments.cli", command, "--help"], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)
            assert all(o in done.stdout for o in options), (command, options)


# --- the experiments' command line: --resume, --devices, refusals, Ctrl-C (issues 23, 24, 27) ----

def _rows(folder):
    return json.loads((Path(folder) / "results.json").read_text())["rows"]


def test_reproduce_resume_right_after_a_finished_run_retrains_nothing(tmp_path, mnist_dir, monkeypatch, capsys):
    """Issue 23 bug 3: `--resume` means "skip rows already recorded with the same
    settings" in every chapter, so `nndl-jax reproduce --resume` after a finished
    run trains nothing and leaves every recorded row as it was, stamps and all."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["reproduce", "--quick", "--only", "4", "5", "--seeds", "1", "--out", str(tmp_path / "out"),
            "--data-dir", str(mnist_dir)]
    assert cli.main(argv) == 0
    before = {c: _rows(tmp_path / "out" / f"chap{c}") for c in "45"}
    from nndl_jax import train
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("retrained a finished row"))
    capsys.readouterr()
    assert cli.main(argv + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("--resume skips it") == 3 + 9     # chap4: 4.1, 4.2, 4.3; chap5: 5.1-5.4, 5.5-5.7 (+5.8), 5.9, 5.10
    assert {c: _rows(tmp_path / "out" / f"chap{c}") for c in "45"} == before


ENTRY_POINTS = {
    "python -m experiments.chap6": [sys.executable, "-m", "experiments.chap6"],
    "nndl-jax chap6": [sys.executable, "-m", "experiments.cli", "chap6"],
    "nndl-jax run chap6": [sys.executable, "-m", "experiments.cli", "run", "chap6"],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_devices_is_honoured_by_every_entry_point(tmp_path, entry):
    """Issue 23 bug 2: `--devices 1` gives chapter 6 one CPU device however it is
    started (the default there is one per core; this machine has more than one)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run(ENTRY_POINTS[entry] + ["--devices", "1", "--only", "6.13", "--quick", "--out",
                                                 str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cannot apply" not in done.stderr
    environment = json.loads((tmp_path / "out" / "results.json").read_text())["environment"]
    assert len(environment["devices"]) == 1, environment


def test_refusals_print_their_message_without_a_traceback_and_leave_no_folder(tmp_path):
    """Issue 27: bad arguments (status 2), a damaged results file (2) and missing
    MNIST (1) end in their message alone; a failed start leaves no empty --out."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "results.json").write_text('{"rows": [{"id": 4}]}')
    cases = [(["experiments.chap4", "--only", "9.9", "--out", str(tmp_path / "a")], 2, "unknown row id 9.9"),
             (["experiments.chap4", "--quick", "--out", str(tmp_path / "damaged")], 2, "row 1 (id 4) has no string id"),
             (["experiments.chap1", "--quick", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "b")],
              1, str(tmp_path / "empty"))]
    for argv, status, message in cases:
        done = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == status and message in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "cache" / "nndl-jax" / "checkpoints").exists()


def test_ctrl_c_stops_at_once_and_says_what_is_saved_and_how_to_resume(tmp_path, mnist_dir):
    """Issue 27: SIGINT in the middle of a row ends the command within seconds,
    status 130, naming where the unfinished row is saved and the command that resumes."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    argv = ["--quick", "--only", "6.1", "--epochs", "100000", "--devices", "1", "--out", str(tmp_path / "out"),
            "--data-dir", str(mnist_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.chap6", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if "Epoch 1 (2 of 100000)" in line:
                break
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and time.time() - t0 < 10
    assert "stopped (Ctrl-C)" in err and "the unfinished row's last finished epoch is saved in" in err
    assert "resume with: python -m experiments.chap6 --quick --only 6.1 --epochs 100000" in err
    assert err.rstrip().endswith("--resume") and "Traceback" not in err


def test_reproduce_hands_devices_and_resume_to_every_chapter(tmp_path):
    """`nndl-jax reproduce --devices N --resume` sets the device count before any
    chapter runs JAX (in this test process JAX already runs, so it only says so)
    and gives every chapter the same options."""
    from experiments import reproduce
    args = reproduce.parse_args(["--quick", "--only", "4", "--devices", "1", "--resume", "--out", str(tmp_path)])
    argv = reproduce.chapter_argv(args, "4")
    assert argv[argv.index("--devices") + 1] == "1" and "--resume" in argv and "--quick" in argv
    assert args.session.resume_command() == f"nndl-jax reproduce --quick --only 4 --devices 1 --out {tmp_path} --resume"
