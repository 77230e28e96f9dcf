"""The benchmarks still run and report every case (smoke runs, nothing timed:
speed is judged from the benchmarks' own side-by-side output, never here).
Each runs as a command in a fresh interpreter, since the benchmarks ask for
their CPU devices before JAX starts."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(*args, env=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **(env or {}))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_epoch_quick_reports_every_row_and_the_ratios(mnist_dir, tmp_path):
    out = tmp_path / "epoch.json"
    stdout = run_benchmark("benchmarks.bench_epoch", "--quick", "--repeats", "1", "--json", str(out),
                           env={"NNDL_JAX_DATA": str(mnist_dir)})
    figures = json.loads(out.read_text())
    rows = {"scan", "scan-xTdz", "scan-pre", "loop", "numpy-ex", "numpy-mat", "numpy-mat-f32", "vmap-8",
            "vmap-8-dev", "map-8-dev", "book-call", "book-again", "as-arrays"}
    assert set(figures["seconds_per_epoch"]) == rows
    assert all(math.isfinite(s) and s > 0 for s in figures["seconds_per_epoch"].values()), figures
    assert figures["quick"] is True and figures["images_timed"] == 5000 and len(figures["devices"]) == 2
    for row in rows:
        assert f"\n{row} " in stdout, row
    assert "faster than NumPy per example (target >= 25" in stdout and "(target <= 0.5)" in stdout


def test_bench_conv_runs_each_jax_case_of_a_net():
    stdout = run_benchmark("benchmarks.bench_conv", "--nets", "conv", "--steps", "2", "--rounds", "1",
                           "--no-torch", "--no-processes")
    table = stdout[stdout.index("conv: case"):].splitlines()[1:]
    cases = {line[:40].strip(): line[40:].split() for line in table if line.strip()}
    assert set(cases) == {"jax K=1", "jax K=2 map", "jax K=2 vmap", "jax K=2 devices", "jax K=2 vmap-sharded"}, stdout
    for case, figures in cases.items():
        ms = float(figures[0])
        assert math.isfinite(ms) and ms > 0, (case, figures)
    assert float(cases["jax K=1"][-1]) == 1.0  # throughput relative to itself
