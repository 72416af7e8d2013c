#!/usr/bin/env bash
# The GPU check: tokens equal to the official VAR / LlamaGen code, then fp32 / bf16 / compiled speed at batch 1
# and 16, in under 8 minutes; writes OUT/gpu_check.json and OUT/gpu_check.md (see bench/gpu_check.py).
#
#   bench/gpu_check.sh --out gpu-check                 # on a GPU
#   bench/gpu_check.sh --cpu-smoke --out /tmp/smoke    # tiny models on the CPU: the script still runs
#
# Installs nothing: it runs the project from this checkout (its src/ first on PYTHONPATH, so an older installed
# arvision is not the one measured) with the Python in $PYTHON (default: python3), which must already have
# PyTorch and the project's dependencies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS="ignore::FutureWarning"
exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
