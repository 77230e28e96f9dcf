#!/usr/bin/env bash
# The accelerator check, run by a maintainer on a lent GPU machine (see CONTRIBUTING.md):
# the core's test files on the GPU backend, then the benchmarks' GPU figures.
# MNIST is read from .devdata/mnist (an ignored copy carried to the machine); results go to $OUT.
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NNDL_JAX_DATA="$PWD/.devdata/mnist" MPLBACKEND=Agg
OUT="${OUT:-$(mktemp -d)}"
python3 -c "import jax, optax, numpy; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_equivalence.py \
    tests/test_conv_equivalence.py tests/test_resume.py tests/test_compile_cache.py tests/test_network.py \
    tests/test_network2.py tests/test_network3.py 2>&1 | tee "$OUT/pytest.log" | tail -25
timeout 90 python3 -m benchmarks.bench_epoch --repeats 3 --json "$OUT/bench_epoch.json" 2>&1 | tee "$OUT/bench_epoch.log" | tail -25
timeout 90 python3 -m benchmarks.bench_conv --steps 200 --rounds 3 --no-processes --no-torch 2>&1 | tee "$OUT/bench_conv.log" | tail -25
timeout 60 python3 -m benchmarks.bench_first_epoch --cases book-network 2>&1 | tee "$OUT/bench_first_epoch.log"
timeout 60 python3 -m experiments.chap6 --quick --out "$OUT/chap6" 2>&1 | tail -25
