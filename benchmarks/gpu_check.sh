#!/usr/bin/env bash
# The GPU check: scoring cost, pruned decode speed, CUDA vs CPU scores, a harness sweep on CUDA.
# Under 8 minutes on one GPU; on a CPU-only machine it runs too and skips only the CUDA lines.
#   bash benchmarks/gpu_check.sh            # uses .venv/bin/python when present, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
exec "$PY" benchmarks/gpu_check.py "$@"
