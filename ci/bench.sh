#!/usr/bin/env bash
# Main job: check the selected backend on this machine's device, then run the benchmark suite.
# On a GPU machine whose python already has torch+CUDA it uses that python; otherwise it sets
# up .venv (CPU torch) from nothing. Extra arguments go to `lora-dispatch bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if "${PYTHON:-python3}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  py="${PYTHON:-python3}"
else
  venv=${LORA_DISPATCH_VENV:-.venv}
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[bench]" \
    "${TRITON_SPEC:-triton==3.6.0}" "numpy<2.3"
  py="$root/$venv/bin/python"
fi
"$py" -m lora_dispatch.cli info
"$py" -m lora_dispatch.cli check
"$py" -m lora_dispatch.cli bench "$@"
