"""The encoded rows and batched model calls that teacher-forced scoring and generation share.

`Context`, `Item` and `Prepared` hold what `runner.prepare` encodes once; `collate` pads rows into
one batch; `TeacherBatch` is a padded batch of teacher-forced rows and the positions it scores.
Tensors aligned with the token ids pad with zeros; over an appended continuation the type ids
are 0 (text) and a family's per-token inputs (`Family.token_inputs`, e.g. Mllama's
cross-attention mask) repeat the last context row, as the model's own `generate` extends them.

`logits_at` applies the LM head only at the scored positions (a pre-hook on the output embedding
gathers those hidden states), so a 49k-vocabulary head costs what the targets need; any logit
post-processing in the model's forward (e.g. Gemma's final soft-capping) still applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from layercut.errors import LayercutError
from layercut.evaluation.tasks import TaskSpec

SEQ_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")  # padded like input_ids


@dataclass
class Context:
    """One encoded prompt: token ids plus whatever else the processor produced."""

    ids: torch.Tensor  # 1-D long
    seq: dict[str, torch.Tensor] = field(default_factory=dict)  # 1-D type ids, aligned with ids
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # per-token inputs [T, ...]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values etc., dim 0 = batch/image


@dataclass
class Item:
    id: str
    context: Context
    continuations: list[torch.Tensor] = field(default_factory=list)  # nll: [gold]; choice: candidates
    gold: str | int = ""  # generate: gold answer; choice: index of the gold candidate
    question: str = ""  # shown to a judge
    chars: list[int] = field(default_factory=list)  # choice: characters per candidate


@dataclass
class Prepared:
    task: TaskSpec
    items: list[Item]
    stop: tuple[str, ...] = ()  # generate: stop strings (the task's plus the end of turn)
    shared_prefix: bool = False  # choice: candidates share the context's KV cache
    prefix_len: int = 0  # generate: tokens every prompt starts with (few-shot), cached once


@dataclass
class TeacherBatch:
    """One padded batch of teacher-forced rows and the positions it scores."""

    index: list[int]  # which rows (of the caller's list) the batch holds, in batch order
    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor  # scored positions: batch row ...
    cols: torch.Tensor  # ... and the position that predicts the target
    targets: torch.Tensor
    owner: torch.Tensor | None = None  # per scored position, its row in `index` (default: `rows`)


# --- batched model calls -------------------------------------------------------------------


def device_dtype(adapter: Any) -> tuple[torch.device, torch.dtype]:
    p = next(adapter.model.parameters())
    return p.device, p.dtype


def collate(adapter: Any, seqs: list[torch.Tensor], seq_extra: list[dict], extras: list[dict],
            left: bool, prefix: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Pad rows of ids (and their aligned tensors) to one batch; stack the other tensors.

    With `prefix`, each row is [prefix | padding | row] (left padding after a shared prefix)."""
    tok = adapter.tokenizer
    pad = getattr(tok, "pad_token_id", None)
    pad = 0 if pad is None else pad  # any id: padding is masked out
    P = 0 if prefix is None else len(prefix)
    width = P + max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, width), pad, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    if prefix is not None:
        ids[:, :P] = prefix
        mask[:, :P] = 1
    first = {k: v for d in seq_extra for k, v in d.items()}  # a row of each key: its shape, dtype
    aligned = {k: torch.zeros((B, width, *v.shape[1:]), dtype=v.dtype) for k, v in sorted(first.items())}
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(P, P + len(s))
        ids[r, sl] = s
        mask[r, sl] = 1
        for k in aligned:
            v = seq_extra[r].get(k)
            if v is not None:
                aligned[k][r, sl] = v
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask, **aligned}
    for k in sorted({k for d in extras for k in d}):
        inputs[k] = torch.cat([d[k] for d in extras], dim=0)
    inputs = adapter.complete_inputs(inputs)
    device, dtype = device_dtype(adapter)
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}


def continuation_of(ctx: Context, n: int) -> dict[str, torch.Tensor]:
    """The aligned tensors of `n` text tokens appended to the context: type ids 0, per-token
    inputs the context's last row repeated (an appended token sees what the last one saw)."""
    out = {k: torch.zeros(n, dtype=v.dtype) for k, v in ctx.seq.items()}
    out.update({k: v[-1:].expand(n, *v.shape[1:]) for k, v in ctx.tokens.items()})
    return out


def seq_of(ctx: Context, extra_len: int) -> dict[str, torch.Tensor]:
    """The context's aligned tensors, extended over a continuation of `extra_len` tokens."""
    tail = continuation_of(ctx, extra_len)
    return {k: torch.cat([v, tail[k]]) for k, v in {**ctx.seq, **ctx.tokens}.items()}


@contextlib.contextmanager
def _head_at(model: Any, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[bool]:
    """While active, the LM head sees only hidden states at (rows, cols): logits [1, N, V].

    Yields False (and changes nothing) when the model has no separate output embedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield False
        return

    def gather(module: Any, args: tuple) -> tuple:
        h = args[0]
        if h.dim() != 3:
            raise LayercutError("unexpected LM-head input shape: evaluate with full logits")
        return (h[rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield True
    finally:
        handle.remove()


def logits_at(adapter: Any, inputs: dict[str, torch.Tensor], rows: torch.Tensor,
              cols: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """Logits [N, V] at positions (rows[i], cols[i]) only, and the model output (for its cache)."""
    device = inputs["input_ids"].device
    rows, cols = rows.to(device), cols.to(device)
    with _head_at(adapter.model, rows, cols) as gathered:
        out = adapter.model(**inputs, **kwargs)
    logits = out.logits[0] if gathered else out.logits[rows, cols]
    return logits, out
