#!/usr/bin/env bash
# One GPU session for the Triton backend: GPU tests, then the kernel benchmark.
# Usage (repo root): OUT=/some/dir bash benchmarks/gpu_session.sh [MODES] [pytest -k expr]
# MODES: comma list of tests, tune, bench (default tests,bench); BENCH_ARGS=--quick etc.
# Logs and JSON land in $OUT (default ./.out).
set -uo pipefail
MODE=,${1:-tests,bench},
KEXPR=${2:-}
OUT=${OUT:-.out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.out/triton-cache}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
rc=0
if [[ $MODE == *,tests,* ]]; then
  $PY -m pytest -q -x -p no:cacheprovider tests/test_triton_gpu.py ${KEXPR:+-k "$KEXPR"} \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
  rc=${PIPESTATUS[0]}
fi
if [[ $MODE == *,tune,* ]]; then
  $PY benchmarks/bench_kernels.py --tune --json "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log"
  rc=$(( rc | PIPESTATUS[0] ))
fi
if [[ $MODE == *,bench,* ]]; then
  $PY benchmarks/bench_kernels.py ${BENCH_ARGS:-} --json "$OUT/kernels.json" 2>&1 | tee "$OUT/bench.log"
  rc=$(( rc | PIPESTATUS[0] ))
fi
exit $rc
