#!/usr/bin/env bash
# Run the fast_launch CPU tests (key equivalence + launch-path benchmarks) under several
# Triton releases, each in its own cached virtual environment.
#
#   ci/launcher_versions.sh                 # 3.0.0 3.6.0 3.9.0
#   ci/launcher_versions.sh 3.2.0 3.4.0     # any releases from 3.0 to 3.9
#
# Environment:
#   PYTHON                     interpreter whose packages (torch, pytest, ...) are inherited
#                              (default: python3 on PATH)
#   LORA_DISPATCH_VENV_CACHE   where the per-release venvs live (default: .venv-triton)
#   LORA_DISPATCH_WHEELHOUSE   optional directory of downloaded triton wheels (--find-links)
#   LORA_DISPATCH_BENCH=1      also time the benchmarks (--benchmark-enable), JSON written to
#                              $LORA_DISPATCH_VENV_CACHE/bench-<version>.json
#   LORA_DISPATCH_PRUNE_VENVS=1  delete each release's venv once its tests ran (a fresh CI clone
#                              never reuses them; each holds 0.6-1.1 GB of triton)
#
# The release that $PYTHON already has runs in $PYTHON itself: no second copy of it.
#
# Each venv is created with --system-site-packages from $PYTHON. When $PYTHON is itself a
# venv its packages are not "system" ones, so a .pth file appends its site-packages after
# the new venv's own: the venv's triton wins, torch/pytest/hypothesis come from $PYTHON.
# triton is installed with --no-deps --ignore-installed so pip never touches $PYTHON's copy.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CACHE=${LORA_DISPATCH_VENV_CACHE:-.venv-triton}
if [ "$#" -eq 0 ]; then
    set -- 3.0.0 3.6.0 3.9.0
fi

parent_site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$CACHE"
status=0
summary=()

parent_triton=$("$PYTHON" -c 'import triton; print(triton.__version__.split("+")[0])' 2>/dev/null || true)

for version in "$@"; do
    venv="$CACHE/triton-$version"
    py="$venv/bin/python"
    if [ "$version" = "$parent_triton" ]; then
        py="$PYTHON"
    elif ! "$venv/bin/python" -c "import triton, sys; sys.exit(triton.__version__.split('+')[0] != '$version')" \
            >/dev/null 2>&1; then
        echo "== creating $venv"
        rm -rf "$venv"
        "$PYTHON" -m venv --system-site-packages "$venv"
        child_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$parent_site" > "$child_site/_lora_dispatch_parent.pth"
        find_links=()
        if [ -n "${LORA_DISPATCH_WHEELHOUSE:-}" ]; then
            find_links=(--find-links "$LORA_DISPATCH_WHEELHOUSE")
        fi
        if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir \
                --no-deps --ignore-installed "${find_links[@]}" "triton==$version"; then
            df -h "$CACHE" >&2 || true
            summary+=("triton $version: INSTALL FAILED")
            status=1
            rm -rf "$venv"
            continue
        fi
    fi
    bench_args=()
    if [ "${LORA_DISPATCH_BENCH:-0}" = "1" ]; then
        bench_args=(--benchmark-enable "--benchmark-json=$CACHE/bench-$version.json")
    fi
    echo "== triton $version"
    if "$py" -m pytest -q -p no:cacheprovider \
            tests/test_launcher_spec.py tests/test_launcher_fast.py tests/test_launcher_bench.py \
            "${bench_args[@]}"; then
        summary+=("triton $version: ok")
    else
        summary+=("triton $version: FAILED")
        status=1
    fi
    if [ "${LORA_DISPATCH_PRUNE_VENVS:-0}" = "1" ] && [ "$py" != "$PYTHON" ]; then
        rm -rf "$venv"
    fi
done

printf '%s\n' "${summary[@]}"
exit $status
