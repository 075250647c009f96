"""Peak memory at real model sizes: score, a teacher-forced sweep, prune + reload check, heal.

Each shape is a `random:NAME` checkpoint (seeded random bf16 weights of the real configuration,
built locally, nothing downloaded). Each command runs as the installed `layercut` console script
in its own process; its peak resident memory comes from the kernel (`os.wait4`'s ru_maxrss) and
is printed against the checkpoint's size on disk (= the loaded model's bytes in bf16) and, for
prune and heal, against the pruned model's size. `runtime` is the peak of a process that only
imports torch, transformers and layercut; `load` is the peak of a process that only loads the
model (bf16): a step's peak minus it, over the model's size, is what the step adds in model copies.

    python benchmarks/bench_scale.py                       # the small shapes (minutes)
    python benchmarks/bench_scale.py --shapes qwen2.5-7b-instruct,meta-llama-3-8b,qwen2.5-vl-7b-instruct
    python benchmarks/bench_scale.py --json runs/scale.json --keep   # keep the random folders

The random folders are removed after each shape unless --keep (an 8B one is 16 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = "qwen2.5-0.5b-instruct,qwen2.5-1.5b-instruct,qwen2.5-3b-instruct"
STEPS = ("score", "sweep", "prune", "heal")
DROP = 2  # layers pruned (the two after the first, so the protected ones stay)


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident GB, seconds) of one command, which must succeed."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{err[-2000:]}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - t


def size_gb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30


def calibration(path: Path) -> Path:
    rows = [{"domain": "math", "text": "Tom has 12 apples and buys 30 more, so he has 42 apples. " * 3},
            {"domain": "general", "text": "The river runs past the mill and down to the sea. " * 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    return path


def bench(shape: str, work: Path, steps: list[str], env: dict[str, str]) -> dict:
    # Everything heavy runs in children: a child's peak counts its parent's peak at fork time
    # (Linux carries the pre-exec high-water mark into ru_maxrss), so this process stays small.
    t = time.perf_counter()
    build = subprocess.run([sys.executable, "-c", "import sys; from layercut import api; "
                            "print(api.resolve_model('random:' + sys.argv[1]))", shape],
                           env=env, capture_output=True, text=True, check=True)
    folder = Path(build.stdout.strip().splitlines()[-1])
    built = time.perf_counter() - t
    config = json.loads((folder / "config.json").read_text())
    layers = config.get("text_config", config)["num_hidden_layers"]
    model = size_gb(folder)
    published = json.loads((ROOT / "layercut" / "models" / "shapes" / f"{shape}.json").read_text())["params"]
    row: dict = {"shape": shape, "params_B": published / 1e9, "layers": layers, "model_GB": model,
                 "build_s": built, "folder": str(folder)}
    cli = [str(Path(sys.executable).with_name("layercut"))]
    calib = calibration(work / "calib.jsonl")
    d = work / shape
    commands = {
        "score": ["score", "--model", folder, "--calib", calib, "--out", d / "scores.json", "--dtype", "bf16",
                  "--max-length", "64", "--batch-size", "2"],
        "sweep": ["sweep", "--model", folder, "--scores", d / "scores.json", "--methods", "last",
                  "--budgets", f"0,{DROP}", "--tasks", "nll-general", "--limit", "2", "--dtype", "bf16",
                  "--out", d / "sweep"],
        "prune": ["prune", "--model", folder, "--drop", ",".join(str(i) for i in range(1, 1 + DROP)),
                  "--dtype", "bf16", "--calib", calib, "--out", d / "pruned"],
        "heal": ["heal", "--model", d / "pruned", "--out", d / "healed", "--data", calib, "--steps", "1",
                 "--batch-size", "1", "--max-length", "32", "--dtype", "bf16"],
    }
    load = [sys.executable, "-c", "import sys, torch; from layercut import models; "
            "models.load(sys.argv[1], torch.bfloat16)", str(folder)]
    row["load_GB"], _ = peak_rss(load, env)
    for step in steps:
        gb, seconds = peak_rss(cli + [str(a) for a in commands[step]], env)
        row[f"{step}_GB"], row[f"{step}_s"] = gb, seconds
        row[f"{step}_x_model"] = gb / model
        row[f"{step}_over_load_x_model"] = (gb - row["load_GB"]) / model  # what the step adds, in models
        if step in ("prune", "heal"):
            row[f"{step}_x_pruned"] = gb / size_gb(d / "pruned")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SMALL, help="comma-separated names of layercut.models.shapes")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep the random:NAME folders in the cache")
    args = ap.parse_args()
    known = sorted(f.stem for f in (ROOT / "layercut" / "models" / "shapes").glob("*.json"))
    if bad := [x for x in args.shapes.split(",") if x not in known]:
        ap.exit(2, f"bench_scale: unknown shape '{bad[0]}': use one of {', '.join(known)}\n")
    if bad := [x for x in args.steps.split(",") if x not in STEPS]:
        ap.exit(2, f"bench_scale: unknown step '{bad[0]}': use one of {', '.join(STEPS)}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TQDM_DISABLE": "1"}
    runtime, _ = peak_rss([sys.executable, "-c", "import torch, transformers, layercut.api, layercut.cli"], env)
    print(f"runtime (imports only): {runtime:.2f} GB peak RSS")
    steps = args.steps.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="layercut-scale-") as tmp:
        for shape in args.shapes.split(","):
            row = bench(shape, Path(tmp), steps, env)
            rows.append(row)
            parts = [f"{s} {row[f'{s}_GB']:.2f} GB = {row[f'{s}_x_model']:.2f}x" +
                     (f" ({row[f'{s}_x_pruned']:.2f}x pruned)" if f"{s}_x_pruned" in row else "")
                     + f" in {row[f'{s}_s']:.0f} s" for s in steps]
            print(f"{shape}: {row['params_B']:.2f}B, {row['layers']} layers, {row['model_GB']:.2f} GB bf16 "
                  f"(built in {row['build_s']:.0f} s), load {row['load_GB']:.2f} GB: " + "; ".join(parts),
                  flush=True)
            if not args.keep:
                shutil.rmtree(Path(row["folder"]), ignore_errors=True)
            shutil.rmtree(Path(tmp) / shape, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runtime_GB": runtime, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the children got it too; their temporary folders are gone with them
        print("bench_scale: interrupted, no figures written", file=sys.stderr)
        sys.exit(130)
