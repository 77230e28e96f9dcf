"""Seconds to the first finished epoch, cold and warm: what JAX's persistent
compilation cache (``compile_cache.use_compilation_cache``) saves a second process.

    python -m benchmarks.bench_first_epoch [--data-dir DIR] [--repeats 1]

Each case is a fresh Python process, timed from its start to the line that
announces its first finished epoch:

  book-network  ``network.Network([784, 30, 10]).SGD(training_data, 1, 10, 3.0,
                test_data=test_data)`` on the book's lists of pairs (the
                chapter-1 REPL session; "Epoch 0: ..." is the line)
  chap6-row     ``python -m experiments.chap6 --only 6.2 --seeds 1 --epochs 1
                --train-size 2000`` (one conv net; its epoch line)

and each runs three ways, side by side in one run of this script:

  off    the persistent cache turned off (NNDL_JAX_COMPILATION_CACHE=0)
  cold   an empty cache folder (the first process after an install)
  warm   the same folder again (every later process)

The ratios warm/cold and warm/off are printed per case. Import time, data
loading and conversion are inside every figure (they are part of what a user
waits for), so the ratios show only what compiling costs of the whole.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BOOK = ("from nndl_jax import mnist_loader, network\n"
        "training_data, validation_data, test_data = mnist_loader.load_data_wrapper()\n"
        "net = network.Network([784, 30, 10])\n"
        "net.SGD(training_data, 1, 10, 3.0, test_data=test_data)\n")

CASES = {
    "book-network": ([sys.executable, "-c", BOOK], "Epoch 0:"),
    "chap6-row": ([sys.executable, "-m", "experiments.chap6", "--only", "6.2", "--seeds", "1", "--epochs", "1",
                   "--train-size", "2000", "--restart", "--out", "{out}"], "Epoch 0 (1 of 1)"),
}


def seconds_to_line(argv, marker, env, timeout=900):
    """Wall seconds from starting ``argv`` to the first output line holding ``marker``
    (the process is then stopped: a chapter's checkpoint stays, hence --restart)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if marker in line:
                return time.perf_counter() - t0
        raise RuntimeError(f"{' '.join(argv)} ended without printing {marker!r} (exit {proc.wait()})")
    finally:
        proc.kill()
        proc.wait(timeout=timeout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $NNDL_JAX_DATA, then the user cache)")
    p.add_argument("--repeats", type=int, default=1, help="warm runs to take the best of")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.data_dir:
        env["NNDL_JAX_DATA"] = args.data_dir
    print(f"{'case':<14} {'off':>8} {'cold':>8} {'warm':>8} {'warm/cold':>10} {'warm/off':>9}")
    for name in args.cases:
        command, marker = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            run = [a.format(out=Path(tmp) / "out") for a in command]
            times = {"off": seconds_to_line(run, marker, env | {"NNDL_JAX_COMPILATION_CACHE": "0"})}
            cache = env | {"NNDL_JAX_COMPILATION_CACHE": str(Path(tmp) / "xla")}
            times["cold"] = seconds_to_line(run, marker, cache)
            times["warm"] = min(seconds_to_line(run, marker, cache) for _ in range(args.repeats))
        print(f"{name:<14} {times['off']:>7.2f}s {times['cold']:>7.2f}s {times['warm']:>7.2f}s "
              f"{times['warm'] / times['cold']:>10.2f} {times['warm'] / times['off']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
