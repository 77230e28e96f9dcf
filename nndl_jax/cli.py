"""The ``nndl-jax`` command.

    nndl-jax data [--data-dir D] [--download]   where MNIST lives, is it verified, split sizes
    nndl-jax expand [--data-dir D] [--seed S]   make the book's expanded training set
    nndl-jax chap1 [ARGS...]                    python -m experiments.chap1 ARGS... (chap3 ... chap6 too)
    nndl-jax run CHAPTER [ARGS...]              the same: run chap6 --quick, run 6 --quick
    nndl-jax reproduce [--quick] [--only 1 3] [--resume] [--out DIR]
                                                every chapter, then one report (reproduced/REPORT.md)
    nndl-jax report [--out DIR] [--readme]      the report (and the README's results table) again
    nndl-jax merge DIR... --out DIR             parts made with --part I/N combined into one result

Subcommands are argparse subparsers: add one with a ``_add_<name>`` function
registered in `_COMMANDS`. The experiment commands (chapN, run, reproduce,
report) hand every argument after their name to the module's own parser, so
``nndl-jax chap6 --quick`` and ``nndl-jax chap1 --help`` mean what
``python -m experiments.chap6 --quick`` and ``... chap1 --help`` mean; they
run through ``experiments.driver.main_entry``, which turns refusals into one
message and handles Ctrl-C.

Nothing here imports JAX: ``nndl-jax --help``, ``nndl-jax data`` and
``nndl-jax expand`` answer at once, and so does every experiment command's
``--help`` (the chapter modules import JAX inside the functions that
compute); JAX starts when an experiment runs. A
refusal of the commands defined here (MNIST missing or bad, a folder that
cannot be written, a bad value) is one line on stderr and exit status 1,
never a Python traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from nndl_jax import data as mnist_data  # NumPy only
from nndl_jax import expand_mnist  # NumPy only

__all__ = ["main", "build_parser"]


def _cmd_data(args) -> int:
    folder = mnist_data.resolve_data_dir(args.data_dir)
    source = ("--data-dir" if args.data_dir is not None
              else f"${mnist_data.ENV_VAR}" if os.environ.get(mnist_data.ENV_VAR) else "cache")
    print(f"MNIST folder: {folder} (from {source})")
    if args.download:
        mnist_data.download_mnist(folder)
    ok = True
    for key, spec in mnist_data.IDX_FILES.items():
        path = mnist_data.find_idx(folder, key)
        if path is None:
            print(f"  {spec.name}[.gz]: missing")
            ok = False
            continue
        try:
            mnist_data.check_file(path, key)
            print(f"  {path.name}: verified (MD5 {spec.md5})")
        except mnist_data.MNISTError as e:
            print(f"  {path.name}: FAILED: {e}")
            ok = False
    pkl = folder / mnist_data.PICKLE_NAME
    print(f"  {mnist_data.PICKLE_NAME}: {'present (shapes checked on load)' if pkl.is_file() else 'absent'}")
    splits = mnist_data.load_mnist(args.data_dir, download=False)
    for name, d in zip(splits._fields, splits):
        print(f"  {name:10s} x {d.x.shape} {d.x.dtype}, y {d.y.shape} {d.y.dtype}")
    if not ok:
        print("(loaded from the book's pickle: the IDX files are missing or bad)")
    return 0


def _add_data(sub):
    p = sub.add_parser("data", help="show where MNIST lives and verify it")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $NNDL_JAX_DATA or the cache)")
    p.add_argument("--download", action="store_true", help="download missing IDX files into the folder first")
    p.set_defaults(func=_cmd_data)


def _cmd_expand(args) -> int:
    expand_mnist.expand_training_data(args.data_dir, args.seed, args.out_dir)
    return 0


def _add_expand(sub):
    p = sub.add_parser("expand", help="make the book's expanded training set (250,000 images)")
    expand_mnist.add_arguments(p)
    p.set_defaults(func=_cmd_expand)


# --- the experiment commands --------------------------------------------------------------

def _experiment_names() -> list[str]:
    try:
        import experiments
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name.startswith("chap"))


def _experiment_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module parses its own arguments: name -> (module, function)."""
    commands = {name: (f"experiments.{name}", "main") for name in _experiment_names()}
    commands.update(reproduce=("experiments.reproduce", "main"), report=("experiments.reproduce", "report_main"),
                    merge=("experiments.merge", "main"))
    return commands


def _chapter_module(chapter: str) -> str:
    """``experiments.chapN`` for ``chapN`` or ``N``."""
    return f"experiments.chap{chapter}" if chapter.isdigit() else f"experiments.{chapter}"


def _add_run(sub):
    p = sub.add_parser("run", help="run an experiments module: run chap1 [args...] (or run 1)")
    p.add_argument("chapter", help="chap1 ... or 1 ...")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to experiments.CHAPTER.main")
    p.set_defaults(func=None)
    # Listed in --help only: main() hands them their arguments before argparse sees them.
    for name in _experiment_names():
        sub.add_parser(name, add_help=False, help=f"python -m experiments.{name} (nndl-jax {name} --help)")
    sub.add_parser("reproduce", add_help=False,
                   help="every chapter (1, 3, 4, 5, 6; ~52 h on a 2-core CPU, ~21.5 h with --seeds 1: --plan 1), "
                        "then one report (nndl-jax reproduce --help)")
    sub.add_parser("report", add_help=False,
                   help="the report of results already written, training nothing: report --out results "
                        "for your own runs; --readme: also the README's results table (nndl-jax report --help)")
    sub.add_parser("merge", add_help=False,
                   help="combine the folders of parts run with --part I/N into one results.json per chapter "
                        "and one REPORT.md (nndl-jax merge --help)")


_COMMANDS = [_add_data, _add_expand, _add_run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndl-jax", description="The programs of Nielsen's Neural Networks and Deep Learning, in JAX.",
        epilog="Start with: nndl-jax chap1 (chapter 1's table: 5 to 10 minutes on a 2-core CPU).")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def _run_experiment(module: str, function: str, argv: list[str]) -> int:
    """``module.function(argv)`` through ``experiments.driver.main_entry``: its refusals
    become one message and Ctrl-C says what is saved. JAX starts here, not before."""
    try:
        main = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        print(f"nndl-jax run: no chapter {module.split('.')[-1]!r}; the chapters are "
              f"{' '.join(_experiment_names())} (or their numbers)", file=sys.stderr)
        return 2
    from experiments.driver import main_entry
    return main_entry(main, argv)


def _own_command(args) -> int:
    """One of the commands defined here; a refusal is one message on stderr, status 1."""
    try:
        return args.func(args)
    except (mnist_data.MNISTError, OSError, ValueError) as e:
        print(f"nndl-jax {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nndl-jax {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    experiment = _experiment_commands().get(argv[0]) if argv else None
    if experiment is not None:
        return _run_experiment(*experiment, argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run_experiment(_chapter_module(args.chapter), "main", args.args)
    return _own_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
