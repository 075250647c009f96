"""Decode speed of the default model with 0, 6 and 12 decoder layers dropped.

SmolLM2-135M-Instruct (30 layers). The dropped layers are chosen by
`layercut.selection.select(None, "uniform", k, num_layers=30, protect={0, 29})`: every layer has
the same size, so which ones go does not change the speed, and no scoring pass is needed. Each
budget runs inside `layercut.surgery.skipped(adapter, drop)`, the same surgery as `drop_layers`
applied to the one loaded model and undone afterwards (no copy), so every budget shares the
same weights in memory.

Each run is greedy `generate` at batch 1 on a fixed prompt with
`min_new_tokens = max_new_tokens = N` (default 64), so every run decodes exactly N tokens.
Two figures per run:
  - tokens/s end to end: N / wall time of `generate` (prefill included);
  - decode ms/token, prefill-free: a logits processor stamps the clock once per step, right after
    each forward; (last stamp - first stamp) / (N - 1) is the time per cached decode step.
One warm-up run per budget, then `--repeats` rounds with the budget order rotating each round;
medians are reported. One torch thread (`--threads`, default 1): on these 2-core machines the
other core is usually busy.

Ideal speed-up L/(L-k) assumes all time is in the decoder layers. The LM head (49k vocabulary x
576, tied to the embeddings) is paid per token whatever k is, so the table also gives the
parameter-weighted ideal (L*P_layer + P_head) / ((L-k)*P_layer + P_head), the most a memory- or
FLOP-bound decode step could gain. "of ideal" is the decode speed-up over L/(L-k).

    python benchmarks/bench_pruned_speed.py [--budgets 0,6,12 --new-tokens 64 --repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from layercut.api import load_model
from layercut.selection import select
from layercut.surgery import skipped

MODEL = "smollm2-135m"
PROMPT = "Question: Why is the sky blue? Explain it to a ten-year-old.\nAnswer:"


class Stamps(LogitsProcessor):
    """Records the clock at each decoding step (called once per forward, after it)."""

    def __init__(self):
        self.t = []

    def __call__(self, input_ids, scores):
        self.t.append(time.perf_counter())
        return scores


@torch.no_grad()
def run(adapter, inputs, drop, n):
    """One greedy generate of exactly n new tokens without `drop`: (seconds, decode s/token, ids)."""
    stamps = Stamps()
    with skipped(adapter, drop):
        t0 = time.perf_counter()
        out = adapter.model.generate(
            **inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n,
            logits_processor=LogitsProcessorList([stamps]), pad_token_id=adapter.tokenizer.eos_token_id,
        )
        total = time.perf_counter() - t0
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) == n and len(stamps.t) == n, (len(new), len(stamps.t))
    return total, (stamps.t[-1] - stamps.t[0]) / (n - 1), new


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="0,6,12", help="comma-separated layer counts to drop")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per run (N >= 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (budget order rotates)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    adapter = load_model(MODEL)
    L = adapter.num_layers
    n = args.new_tokens
    budgets = [int(k) for k in args.budgets.split(",")]
    drops = {k: select(None, "uniform", k, num_layers=L, protect={0, L - 1}).drop for k in budgets}
    inputs = adapter.tokenizer(PROMPT, return_tensors="pt")

    p_layer = sum(p.numel() for p in adapter.layers[0].parameters())
    p_head = adapter.model.get_output_embeddings().weight.numel()

    texts = {}
    for k in budgets:  # warm-up, and the text each budget writes
        texts[k] = adapter.tokenizer.decode(run(adapter, inputs, drops[k], n)[2], skip_special_tokens=True)
    total = {k: [] for k in budgets}
    decode = {k: [] for k in budgets}
    for r in range(args.repeats):
        for k in budgets[r % len(budgets):] + budgets[: r % len(budgets)]:
            t, d, _ = run(adapter, inputs, drops[k], n)
            total[k].append(t)
            decode[k].append(d)
            print(f"round {r + 1}/{args.repeats} k={k}: {n / t:.1f} tok/s, decode {1000 * d:.1f} ms/token",
                  flush=True)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    console.print(
        f"\nModel {MODEL} ({L} layers; {p_layer / 1e6:.2f}M parameters per layer, LM head "
        f"{p_head / 1e6:.1f}M), greedy batch 1, prompt {inputs['input_ids'].shape[1]} tokens, "
        f"{n} new tokens per run, median of {args.repeats} rounds, torch threads: {args.threads}. "
        "Drops: select(None, 'uniform', k, protect={0, 29})."
    )
    table = Table(title="Pruned decode speed (layercut.surgery.skipped on one loaded model)")
    for col in ("k", "dropped", "tok/s (e2e)", "speed-up", "decode ms/tok", "decode speed-up",
                "ideal L/(L-k)", "of ideal", "ideal w/ head", "of w/ head"):
        table.add_column(col, justify="left" if col == "dropped" else "right")
    base_t = statistics.median(total[budgets[0]])
    base_d = statistics.median(decode[budgets[0]])
    for k in budgets:
        t, d = statistics.median(total[k]), statistics.median(decode[k])
        ideal = L / (L - k)
        ideal_head = (L * p_layer + p_head) / ((L - k) * p_layer + p_head)
        table.add_row(
            str(k), " ".join(map(str, sorted(drops[k]))) or "-", f"{n / t:.1f}", f"{base_t / t:.2f}x",
            f"{1000 * d:.1f}", f"{base_d / d:.2f}x", f"{ideal:.2f}x", f"{base_d / d / ideal:.0%}",
            f"{ideal_head:.2f}x", f"{base_d / d / ideal_head:.0%}",
        )
    console.print(table)
    if budgets[0] != 0:
        console.print(f"(speed-ups are relative to the first budget, k={budgets[0]})")
    console.print("What each budget writes (uniform drops, no healing: this shows the model runs, not its quality):")
    for k in budgets:
        console.print(f"  k={k:>2}: {texts[k][:90]!r}")


if __name__ == "__main__":
    main()
