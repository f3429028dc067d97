#!/usr/bin/env bash
# The GPU check of issue 19 (point 3): see benchmarks/gpu_check.py for what it checks.
#
#   bash benchmarks/gpu_check.sh                     # on the GPU machine (results in $OUT)
#   bash benchmarks/gpu_check.sh --device cpu --quick # here, ~15 s (results in ./gpu_check_out)
#
# Install: nothing is pip-installed. The device machine has no network; its python3 holds
# torch (a CUDA build), numpy and pyyaml, which stability-bench needs (threadpoolctl, which
# sets the BLAS threads of CPU runs, is used where present), so the checkout is put on
# PYTHONPATH (an editable `pip install --no-deps --no-build-isolation -e .` would also work
# offline, but would write into that interpreter for nothing).
# CIFAR-10: $STABILITY_BENCH_DATA, else .gpudata/ (carried to the device, see README
# "GPU check"), else ../shared/data; without it the CIFAR cases report missing data.
# Time: the whole thing runs under `timeout` (GPU_CHECK_LIMIT, default 570 s); the Python
# budget (--budget, default 520 s) ends each part in time and rewrites the JSON and markdown
# after each, so even a killed run leaves its figures.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${STABILITY_BENCH_DATA:-}" ]; then
  for d in .gpudata ../shared/data; do
    if [ -f "$d/cifar10-5k.npz" ]; then export STABILITY_BENCH_DATA="$(cd "$d" && pwd)"; break; fi
  done
fi
{
  date -u; uname -a; command -v "$PY"; "$PY" --version
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|numpy|pyyaml|threadpoolctl|triton) ' || true
  echo "STABILITY_BENCH_DATA=${STABILITY_BENCH_DATA:-unset}"
} >"$OUT/machine.txt" 2>&1
"$PY" -c 'import torch, numpy, yaml, stability_bench' || { echo "gpu_check: cannot import what it needs"; exit 2; }
timeout -k 15 "${GPU_CHECK_LIMIT:-570}" "$PY" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check: exit $rc (0 passed, 1 a check failed, 3 incomplete, 124 killed at the time limit)"
exit "$rc"
