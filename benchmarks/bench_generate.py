"""Greedy generation speed: the unpruned model, a layer-skip view and the saved pruned checkpoint.

    python benchmarks/bench_generate.py                       # SmolLM2 on CPU, fp32
    python benchmarks/bench_generate.py --device cuda --dtype bf16 --batch-size 32

For k = 4, 8, 12 dropped layers (`--method`, default uniform) it times batched, left-padded
greedy decoding with the KV cache (every row makes exactly `--new-tokens` tokens, so every way
does the same work), and prints tokens/s of each way, their ratio to the unpruned model, and the
ideal L / (L - k) that removing k of L decoder layers could give if nothing else cost time (the
embedding, the final norm, the LM head and the per-step overhead do not shrink). "same tokens"
checks that the view and the reloaded checkpoint emit identical tokens. All figures come from one
run, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from layercut import api, selection, surgery
from layercut.data.builtin import build_samples

MODEL = "smollm2-135m"


def prompts(n: int) -> list[str]:
    """GSM8K questions from the built-in held-out split (real text, offline)."""
    math = [s for s in build_samples("text", n, seed=0, split="eval") if s.domain == "math"]
    return [f"Question: {s.meta['question']}\nAnswer:" for s in math[:n]]


def batches(adapter, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    tok = adapter.tokenizer
    tok.padding_side = "left"  # new tokens follow every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = adapter.input_device
    return [{k: v.to(device) for k, v in tok(texts[i:i + batch_size], return_tensors="pt", padding=True).items()}
            for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def decode(adapter, inputs: list[dict[str, torch.Tensor]], new_tokens: int, rounds: int) -> tuple[float, list]:
    """(generated tokens per second, fastest of `rounds`; the generated ids)."""
    model = adapter.model
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                  pad_token_id=adapter.tokenizer.pad_token_id)
    model.generate(**inputs[0], **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    best, outs = float("inf"), []
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs = [model.generate(**b, **kwargs)[:, b["input_ids"].shape[1]:].cpu() for b in inputs]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    tokens = sum(o.numel() for o in outs)
    return tokens / best, outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=MODEL)
    p.add_argument("--budgets", default="4,8,12")
    p.add_argument("--method", default="uniform", help="a method that needs no scores: uniform, last, random")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    def load(name: str):
        adapter = api.load_model(name, args.dtype)
        adapter.model.to(args.device)
        return adapter

    adapter = load(args.model)
    L = adapter.num_layers
    texts = prompts(args.prompts)
    inputs = batches(adapter, texts, args.batch_size)
    prompt_tokens = sum(int(b["attention_mask"].sum()) for b in inputs)
    print(f"{args.model}: {L} decoder layers, {args.dtype} on {args.device}, {len(texts)} prompts "
          f"({prompt_tokens} tokens), batch {args.batch_size}, {args.new_tokens} new tokens each, "
          f"fastest of {args.rounds}; drop sets by '{args.method}'")
    base, base_out = decode(adapter, inputs, args.new_tokens, args.rounds)
    print(f"unpruned: {base:,.1f} tokens/s")
    header = ("k", "kept", "view tok/s", "pruned tok/s", "view/unpruned", "pruned/unpruned", "ideal L/(L-k)",
              "same tokens")
    rows = []
    with tempfile.TemporaryDirectory(prefix="layercut-bench-generate-") as tmp:
        for k in [int(x) for x in args.budgets.split(",")]:
            drop = selection.select(None, args.method, k, num_layers=L,
                                    protect=selection.protect_set(L, None, adapter.protected_layers())).drop
            with surgery.skipped(adapter, drop):
                view, view_out = decode(adapter, inputs, args.new_tokens, args.rounds)
            folder = Path(tmp) / f"k{k}"
            api.prune(load(args.model), drop=drop, out=folder)
            pruned_adapter = load(str(folder))
            pruned, pruned_out = decode(pruned_adapter, inputs, args.new_tokens, args.rounds)
            del pruned_adapter
            same = all(torch.equal(a, b) for a, b in zip(view_out, pruned_out))
            rows.append((k, L - k, f"{view:,.1f}", f"{pruned:,.1f}", f"{view / base:.2f}", f"{pruned / base:.2f}",
                         f"{L / (L - k):.2f}", "yes" if same else "NO"))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print(" | ".join(str(c).rjust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
