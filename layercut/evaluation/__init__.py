"""Teacher-forced measurements of a (possibly pruned) model on encoded batches."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from layercut.scoring import Batch


@torch.no_grad()
def token_nll(adapter: Any, batches: Iterable[Batch]) -> dict[str, float]:
    """Mean next-token negative log-likelihood per domain (and "all"), over real text tokens.

    Padding and image tokens are never targets.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        inputs = adapter.complete_inputs(batch.inputs)
        ids = inputs["input_ids"]
        attn = inputs.get("attention_mask", torch.ones_like(ids)).bool()
        target_ok = attn[:, 1:] & attn[:, :-1] & ~adapter.image_mask(ids)[:, 1:]
        logits = adapter.model(**inputs, use_cache=False).logits[:, :-1][target_ok].float()
        targets = ids[:, 1:][target_ok]
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        sums[batch.domain] = sums.get(batch.domain, 0.0) + float(nll)
        counts[batch.domain] = counts.get(batch.domain, 0) + int(target_ok.sum())
    out = {d: sums[d] / max(counts[d], 1) for d in sums}
    out["all"] = sum(sums.values()) / max(sum(counts.values()), 1)
    return out
