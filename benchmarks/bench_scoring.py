"""What layercut's streaming scoring costs, against plain inference and the peers' approach.

Three ways over the same pre-encoded batches of the built-in text calibration set (math +
general; tokenisation is done once, before anything is timed), on the default model
(SmolLM2-135M-Instruct, 30 layers):

  (a) plain inference: `model(**inputs, use_cache=False)`, no hooks;
  (b) layercut: `layercut.scoring.score(adapter, batches)` (scope "all", block_tokens "last"),
      forward hooks on every decoder layer, sums folded per batch, nothing kept;
  (c) the peers' way (short-transformers, PruneMe): `model(**inputs, output_hidden_states=True)`,
      keep the batch's L+1 hidden states, then per layer the mean cosine between consecutive
      hidden states over non-padding tokens (pooled by token count, as (b) pools).

Time: a warm-up of each way on the smallest batch, then `--rounds` rounds. A round walks the
batches; on each batch the three ways run back to back, in an order that rotates from one batch
to the next, and each call is timed (for (b) that is a whole `score(adapter, [batch])` call, hooks
registered and results made each time: a little more than one call over all batches would cost).
Interleaving per batch (a few seconds each) rather than per pass keeps the load of other
processes on this shared machine from landing on one way only: with whole passes in turn, one
loaded run moved a way's round time from 22 s to 49 s. A way's round time is the sum over the
batches; "time x(a)" is the median over rounds of the round's ratio to (a). One torch thread
(`--threads`, default 1): on these 2-core machines the second core is usually busy, and two
threads were slower than one.

Peak memory: each way runs once in its own fresh subprocess (this script with `--mode mem`).
After loading the model and encoding the batches, the child resets the kernel's peak-RSS mark
(`echo 5 > /proc/self/clear_refs`, Linux >= 4.0) after one tiny forward of 8 tokens that pages
in the memory-mapped weights (the same for every way), notes VmRSS, runs its way over all batches and
reads VmHWM; the figure is the peak increase over that baseline. A fresh process per way keeps
one way's freed-but-cached allocator memory from hiding the next one's, and resetting the mark
keeps the model load's own peak out of it. The children run with glibc's
MALLOC_MMAP_THRESHOLD_=131072, so every tensor above 128 KiB gets its own mapping and goes back
to the kernel when freed: RSS then follows the live tensors. With glibc's default (a threshold
that moves at run time) the same child gave peaks up to 110 MiB apart from run to run; with the
fixed threshold, repeats agree to the MiB. Where clear_refs cannot be written, the child falls
back to `resource.getrusage(...).ru_maxrss` (monotonic per process, so it is only right when the
run peaks above the load) and says so.

At equal results: (b)'s per-layer cosine against (c)'s, both from the memory children (one
call over all batches each). On layers 0..L-2 they should agree to
float rounding. On the last layer (c) is biased: `output_hidden_states`' last entry is after the
final norm, so (c) compares the last layer's input with a normed output. Peers also count padded
positions; (c) keeps a padding-counting tally on the side (one extra sum of a [B, T] tensor per
layer) to show how far that moves the scores.

    python benchmarks/bench_scoring.py [--per-domain 16 --max-length 256 --batch-size 8 --rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from layercut.data.builtin import build_samples
from layercut.data.encode import encode_batches
from layercut.api import load_model
from layercut.scoring import score

MODEL = "smollm2-135m"
MMAP_THRESHOLD = "131072"  # bytes; glibc setting for the memory children (see above)
WAYS = {"a": "plain inference", "b": "layercut streaming", "c": "output_hidden_states"}


# ---- the three ways -------------------------------------------------------------------------


@torch.no_grad()
def plain(adapter, batches):
    for b in batches:
        adapter.model(**b.inputs, use_cache=False)
    return {}


def streaming(adapter, batches):
    return {"cosine": score(adapter, batches).combined().cosine}


@torch.no_grad()
def hidden_states(adapter, batches):
    L = adapter.num_layers
    sums, pad_sums = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    tokens = positions = 0
    for b in batches:
        hs = adapter.model(**b.inputs, use_cache=False, output_hidden_states=True).hidden_states
        mask = b.inputs["attention_mask"].bool()
        for l in range(L):
            cos = F.cosine_similarity(hs[l], hs[l + 1], dim=-1)  # [B, T]
            sums[l] += cos[mask].double().sum()
            pad_sums[l] += cos.double().sum()  # what a peer that counts padding sums
        tokens += int(mask.sum())
        positions += mask.numel()
        del hs
    return {"cosine": (sums / tokens).tolist(), "cosine_with_padding": (pad_sums / positions).tolist()}


RUN = {"a": plain, "b": streaming, "c": hidden_states}


# ---- setup and memory -----------------------------------------------------------------------


def setup(args):
    torch.set_num_threads(args.threads)
    adapter = load_model(MODEL)
    samples = build_samples("text", n_per_domain=args.per_domain, seed=0, split="calib")
    batches = list(encode_batches(adapter, samples, args.batch_size, args.max_length))
    return adapter, batches


def _status_kib(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.MULTILINE).group(1))


def measure_memory(args):
    """Child process: peak RSS increase of one way over the RSS after load and encoding."""
    adapter, batches = setup(args)
    # The weights are memory-mapped and only become resident when first used: one tiny forward
    # (the same for every way) pages them in, so the figure is the way's working memory.
    with torch.no_grad():
        adapter.model(input_ids=batches[0].inputs["input_ids"][:1, :8], use_cache=False)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (fallback)"
    base = _status_kib("VmRSS")
    out = RUN[args.way](adapter, batches)
    if method.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"base_kib": base, "peak_kib": peak, "method": method, **out}))


def memory_in_child(args, way):
    cmd = [sys.executable, __file__, "--mode", "mem", "--way", way, "--threads", str(args.threads),
           "--per-domain", str(args.per_domain), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the comparison -------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-domain", type=int, default=16, help="samples per domain (math, general)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds over the batches (a, b, c per batch)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, same in every process")
    p.add_argument("--mode", choices=["bench", "mem"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--way", choices=list(WAYS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "mem":
        return measure_memory(args)

    adapter, batches = setup(args)
    L = adapter.num_layers
    tokens = sum(int(b.inputs["attention_mask"].sum()) for b in batches)
    positions = sum(b.inputs["attention_mask"].numel() for b in batches)

    smallest = [min(batches, key=lambda b: b.inputs["input_ids"].numel())]
    for way in WAYS:
        RUN[way](adapter, smallest)  # warm-up
    times = {w: [] for w in WAYS}
    step = 0
    for r in range(args.rounds):
        spent = dict.fromkeys(WAYS, 0.0)
        for batch in batches:
            for way in list(WAYS)[step % 3:] + list(WAYS)[: step % 3]:
                gc.collect()
                t0 = time.perf_counter()
                RUN[way](adapter, [batch])
                spent[way] += time.perf_counter() - t0
            step += 1
        for way in WAYS:
            times[way].append(spent[way])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"({w}) {spent[w]:.1f} s" for w in WAYS), flush=True)

    mem = {}
    for way in WAYS:
        mem[way] = memory_in_child(args, way)
        print(f"memory ({way}) {WAYS[way]}: +{(mem[way]['peak_kib'] - mem[way]['base_kib']) / 1024:.0f} MiB",
              flush=True)

    med = {w: statistics.median(times[w]) for w in WAYS}
    ratio = {w: statistics.median(t / a for t, a in zip(times[w], times["a"])) for w in WAYS}
    inc = {w: (mem[w]["peak_kib"] - mem[w]["base_kib"]) / 1024 for w in WAYS}

    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    console.print(
        f"\nModel {MODEL} ({L} layers), {len(batches)} batches of <= {args.batch_size} "
        f"(built-in text calib, {args.per_domain} math + {args.per_domain} general, max_length "
        f"{args.max_length}): {tokens} tokens, {positions - tokens} padding positions "
        f"({(positions - tokens) / positions:.0%}). torch threads: {args.threads}. "
        f"Peak memory by {mem['a']['method']}, one subprocess per way (MALLOC_MMAP_THRESHOLD_="
        f"{MMAP_THRESHOLD}); baseline after load, encoding and an 8-token warm-up "
        f"{mem['a']['base_kib'] / 1024:.0f} MiB."
    )
    table = Table(title="Scoring cost vs plain inference (same batches)")
    for col in ("way", f"median s ({args.rounds} rounds)", "time ×(a)", "rounds s",
                "peak +MiB", "peak ×(a)"):
        table.add_column(col, justify="left" if col in ("way", "rounds s") else "right")
    for w in WAYS:
        table.add_row(
            f"({w}) {WAYS[w]}", f"{med[w]:.2f}", f"{ratio[w]:.3f}",
            " ".join(f"{t:.1f}" for t in times[w]), f"{inc[w]:.0f}", f"{inc[w] / inc['a']:.2f}",
        )
    console.print(table)

    b, c, cpad = mem["b"]["cosine"], mem["c"]["cosine"], mem["c"]["cosine_with_padding"]
    inner = max(abs(b[l] - c[l]) for l in range(L - 1))
    last = abs(b[L - 1] - c[L - 1])
    pad = max(abs(b[l] - cpad[l]) for l in range(L - 1))
    pad_layer = max(range(L - 1), key=lambda l: abs(b[l] - cpad[l]))

    def first_cut(s):  # the most removable unprotected layer: highest cosine among 1..L-2
        return max(range(1, L - 1), key=lambda l: s[l])

    console.print("\nAt equal results (per-layer mean cosine, (b) vs (c)):")
    console.print(f"  layers 0..{L - 2}: max |b - c| = {inner:.2e}")
    console.print(f"  last layer {L - 1}: |b - c| = {last:.4f}  (b {b[L - 1]:.4f}, c {c[L - 1]:.4f}: "
                  "(c) compares with the output after the final norm)")
    console.print(f"  (c) counting padding too, layers 0..{L - 2}: max |b - c_pad| = {pad:.4f} "
                  f"(layer {pad_layer}); first layer to cut: b {first_cut(b)}, c {first_cut(c)}, "
                  f"c_pad {first_cut(cpad)}")

    t_ok = ratio["b"] <= 1.05
    m_ok = inc["b"] < inc["c"]
    console.print("\nTargets:")
    console.print(f"  (b) time <= 1.05x plain: {'yes' if t_ok else 'no'} "
                  f"({ratio['b']:.3f}x; (c) {ratio['c']:.3f}x)")
    console.print(f"  (b) peak memory below (c): {'yes' if m_ok else 'no'} "
                  f"(+{inc['b']:.0f} MiB vs +{inc['c']:.0f} MiB; {inc['b'] / inc['c']:.2f}x of (c))")


if __name__ == "__main__":
    main()
