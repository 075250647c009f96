#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): scoring cost, pruned decode speed, sweep throughput and
# prune + check device memory at a real shape (random weights), CUDA vs CPU on tiny families.
# Under 5 minutes on one H100-class GPU; on a CPU-only machine it runs too (CUDA lines skipped).
#
#   bash benchmarks/gpu_check.sh                # here: .venv's python, layercut installed
#   PY=python3 bash benchmarks/gpu_check.sh     # a bare offline node (its own torch/transformers)
#
# Where PY cannot import layercut, it is installed for this run only, into .gpu-site: first the
# wheels in gpu-wheels/ (benchmarks/gpu_wheels.sh downloads them where a registry is reachable),
# then layercut itself from this checkout, all with --no-index --no-deps: nothing is fetched and
# nothing of the node's own stack is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
if ! (cd / && "$PY" -c "import layercut" 2>/dev/null); then
    SITE="$PWD/.gpu-site"
    rm -rf "$SITE"
    shopt -s nullglob
    wheels=(gpu-wheels/*.whl)
    [ ${#wheels[@]} -gt 0 ] || { echo "gpu_check: no wheels in gpu-wheels/: run benchmarks/gpu_wheels.sh where a registry is reachable, and carry the folder" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "${wheels[@]}" .
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed for this run into .gpu-site: ${wheels[*]##*/} and layercut (--no-index --no-deps)"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
