#!/usr/bin/env bash
# GPU check (never part of CI): parity and latency of onnxruntime-CUDA and the TensorRT engine against
# onnxruntime-CPU, at batch 1/8/16.  Needs an environment with spinedet installed, e.g. `make test`'s .venv
# plus, for onnxruntime-CUDA, onnxruntime-gpu (`pip install "spinedet[gpu]"`); installs and downloads nothing.
# Usage: bench/gpu_check.sh [--rounds N] [--cpu-latency]   (prints one JSON object; also saved to $OUT if set)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv >&2 || true
if [ -n "${OUT:-}" ]; then
  "$PY" bench/gpu_check.py "$@" | tee "$OUT/gpu_check.json"
else
  "$PY" bench/gpu_check.py "$@"
fi
