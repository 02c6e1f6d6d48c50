#!/usr/bin/env bash
# XLA leg: the xla backend on a real XLA device through torch_xla, in its own cached venv
# (torch_xla pins its own torch, so it cannot share the main .venv).
#
#   bash ci/xla_leg.sh                 # PJRT_DEVICE=CPU: runs on any x86-64 Linux machine
#   PJRT_DEVICE=TPU bash ci/xla_leg.sh # on a TPU VM (TORCH_XLA_SPEC='torch_xla[tpu]==2.9.0')
#   bash ci/xla_leg.sh -k compilation  # extra args go to pytest
#
# Runs tests/test_xla_device.py: XLA compile count (torch_xla.debug.metrics 'CompileTime')
# constant across >= 20 adapter mixes at one token count, results against a float64 loop,
# no host transfers in the ops, ld.info() on the XLA device.
#
# Environment:
#   PYTHON                  interpreter the venv is made from (default python3; 3.10-3.12)
#   LORA_DISPATCH_XLA_VENV  venv directory, reused while its torch_xla imports (default .venv-xla)
#   TORCH_SPEC              default torch==2.9.1 (torch_xla 2.9.0 is built against torch 2.9)
#   TORCH_XLA_SPEC          default torch_xla==2.9.0
#   TORCH_INDEX_URL         optional index for torch only, e.g. PyTorch's CPU wheel index
#                           (https://download.pytorch.org/whl/cpu) where it is reachable. PyPI's
#                           x86-64 torch is the CUDA build: ~0.9 GB plus ~3 GB of nvidia-* wheels,
#                           which `import torch` needs (with --no-deps it fails: "libcublas.so.*[0-9]
#                           not found"), so without a CPU index the venv takes ~7 GB.
#   PJRT_DEVICE             default CPU
#   LORA_DISPATCH_XLA_BENCH=1  also run benchmarks/bench_xla_cpu.py --device xla --quick
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${PYTHON:-python3}
venv=${LORA_DISPATCH_XLA_VENV:-.venv-xla}
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
torch_spec=${TORCH_SPEC:-torch==2.9.1}
xla_spec=${TORCH_XLA_SPEC:-torch_xla==2.9.0}
export PJRT_DEVICE=${PJRT_DEVICE:-CPU}
pip_q=(-q --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch, torch_xla" >/dev/null 2>&1; then
  echo "== creating $venv ($torch_spec, $xla_spec)"
  avail_gb=$(df -Pk "$(dirname "$(realpath -m "$venv")")" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "${avail_gb:-0}" -lt 8 ]; then
    echo "xla leg: only ${avail_gb} GB free; torch (CUDA build) + torch_xla need about 7 GB" >&2
  fi
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/python" -m pip install "${pip_q[@]}" --index-url "$TORCH_INDEX_URL" "$torch_spec"
  fi
  "$venv/bin/python" -m pip install "${pip_q[@]}" "$torch_spec" "$xla_spec"
fi
py="$venv/bin/python"
"$py" -m pip install "${pip_q[@]}" pytest
# the package itself, from this tree, without letting pip replace the pinned torch
"$py" -m pip install "${pip_q[@]}" --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$py" -m pip install "${pip_q[@]}" --no-deps -e .

# fail loudly (not "all skipped") when torch_xla cannot start
"$py" - <<'EOF'
import torch, torch_xla
import lora_dispatch as ld
dev = torch_xla.device()
info = ld.info(dev)
print("torch", torch.__version__, "torch_xla", torch_xla.__version__, "device", dev,
      info["device_name"], "backend", info["backend"])
assert info["backend"] == "xla", info["backend_reason"]
EOF

rc=0
PYTHONUNBUFFERED=1 "$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
  tests/test_xla_device.py "$@" || rc=$?
if [ "$rc" -eq 5 ]; then echo "xla leg: no tests collected -- failing" >&2; rc=1; fi
if [ "$rc" -eq 0 ] && [ -n "${LORA_DISPATCH_XLA_BENCH:-}" ]; then
  "$py" benchmarks/bench_xla_cpu.py --device xla --quick --out "${OUT:-.out}/xla-pjrt-quick.json"
fi
exit "$rc"
