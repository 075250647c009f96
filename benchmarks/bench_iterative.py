"""CPU time of `iterative` (SLEB-like greedy) selection: a layer-skip view per candidate vs the
shared-work engine, on the default model, picks compared.

Each greedy round tries every remaining layer: round r evaluates ~L - r drop sets on the
calibration set. With a plain layer-skip view each candidate is a full forward. Through
`engine.SharedWork` (`engine.calibration_loss_fn(..., engine="trie")`, what `layercut select` and
`sweep` use) the round's candidates are one trie: a candidate c shares every layer before c with
the candidates after it, so a round costs about half the layer work, and the unpruned pass that
captures the layer inputs is done once for all rounds. The LM head still runs at every
calibration token for every candidate (the loss is the full next-token NLL). "layer passes"
counts decoder-layer forwards per calibration batch.

Both ways run in this process, one after the other, with the same torch thread count, and
report CPU seconds (`time.process_time`); the picks and the per-round losses must agree.

    python benchmarks/bench_iterative.py [--budget 4 --calib builtin:text:8 --max-length 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from layercut import api, selection
from layercut.engine import calibration_loss_fn

MODEL = "smollm2-135m"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--calib", default="builtin:text:8")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    adapter = api.load_model(MODEL)
    samples = api.calibration(args.calib)
    L = adapter.num_layers
    protect = set(adapter.protected_layers())
    rounds = [L - len(protect) - r for r in range(args.budget)]
    plain_passes = sum(n * (L - r - 1) for r, n in enumerate(rounds))
    print(f"{MODEL}: {L} layers; {args.calib} (max_length {args.max_length}); budget {args.budget}: "
          f"{sum(rounds)} candidate drop sets over {args.budget} rounds; {args.threads} torch thread(s)")
    results = {}
    for way in ("plain", "trie"):
        t = time.process_time()
        fn = calibration_loss_fn(adapter, samples, max_length=args.max_length, engine=way)
        sel = selection.select(None, "iterative", args.budget, num_layers=L, protect=protect, loss_fn=fn)
        cpu = time.process_time() - t
        passes = fn.engine.layer_calls // len(fn.engine.batches) if way == "trie" else plain_passes
        results[way] = (sel, cpu)
        print(f"  {way:5s}: {cpu:7.1f} CPU s, {passes} layer passes per batch, picks {sel.drop}, losses "
              + " ".join(f"{x:.5f}" for x in sel.params["losses"]))
    (plain, t_plain), (trie, t_trie) = results["plain"], results["trie"]
    diff = max(abs(a - b) for a, b in zip(plain.params["losses"], trie.params["losses"]))
    print(f"same picks: {plain.drop == trie.drop}; max |loss diff| {diff:.2e}; "
          f"engine {t_plain / t_trie:.2f}x faster in CPU time")


if __name__ == "__main__":
    main()
