"""How much a short LoRA heal recovers after depth pruning, on the default model.

One process, one loaded SmolLM2-135M-Instruct (30 layers, fp32, CPU):
  1. score every layer on the built-in text calibration set (`builtin:text:N`, calib split:
     N math + N general samples), as `layercut score` does;
  2. for each budget k: select k layers with `--method` (default `bi`, ShortGPT's Block
     Influence), and inside a layer-skip view (`surgery.skipped`, the same model as a saved pruned
     checkpoint: the tests prove they give equal logits) measure held-out NLL;
  3. heal that view with `layercut.heal.healed` (LoRA on every linear module of the kept
     layers, trained on the same calibration samples, seeded), measure again, and undo the
     LoRA exactly before the next budget.
NLL is the mean next-token negative log-likelihood per target token of the built-in *eval*
split (`builtin` split="eval": other GSM8K problems / other prose than the calibration split),
per domain (math, general). Budget 0 heals the unpruned model with the same recipe: a control
that separates recovering what pruning broke from adapting to the calibration data.

Timing: `time.process_time()` (CPU seconds of this process, all threads) and wall seconds, per
phase; one torch thread by default (`--threads`), since the machines are 2-core and shared.

    python benchmarks/heal_recovery.py [--budgets 0,4,8,12 --steps 40 --lr 1e-3 --calib-n 24 --eval-n 16]

Prints a markdown table and writes the numbers as JSON (`--out`, default
runs/heal_recovery.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="bi")
    ap.add_argument("--budgets", default="0,4,8,12", help="0 heals the unpruned model: a control")
    ap.add_argument("--calib-n", type=int, default=24, help="calibration samples per domain")
    ap.add_argument("--eval-n", type=int, default=16, help="held-out samples per domain")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/heal_recovery.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from layercut import api, surgery
    from layercut.data import builtin
    from layercut.data.encode import encode_batches
    from layercut.evaluation import token_nll
    from layercut.heal import healed

    timings: dict[str, float] = {}

    def clock(name: str, t0: tuple[float, float]) -> None:
        timings[f"{name}_cpu_s"] = round(timings.get(f"{name}_cpu_s", 0) + time.process_time() - t0[0], 1)
        timings[f"{name}_wall_s"] = round(timings.get(f"{name}_wall_s", 0) + time.perf_counter() - t0[1], 1)

    def now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    start = now()
    t = now()
    adapter = api.load_model(args.model)
    calib_name = f"builtin:text:{args.calib_n}"
    calib = api.calibration(calib_name, seed=args.seed)
    held_out = builtin.build_samples("text", args.eval_n, seed=args.seed, split="eval")
    eval_batches = list(encode_batches(adapter, held_out, batch_size=8, max_length=args.max_length))
    clock("load", t)

    t = now()
    scores = api.score(adapter, calib, max_length=args.max_length)
    clock("score", t)

    def nll() -> dict[str, float]:
        with torch.no_grad():
            return {k: round(v, 4) for k, v in token_nll(adapter, eval_batches).items()}

    t = now()
    base = nll()
    clock("eval", t)
    rows = []
    for k in [int(b) for b in args.budgets.split(",")]:
        drop = api.select(scores, args.method, k, model=adapter).drop
        with surgery.skipped(adapter, drop):
            t = now()
            pruned = nll()
            clock("eval", t)
            t = now()
            heal_cpu = time.process_time()
            with healed(adapter, calib, steps=args.steps, rank=args.rank, lr=args.lr, seed=args.seed,
                        batch_size=args.batch_size, max_length=args.max_length, measure=False) as stats:
                clock("heal", t)
                heal_cpu = time.process_time() - heal_cpu
                t = now()
                after = nll()
                clock("eval", t)
        rows.append({"budget": k, "drop": sorted(drop), "pruned": pruned, "healed": after,
                     "heal_seconds": stats.seconds, "heal_cpu_s": round(heal_cpu, 1),
                     "heal_tokens": stats.tokens_seen,
                     "loss_first": round(stats.loss_first, 4), "loss_last": round(stats.loss_last, 4)})
        print(f"budget {k}: drop {sorted(drop)} pruned {pruned} healed {after} "
              f"({stats.seconds:.0f} s heal)", flush=True)
    clock("total", start)

    result = {
        "args": vars(args), "calibration": calib_name, "eval": f"builtin text eval split, {args.eval_n} per domain",
        "eval_tokens": int(sum(int(b.inputs["attention_mask"].sum()) - b.inputs["input_ids"].shape[0]
                               for b in eval_batches)),
        "unpruned": base, "rows": rows, "timings": timings,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {out}")


def table(r: dict) -> str:
    """Per domain: NLL before pruning, after pruning, after healing (budget 0 = heal only)."""
    domains = [d for d in r["unpruned"] if d != "all"]
    head = "| budget | dropped layers | " + " | ".join(
        f"{d}: before | pruned | healed" for d in domains) + " | heal CPU s |"
    lines = [head, "|---|---|" + "---|" * (3 * len(domains)) + "---|"]
    for row in r["rows"]:
        cells = [f"{r['unpruned'][d]:.3f} | {row['pruned'][d]:.3f} | **{row['healed'][d]:.3f}**" for d in domains]
        lines.append(f"| {row['budget']} | {', '.join(map(str, row['drop'])) or 'none'} | "
                     + " | ".join(cells) + f" | {row['heal_cpu_s']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
