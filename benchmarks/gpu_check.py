"""The GPU check (run by gpu_check.sh): four figures, each measured side by side in this run.

1. scoring cost: the streaming scoring pass (hooks on every layer) / a plain forward of the same
   batches, SmolLM2 on the built-in text set, bf16 on CUDA (fp32 on CPU);
2. pruned decode speed: `bench_generate.py` (tokens/s of the view and of the saved checkpoint,
   as ratios to the unpruned model and to the ideal L / (L - k));
3. CUDA vs CPU: max |difference| of the default model's per-layer cosine scores, fp32 on both
   (CUDA only);
4. a harness sweep: lmms-eval on local image questions, tiny-llava, 2 methods x 3 budgets, on
   CUDA where there is one (`--device-map auto`), with its wall time.
On a machine without CUDA every line still runs on the CPU except (3), which says it skipped.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness sweep borrows the test suite's local task files

from layercut import api  # noqa: E402
from layercut.data.calibration import calibration  # noqa: E402
from layercut.data.encode import encode_batches  # noqa: E402
from layercut.scoring import score  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def load(dtype: str, device: str):
    adapter = api.load_model("smollm2-135m", dtype)
    adapter.model.to(device)
    return adapter


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@torch.no_grad()
def scoring_cost() -> None:
    dtype = "bf16" if CUDA else "fp32"
    adapter = load(dtype, DEVICE)
    n = 32 if CUDA else 6  # per domain; CPU only shows that the line runs
    batches = list(encode_batches(adapter, calibration(f"builtin:text:{n}"), batch_size=16, max_length=256))
    adapter.model(**batches[0].inputs, use_cache=False, logits_to_keep=1)  # warm-up
    times = {}
    for way in ("plain", "scoring", "plain ", "scoring "):  # interleaved, fastest of two each
        sync()
        t = time.perf_counter()
        if way.strip() == "plain":
            for b in batches:
                adapter.model(**b.inputs, use_cache=False, logits_to_keep=1)
        else:
            score(adapter, batches)
        sync()
        times[way.strip()] = min(times.get(way.strip(), float("inf")), time.perf_counter() - t)
    tokens = sum(b.tokens for b in batches)
    print(f"[1] scoring / plain forward, {dtype} on {DEVICE}, {tokens} tokens: "
          f"{times['scoring']:.3f} s / {times['plain']:.3f} s = {times['scoring'] / times['plain']:.2f}x")


def decode_speed() -> None:
    args = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--device", DEVICE,
            "--dtype", "bf16" if CUDA else "fp32"]
    if CUDA:
        args += ["--batch-size", "32", "--prompts", "64", "--new-tokens", "64"]
    else:
        args += ["--prompts", "8", "--new-tokens", "16", "--rounds", "1"]
    print("[2] pruned decode speed (bench_generate.py):", flush=True)
    subprocess.run(args, check=True)


@torch.no_grad()
def cuda_vs_cpu() -> None:
    if not CUDA:
        print("[3] CUDA vs CPU scores: skipped (no CUDA here)")
        return
    samples = calibration("builtin:text:8")
    got = {}
    for device in ("cpu", "cuda"):
        adapter = load("fp32", device)
        got[device] = score(adapter, encode_batches(adapter, samples, batch_size=8, max_length=256))
    diff = max(abs(a - b) for d in got["cpu"].domains
               for a, b in zip(got["cpu"].domains[d].cosine, got["cuda"].domains[d].cosine))
    print(f"[3] CUDA vs CPU per-layer cosine, fp32: max |diff| = {diff:.2e}")


def harness_sweep() -> None:
    from tests.test_bridges import write_lmms_tasks

    from layercut.sweep import SweepSpec

    with tempfile.TemporaryDirectory(prefix="layercut-gpu-check-") as tmp:
        tasks = write_lmms_tasks(Path(tmp) / "tasks")
        spec = SweepSpec(model="tiny-llava", methods=["uniform", "last"], budgets=[0, 2, 4],
                         tasks=["lmms-eval:layercut_colours_gen", "lmms-eval:layercut_colours_mc"],
                         include_path=str(tasks), batch_size=8, device_map="auto" if CUDA else None,
                         dtype="bf16" if CUDA else "fp32")
        api.resolve_model("tiny-llava")  # built once, outside the timing
        t = time.perf_counter()
        df = api.sweep(spec, Path(tmp) / "sweep")
        seconds = time.perf_counter() - t
        units = len(df.drop_duplicates(["task", "drop"]))
    table = df.pivot_table(index=["task", "metric", "budget"], columns="method", values="value")
    print(f"[4] lmms-eval sweep of tiny-llava on {DEVICE}: 2 methods x 3 budgets x 2 tasks, {units} distinct "
          f"evaluations in {seconds:.1f} s\n{table.to_string()}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    print(f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if CUDA else 'none'}")
    for check in (scoring_cost, decode_speed, cuda_vs_cpu, harness_sweep):
        t = time.perf_counter()
        check()
        print(f"    ({time.perf_counter() - t:.0f} s)", flush=True)
