"""The library's own commands of ``nndl-jax``: the data it needs.

    nndl-jax data [--data-dir D] [--download]   where MNIST lives, is it verified, split sizes
    nndl-jax expand [--data-dir D] [--seed S]   make the book's expanded training set

The ``nndl-jax`` script itself is ``experiments.cli``: it adds the book's
experiments (chapN, run, reproduce, report, merge) and hands these two
commands to this module (``add_commands``, ``run_command``). The library
never imports ``experiments``; ``python -m nndl_jax.cli data`` works without it.

Subcommands are argparse subparsers: add one with a ``_add_<name>`` function
registered in ``COMMANDS``. Nothing here imports JAX: ``nndl-jax data`` and
``nndl-jax expand`` answer at once. A refusal (MNIST missing or bad, a folder
that cannot be written, a bad value) is one line on stderr and exit status 1,
never a Python traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from nndl_jax import data as mnist_data  # NumPy only
from nndl_jax import expand_mnist  # NumPy only

__all__ = ["main", "build_parser", "add_commands", "run_command"]


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


COMMANDS = [_add_data, _add_expand]


def add_commands(sub):
    """Add the library's commands to an argparse subparsers object (``experiments.cli`` calls it)."""
    for add in COMMANDS:
        add(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nndl-jax", description="The library's commands: the MNIST data the book's programs need.",
        epilog="The book's experiments (chap1 ... chap6, reproduce, report, merge) are the experiments' commands "
               "of the same nndl-jax script (python -m experiments.cli).")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_command(args) -> int:
    """One of the commands defined here, parsed; a refusal is one message on stderr, status 1."""
    try:
        return args.func(args)
    except (mnist_data.MNISTError, OSError, ValueError) as e:
        print(f"nndl-jax {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nndl-jax {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
