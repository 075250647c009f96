"""INTERLACE vs the domain-aware picks, each healed with LoRA and with interleaved fine-tuning.

For each model (default: SmolLM2-135M-Instruct, text; tiny-llava, the zoo's VLM) and each budget
(10 % and 25 % of the decoder layers, rounded down as INTERLACE does), in one process:
  1. score the layers once on the built-in calibration set (`builtin:text:N`, or `builtin:vision:N`
     for a VLM), as `layercut score` does;
  2. pick the layers to drop with `interlace` and with `math`, `general`, `mixed`; the layers to
     fine-tune in full are the selection's own for `interlace` and, for the others,
     `interlace.train_next` (the first kept, unprotected layer after each dropped one): one fully
     trained layer per drop, the same healing budget;
  3. inside a layer-skip view of the pick (equal to the saved pruned checkpoint), evaluate it
     unhealed, then healed with LoRA on every kept layer, then healed by interleaved fine-tuning
     (`heal.healed(..., train_layers=...)`): same calibration samples, steps, batch size, seeded
     order; each heal is undone bit for bit before the next.
Retention per domain, on held-out documents: accuracy / unpruned accuracy for the VLM's choice
tasks (math-vision, general-vision), and unpruned perplexity / perplexity (= exp(NLL_unpruned -
NLL)) for the text model's teacher-forced tasks (nll-math, nll-general). The interval is a paired
percentile bootstrap over documents (the same resampled documents for the pick and the unpruned
model), 95 %.

    python benchmarks/interlace_head_to_head.py [--models smollm2-135m,tiny-llava --fractions 0.1,0.25
        --steps 8 --lr-lora 1e-3 --lr-full 1e-4 --calib-n 12 --limit 16 --threads 2]

The two learning rates differ on purpose (a LoRA update and a full-weight update are not on the
same scale) and are not tuned. Prints a markdown table; writes the numbers as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TASKS = {False: ("nll-math", "nll-general"), True: ("math-vision", "general-vision")}  # by: is a VLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,tiny-llava", help="also: tiny-llava-nodrop")
    ap.add_argument("--fractions", default="0.1,0.25", help="budgets as fractions of the layers")
    ap.add_argument("--methods", default="math,general,mixed",
                    help="compared with interlace; NAME+guard protects the probe's critical layers first "
                         "(probed once on the calibration samples)")
    ap.add_argument("--interlace", action=argparse.BooleanOptionalAction, default=True,
                    help="also run interlace itself (--no-interlace: only --methods, to add to an earlier run)")
    ap.add_argument("--calib-n", type=int, default=12, help="calibration (and healing) samples per domain")
    ap.add_argument("--limit", type=int, default=16, help="held-out documents per task")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr-lora", type=float, default=1e-3)
    ap.add_argument("--lr-full", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/interlace_head_to_head.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += run_model(name, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print()
    print(table(rows))
    print(f"\n{time.perf_counter() - t0:.0f} s wall; wrote {out}")


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (budget, method, healing) cell of one model."""
    from layercut import api, interlace, surgery
    from layercut.evaluation import prepare
    from layercut.heal import healed

    adapter = api.load_model(name)
    vlm = bool(adapter.family.vision)
    calib = api.calibration(f"builtin:{'vision' if vlm else 'text'}:{args.calib_n}", seed=args.seed)
    scores = api.score(adapter, calib, max_length=args.max_length)
    tasks = [prepare(t, adapter, limit=args.limit, seed=args.seed) for t in TASKS[vlm]]
    base = {p.task.domain: docs(adapter, p) for p in tasks}
    L = adapter.num_layers
    heal_opts = dict(steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                     max_length=args.max_length, measure=False)
    profile = None
    if any(m.endswith("+guard") for m in args.methods.split(",")):  # critical layers, probed once
        profile = api.probe(adapter, calib, max_length=args.max_length)
        print(f"{name}: probe flags layers {profile.flagged}", flush=True)
    rows = []
    done: dict[tuple, dict[str, Any]] = {}  # two methods with the same pick share their cells
    for k in sorted({max(1, int(L * float(f))) for f in args.fractions.split(",")}):
        for method in ["interlace"] * args.interlace + args.methods.split(","):
            sel = api.select(scores, method, k, probe=profile if method.endswith("+guard") else None)
            train = interlace.train_layers(sel)
            for mode in ("none", "lora", "interleaved"):
                key = (tuple(sorted(sel.drop)), tuple(sorted(train)) if mode == "interleaved" else (), mode)
                if key not in done:
                    t = time.perf_counter()
                    with surgery.skipped(adapter, sel.drop) as kept:
                        if mode == "none":
                            values = {p.task.domain: docs(adapter, p) for p in tasks}
                        elif mode == "lora":
                            with healed(adapter, calib, rank=args.rank, lr=args.lr_lora, **heal_opts):
                                values = {p.task.domain: docs(adapter, p) for p in tasks}
                        else:
                            with healed(adapter, calib, lr=args.lr_full, train_layers=train, kept=kept, **heal_opts):
                                values = {p.task.domain: docs(adapter, p) for p in tasks}
                    done[key] = {"values": values, "seconds": round(time.perf_counter() - t, 1)}
                cell = done[key]
                row = {"model": name, "budget": k, "layers": L, "method": method, "healing": mode,
                       "drop": sorted(sel.drop), "train": sorted(train) if mode == "interleaved" else [],
                       "seconds": cell["seconds"],
                       "retention": {d: retention(base[d], v, args.replicates, args.seed)
                                     for d, v in cell["values"].items()}}
                rows.append(row)
                print(line(row), flush=True)
    return rows


def docs(adapter: Any, prepared: Any) -> tuple[str, list[float], list[float]]:
    """(metric, value per document, weight per document) of the model as it is now."""
    from layercut.evaluation import evaluate
    from layercut.evaluation.runner import per_document

    details: list[dict] = []
    evaluate(adapter, prepared, details=details)
    metric = "nll" if prepared.task.kind == "nll" else "accuracy"
    values, weights = per_document(prepared.task.kind, details)[metric]
    return metric, values, weights


def retention(base: tuple, pick: tuple, replicates: int, seed: int) -> dict[str, float]:
    """Point estimate and paired 95 % bootstrap interval of the pick's retention of the base."""
    metric, b, w = base[0], np.asarray(base[1]), np.asarray(base[2])
    p = np.asarray(pick[1])

    def ratio(idx: np.ndarray) -> float:
        mb = float((b[idx] * w[idx]).sum() / w[idx].sum())
        mp = float((p[idx] * w[idx]).sum() / w[idx].sum())
        if metric == "nll":
            return math.exp(mb - mp)  # perplexity ratio: 1 = as good as unpruned
        return mp / mb if mb else float("nan")

    rng = np.random.default_rng(seed)
    n = len(b)
    boot = [ratio(rng.integers(0, n, n)) for _ in range(replicates)]
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"value": round(ratio(np.arange(n)), 3), "lo": round(float(lo), 3), "hi": round(float(hi), 3)}


def line(row: dict[str, Any]) -> str:
    r = "  ".join(f"{d} {v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for d, v in row["retention"].items())
    return f"{row['model']} k={row['budget']} {row['method']:8s} {row['healing']:11s} {r}  ({row['seconds']} s)"


def table(rows: list[dict[str, Any]]) -> str:
    domains = list(rows[0]["retention"]) if rows else []
    head = ("| model | budget | method | healing | dropped | trained in full | "
            + " | ".join(f"{d} retention [95 % CI]" for d in domains) + " |")
    lines = [head, "|---|---|---|---|---|---|" + "---|" * len(domains)]
    for row in rows:
        cells = [f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for v in row["retention"].values()]
        lines.append(f"| {row['model']} | {row['budget']}/{row['layers']} | {row['method']} | {row['healing']} | "
                     f"{', '.join(map(str, row['drop']))} | {', '.join(map(str, row['train'])) or '-'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
