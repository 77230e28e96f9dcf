"""The ``nndl-jax`` command.

    nndl-jax data [--data-dir D] [--download]   where MNIST lives, is it verified, split sizes
    nndl-jax expand [--data-dir D] [--seed S]   make the book's expanded training set
    nndl-jax run CHAPTER [ARGS...]              python -m experiments.CHAPTER ARGS...
    nndl-jax chap1 [ARGS...]                    the same, one subcommand per experiments module

Subcommands are argparse subparsers: add one with a ``_add_<name>`` function
registered in `_COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from nndl_jax import data as mnist_data
from nndl_jax import expand_mnist

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


def _add_run(sub):
    p = sub.add_parser("run", help="run an experiments module: run chap1 [args...] (or run 1)")
    p.add_argument("chapter", help="chap1 ... or 1 ...")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to experiments.CHAPTER.main")
    p.set_defaults(func=_cmd_run)
    for name in _experiment_names():
        q = sub.add_parser(name, help=f"python -m experiments.{name}", add_help=False)
        q.add_argument("args", nargs=argparse.REMAINDER)
        q.set_defaults(func=lambda a, name=name: _run_experiment(name, a.args))


_COMMANDS = [_add_data, _add_expand, _add_run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nndl-jax", description="Nielsen's NNDL in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except mnist_data.MNISTError as e:
        print(f"nndl-jax: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
