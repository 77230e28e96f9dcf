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
registered in `_COMMANDS`. The experiment commands (chapN, reproduce) hand
every argument after their name to the module's own parser, so
``nndl-jax chap6 --quick`` and ``nndl-jax chap1 --help`` mean what
``python -m experiments.chap6 --quick`` and ``... chap1 --help`` mean.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys

from nndl_jax import data as mnist_data
from nndl_jax import devices, expand_mnist

__all__ = ["main", "build_parser"]


def _cmd_data(args) -> int:
    folder = mnist_data.resolve_data_dir(args.data_dir)
    source = ("--data-dir" if args.data_dir is not None
              else f"${mnist_data.ENV_VAR}" if os.environ.get(mnist_data.ENV_VAR) else "cache")
    print(f"MNIST folder: {folder} (from {source})")
    if args.download:
        try:
            mnist_data.download_mnist(folder)
        except mnist_data.MNISTError as e:
            print(f"download failed: {e}")
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
    try:
        splits = mnist_data.load_mnist(args.data_dir, download=False)
    except mnist_data.MNISTError as e:
        print(f"cannot load MNIST: {e}")
        return 1
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


def _run_experiment(chapter: str, argv: list[str]) -> int:
    name = chapter if not chapter.isdigit() else f"chap{chapter}"
    module = importlib.import_module(f"experiments.{name}")
    result = module.main(argv)
    return result if isinstance(result, int) else 0


def _cmd_run(args) -> int:
    return _run_experiment(args.chapter, args.args)


def _experiment_names() -> list[str]:
    try:
        import experiments
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name.startswith("chap"))


def _own_parsers() -> dict[str, tuple[str, str]]:
    """Commands whose module parses its own arguments: name -> (module, function)."""
    commands = {name: (f"experiments.{name}", "main") for name in _experiment_names()}
    commands.update(reproduce=("experiments.reproduce", "main"), report=("experiments.reproduce", "report_main"),
                    merge=("experiments.merge", "main"))
    return commands


def _add_run(sub):
    p = sub.add_parser("run", help="run an experiments module: run chap1 [args...] (or run 1)")
    p.add_argument("chapter", help="chap1 ... or 1 ...")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to experiments.CHAPTER.main")
    p.set_defaults(func=_cmd_run)
    # Listed in --help only: main() hands them their arguments before argparse sees them.
    for name in _experiment_names():
        sub.add_parser(name, add_help=False, help=f"python -m experiments.{name} (nndl-jax {name} --help)")
    sub.add_parser("reproduce", add_help=False,
                   help="every chapter (1, 3, 4, 5, 6), then one report (nndl-jax reproduce --help)")
    sub.add_parser("report", add_help=False,
                   help="the report (--readme: and the README's results table) from results already "
                        "written, training nothing (nndl-jax report --help)")
    sub.add_parser("merge", add_help=False,
                   help="combine the folders of parts run with --part I/N into one results.json per chapter "
                        "and one REPORT.md (nndl-jax merge --help)")


_COMMANDS = [_add_data, _add_expand, _add_run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nndl-jax", description="Nielsen's NNDL in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    from_command_line = argv is None
    if from_command_line:  # Ctrl-C stops a long run at once (its checkpoints are atomic)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    argv = sys.argv[1:] if argv is None else list(argv)
    if from_command_line and argv[:1] == ["chap6"]:  # one CPU device per core: K conv nets side by side
        devices.use_cpu_devices_unless_started()
    own = _own_parsers().get(argv[0]) if argv else None
    args = None if own is not None else build_parser().parse_args(argv)
    try:
        if own is None:
            return args.func(args)
        result = getattr(importlib.import_module(own[0]), own[1])(argv[1:])
        return result if isinstance(result, int) else 0
    except mnist_data.MNISTError as e:
        print(f"nndl-jax: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
