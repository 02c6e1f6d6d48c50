#!/usr/bin/env bash
# Run one CI leg: cpu | cuda | rocm | xla   (see ci/matrix.toml)
#
#   bash ci/run_leg.sh cpu     # sets up .venv from nothing, runs every CPU test
#   bash ci/run_leg.sh cuda    # on a GPU machine with torch+triton installed: GPU tests + benchmarks
#
# Env: PYTHON (interpreter to build the venv from), LORA_DISPATCH_VENV (venv dir, default .venv),
#      TORCH_SPEC / TRITON_SPEC (pip specs), OUT (where GPU legs write logs and JSON),
#      LORA_DISPATCH_PRUNE_VENVS (cpu leg, default 1: delete each extra Triton release's venv
#      after its launcher tests; 0 keeps them in .venv-triton for the next run).
set -euo pipefail
leg=${1:-cpu}
shift || true
cd "$(dirname "$0")/.."
root=$(pwd)

pytest_strict() {
  # pytest exits 5 when it collects nothing: that is a failure here too
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then echo "ci: no tests collected -- failing" >&2; return 1; fi
  return "$rc"
}

setup_cpu_venv() {
  local venv=${LORA_DISPATCH_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then "${PYTHON:-python3}" -m venv "$venv"; fi
  export PATH="$root/$venv/bin:$PATH"
  python -m pip install -q --disable-pip-version-check --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
  python -m pip install -q --disable-pip-version-check --no-cache-dir -e ".[test]" \
    "${TRITON_SPEC:-triton==3.6.0}" "numpy<2.3"
}

case "$leg" in
  cpu)
    setup_cpu_venv
    python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    ruff check lora_dispatch tests benchmarks
    pytest_strict python -m pytest -q -m "not gpu" -p no:cacheprovider "$@"
    if [ -f ci/launcher_versions.sh ]; then
      # each extra Triton release is 0.6-1.1 GB: delete it after its tests unless asked to keep it
      LORA_DISPATCH_PRUNE_VENVS=${LORA_DISPATCH_PRUNE_VENVS:-1} \
        PYTHON="$(command -v python)" bash ci/launcher_versions.sh
    fi
    lora-dispatch info
    lora-dispatch check --quick
    ;;
  cuda|rocm)
    # GPU machines come with torch + triton; install the package without touching them.
    out=${OUT:-$root/.out}
    mkdir -p "$out"
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
    python -m lora_dispatch.cli info | tee "$out/info.txt"
    pytest_strict python -m pytest -q -m gpu -p no:cacheprovider --junitxml="$out/gpu-tests.xml" "$@" \
      2>&1 | tee "$out/gpu-tests.log"
    python -m lora_dispatch.cli check --json "$out/check.json"
    if [ "$leg" = cuda ] && [ -z "${SKIP_BENCH:-}" ]; then
      for b in launch kernels layer; do
        if [ -f "benchmarks/bench_$b.py" ]; then
          python "benchmarks/bench_$b.py" --json "$out/$b.json" 2>&1 | tee "$out/bench-$b.log" || true
        fi
      done
    fi
    ;;
  xla)
    bash ci/xla_leg.sh "$@"
    ;;
  *)
    echo "usage: ci/run_leg.sh cpu|cuda|rocm|xla" >&2
    exit 2
    ;;
esac
