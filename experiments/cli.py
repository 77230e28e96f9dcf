"""The ``nndl-jax`` command: the library's commands and the book's experiments.

    nndl-jax data [--data-dir D] [--download]   where MNIST lives, is it verified, split sizes
    nndl-jax expand [--data-dir D] [--seed S]   make the book's expanded training set
    nndl-jax chap1 [ARGS...]                    python -m experiments.chap1 ARGS... (chap3 ... chap6 too)
    nndl-jax run CHAPTER [ARGS...]              the same: run chap6 --quick, run 6 --quick
    nndl-jax reproduce [--quick] [--only 1 3] [--resume] [--out DIR]
                                                every chapter, then one report (reproduced/REPORT.md)
    nndl-jax report [--out DIR] [--readme]      the report (and the README's results table) again
    nndl-jax merge DIR... --out DIR             parts made with --part I/N combined into one result

The console script lives on the experiments side because its chapter commands
are the experiments: the library (``nndl_jax``) never imports ``experiments``,
and its own commands (data, expand) are ``nndl_jax.cli``'s, added to this
parser and run by it (``nndl_jax.cli.add_commands``, ``run_command``).

The experiment commands (chapN, run, reproduce, report, merge) hand every
argument after their name to the module's own parser, so ``nndl-jax chap6
--quick`` and ``nndl-jax chap1 --help`` mean what ``python -m experiments.chap6
--quick`` and ``... chap1 --help`` mean; they run through
``experiments.session.main_entry``, which turns refusals into one message and
handles Ctrl-C.

Nothing here imports JAX: ``nndl-jax --help`` answers at once, and so does
every experiment command's ``--help`` (the chapter modules import JAX inside
the functions that compute); JAX starts when an experiment runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from nndl_jax import cli as library_cli  # NumPy only

__all__ = ["main", "build_parser"]


def experiment_names() -> list[str]:
    """The chapter modules: chap1, chap3, ..."""
    import experiments
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name.startswith("chap"))


def experiment_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module parses its own arguments: name -> (module, function)."""
    commands = {name: (f"experiments.{name}", "main") for name in experiment_names()}
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
    for name in experiment_names():
        sub.add_parser(name, add_help=False, help=f"python -m experiments.{name} (nndl-jax {name} --help)")
    sub.add_parser("reproduce", add_help=False,
                   help="every chapter (1, 3, 4, 5, 6; about 25 h on a quiet 2-core CPU, 11.5 h with --seeds 1: "
                        "--plan 1), "
                        "then one report (nndl-jax reproduce --help)")
    sub.add_parser("report", add_help=False,
                   help="the report of results already written, training nothing: report --out results "
                        "for your own runs; --readme: also the README's results table (nndl-jax report --help)")
    sub.add_parser("merge", add_help=False,
                   help="combine the folders of parts run with --part I/N into one results.json per chapter "
                        "and one REPORT.md (nndl-jax merge --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndl-jax", description="The programs of Nielsen's Neural Networks and Deep Learning, in JAX.",
        epilog="Start with: nndl-jax chap1 (chapter 1's table: 5 to 10 minutes on a 2-core CPU).")
    sub = parser.add_subparsers(dest="command", required=True)
    library_cli.add_commands(sub)
    _add_run(sub)
    return parser


def _run_experiment(module: str, function: str, argv: list[str]) -> int:
    """``module.function(argv)`` through ``experiments.session.main_entry``: its refusals
    become one message and Ctrl-C says what is saved. JAX starts here, not before."""
    try:
        main = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        print(f"nndl-jax run: no chapter {module.split('.')[-1]!r}; the chapters are "
              f"{' '.join(experiment_names())} (or their numbers)", file=sys.stderr)
        return 2
    from experiments.session import main_entry
    return main_entry(main, argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    experiment = experiment_commands().get(argv[0]) if argv else None
    if experiment is not None:
        return _run_experiment(*experiment, argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run_experiment(_chapter_module(args.chapter), "main", args.args)
    return library_cli.run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
