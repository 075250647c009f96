"""Teacher-forced scoring: the nll and choice kinds, and the token NLL of calibration batches.

- choice: the log-likelihood of each full candidate continuation (cloze style), argmax ->
  {"accuracy", "accuracy_norm" (per character of the candidate, lm-eval's acc_norm), "n"}. The
  context is run once per document and its KV cache shared by the candidates, where that gives
  the same numbers as separate rows (checked once per prepared task; see `check_shared`).
- nll: mean negative log-likelihood per token of the gold continuation given the prompt ->
  {"nll", "tokens", "n"}; stays informative when a small model's accuracies sit near zero.

Every batch goes through `batching.logits_at`, which applies the LM head only at the scored
positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from layercut.data.encode import Batch
from layercut.evaluation.batching import (
    Context,
    Item,
    Prepared,
    TeacherBatch,
    collate,
    continuation_of,
    device_dtype,
    logits_at,
    seq_of,
)
from layercut.models.compat import cover_cached, output_cache, with_cache


def teacher_rows(prepared: Prepared) -> list[tuple[Context, torch.Tensor]]:
    """The (context, continuation) rows a teacher-forced task scores: its gold continuation
    (nll) or every candidate (choice), item after item."""
    return [(it.context, c) for it in prepared.items for c in it.continuations]


def teacher_metrics(prepared: Prepared, scored: list[tuple[float, int]],
                    details: list | None = None) -> dict[str, float]:
    """A teacher-forced task's metrics from its rows' (sum of log-probabilities, tokens)."""
    if prepared.task.kind == "nll":
        total = sum(lp for lp, _ in scored)
        tokens = sum(n for _, n in scored)
        if details is not None:
            details += [{"id": it.id, "nll": -lp / max(n, 1), "tokens": n}
                        for it, (lp, n) in zip(prepared.items, scored)]
        return {"nll": -total / max(tokens, 1), "tokens": float(tokens), "n": float(len(scored))}
    per_item, k = [], 0
    for it in prepared.items:
        per_item.append([lp for lp, _ in scored[k:k + len(it.continuations)]])
        k += len(it.continuations)
    return _choice_metrics(prepared, per_item, details)


def evaluate_nll(adapter: Any, prepared: Prepared, batch_size: int, details: list | None) -> dict[str, float]:
    return teacher_metrics(prepared, score_continuations(adapter, teacher_rows(prepared), batch_size), details)


def evaluate_choice(adapter: Any, prepared: Prepared, batch_size: int,
                    details: list | None) -> dict[str, float]:
    if not prepared.shared_prefix:
        return teacher_metrics(prepared, score_continuations(adapter, teacher_rows(prepared), batch_size), details)
    return _choice_metrics(prepared, [_shared_scores(adapter, it) for it in prepared.items], details)


def _choice_metrics(prepared: Prepared, per_item: list[list[float]], details: list | None) -> dict[str, float]:
    hits = hits_norm = 0
    for it, lps in zip(prepared.items, per_item):
        pick = max(range(len(lps)), key=lambda i: lps[i])
        pick_norm = max(range(len(lps)), key=lambda i: lps[i] / max(it.chars[i], 1))
        hits += pick == it.gold
        hits_norm += pick_norm == it.gold
        if details is not None:
            details.append({"id": it.id, "logprobs": list(lps), "pick": pick,
                            "pick_norm": pick_norm, "gold": it.gold})
    n = len(prepared.items)
    return {"accuracy": hits / n, "accuracy_norm": hits_norm / n, "n": float(n)}


def teacher_batches(adapter: Any, rows: list[tuple[Context, torch.Tensor]],
                    batch_size: int) -> Iterator[TeacherBatch]:
    """Rows batched longest first and padded on the right, with their scored positions.

    With an empty context the first continuation token has nothing to condition on and is not
    scored."""
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0].ids) + len(rows[i][1])))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs, seq_extra, extras, targets, rr, cc = [], [], [], [], [], []
        for r, i in enumerate(chunk):
            ctx, cont = rows[i]
            seqs.append(torch.cat([ctx.ids, cont]))
            seq_extra.append(seq_of(ctx, len(cont)))
            extras.append(ctx.extras)
            first = max(len(ctx.ids), 1)  # position of the first scored token
            for p in range(first, len(ctx.ids) + len(cont)):
                rr.append(r)
                cc.append(p - 1)  # predicted from the position before
                targets.append(int(seqs[-1][p]))
        inputs = collate(adapter, seqs, seq_extra, extras, left=False)
        device = inputs["input_ids"].device
        yield TeacherBatch(chunk, inputs, torch.tensor(rr, dtype=torch.long, device=device),
                           torch.tensor(cc, dtype=torch.long, device=device),
                           torch.tensor(targets, dtype=torch.long, device=device))


def packed_batches(adapter: Any, prepared: Prepared, batch_size: int) -> list[TeacherBatch]:
    """A choice task's items, each as one packed row [context | candidate 1 | ... | candidate K]:
    a 4-D mask lets every candidate see the context and its own earlier tokens only, and each
    candidate's positions continue from the context's end, so the context is computed once per
    item instead of once per candidate. The rows are those of `teacher_rows`, in its order."""
    device, dtype = device_dtype(adapter)
    items = prepared.items
    first_row = [0]
    for it in items:
        first_row.append(first_row[-1] + len(it.continuations))
    order = sorted(range(len(items)), key=lambda i: -(len(items[i].context.ids)
                                                       + sum(len(c) for c in items[i].continuations)))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs, seq_extra, extras, spans = [], [], [], []
        for i in chunk:
            ctx, conts = items[i].context, items[i].continuations
            seqs.append(torch.cat([ctx.ids, *conts]))
            seq_extra.append(seq_of(ctx, sum(len(c) for c in conts)))
            extras.append(ctx.extras)
            spans.append((len(ctx.ids), [len(c) for c in conts]))
        inputs = collate(adapter, seqs, seq_extra, extras, left=False)
        B, W = inputs["input_ids"].shape
        allowed = torch.zeros((B, W, W), dtype=torch.bool)
        positions = torch.zeros((B, W), dtype=torch.long)
        index, rr, cc, targets, owner = [], [], [], [], []
        for r, (i, (T, lens)) in enumerate(zip(chunk, spans)):
            allowed[r, :T, :T] = torch.ones((T, T), dtype=torch.bool).tril()
            positions[r, :T] = torch.arange(T)
            at = T
            for k, n in enumerate(lens):
                allowed[r, at:at + n, :T] = True
                allowed[r, at:at + n, at:at + n] = torch.ones((n, n), dtype=torch.bool).tril()
                positions[r, at:at + n] = torch.arange(T, T + n)
                row = len(index)
                index.append(first_row[i] + k)
                for j in range(n):
                    if j == 0 and T == 0:
                        continue  # nothing to condition the first token on
                    rr.append(r)
                    cc.append(T - 1 if j == 0 else at + j - 1)
                    targets.append(int(seqs[r][at + j]))
                    owner.append(row)
                at += n
            allowed[r, at:, at:] |= torch.eye(W - at, dtype=torch.bool)  # padding sees itself only
        mask = torch.zeros((B, 1, W, W), dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        inputs["attention_mask"] = mask.to(device)
        inputs["position_ids"] = positions.to(device)
        t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        out.append(TeacherBatch(index, inputs, t(rr), t(cc), t(targets), t(owner)))
    return out


def batch_scores(batch: TeacherBatch, logits: torch.Tensor) -> list[tuple[float, int]]:
    """(sum of log-probabilities, tokens scored) per row of the batch, from the logits [N, V]
    at its scored positions."""
    n = len(batch.index)
    if not len(batch.rows):
        return [(0.0, 0)] * n
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, batch.targets[:, None])[:, 0].double().cpu()
    rows = (batch.rows if batch.owner is None else batch.owner).cpu()
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, picked)
    counts = torch.bincount(rows, minlength=n)
    return [(float(sums[r]), int(counts[r])) for r in range(n)]


def score_continuations(adapter: Any, rows: list[tuple[Context, torch.Tensor]],
                        batch_size: int) -> list[tuple[float, int]]:
    """(sum of log-probabilities, tokens scored) of each continuation after its context."""
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for batch in teacher_batches(adapter, rows, batch_size):
        if not len(batch.rows):
            continue
        logits, _ = logits_at(adapter, batch.inputs, batch.rows, batch.cols, use_cache=False)
        for i, res in zip(batch.index, batch_scores(batch, logits)):
            results[i] = res
    return results


def _shared_scores(adapter: Any, item: Item) -> list[float]:
    """Candidate log-likelihoods with one context pass: its KV cache is repeated per candidate."""
    ctx = item.context
    K, T = len(item.continuations), len(ctx.ids)
    inputs = collate(adapter, [ctx.ids], [seq_of(ctx, 0)], [ctx.extras], left=False)
    first, out = logits_at(adapter, inputs, torch.tensor([0]), torch.tensor([T - 1]), use_cache=True)
    first_logp = torch.log_softmax(first.float(), dim=-1)[0]
    cache = output_cache(out)
    cache.batch_repeat_interleave(K)
    conts = item.continuations
    cand = collate(adapter, conts, [continuation_of(ctx, len(c)) for c in conts], [{}] * K, left=False)
    cand = cover_cached(cand, ctx.tokens)
    cand["attention_mask"] = torch.cat(
        [torch.ones((K, T), dtype=cand["attention_mask"].dtype, device=cand["attention_mask"].device),
         cand["attention_mask"]], dim=1)
    rr, cc, targets = [], [], []
    for k, c in enumerate(conts):
        for j in range(1, len(c)):
            rr.append(k)
            cc.append(j - 1)
            targets.append(int(c[j]))
    scores = [float(first_logp[int(c[0])]) for c in conts]
    if rr:
        logits, _ = logits_at(adapter, cand, torch.tensor(rr), torch.tensor(cc),
                              **with_cache(adapter.model, cache), use_cache=True)
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        for k, v in zip(rr, picked.double().cpu().tolist()):
            scores[k] += v
    return scores


def check_shared(adapter: Any, item: Item, tol: float = 1e-3) -> bool:
    """Whether cache sharing gives this model's separate-row log-likelihoods (it does for the
    usual decoder families; any error or mismatch keeps the plain rows)."""
    if len(item.continuations) < 2:
        return False
    with torch.no_grad():
        try:
            shared = _shared_scores(adapter, item)
        except Exception:  # noqa: BLE001 (a family's cache/positions do not allow it: plain rows)
            return False
        plain = [lp for lp, _ in score_continuations(
            adapter, [(item.context, c) for c in item.continuations], len(item.continuations))]
    return all(math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b))
               for a, b in zip(shared, plain))


# --- token NLL over calibration-style batches (used by the `iterative` selection) -----------


def token_batches(adapter: Any, batches: Iterable[Batch]) -> tuple[list[TeacherBatch], list[str]]:
    """Calibration batches as teacher-forced batches: every real text token after the first is a
    target (padding and image tokens never are); and the domain of each row, in row order."""
    out, domains = [], []
    for batch in batches:
        inputs = adapter.complete_inputs(batch.inputs)
        ids = inputs["input_ids"]
        attn = inputs.get("attention_mask", torch.ones_like(ids)).bool()
        target_ok = attn[:, 1:] & attn[:, :-1] & ~adapter.image_mask(ids)[:, 1:]
        rows, cols = target_ok.nonzero(as_tuple=True)
        index = list(range(len(domains), len(domains) + ids.shape[0]))
        domains += [batch.domain] * ids.shape[0]
        out.append(TeacherBatch(index, inputs, rows, cols, ids[:, 1:][target_ok]))
    return out, domains


def domain_nll(scored: list[tuple[float, int]], domains: list[str]) -> dict[str, float]:
    """Mean next-token NLL per domain and over all ("all") from per-row (log-prob sum, tokens)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for (lp, n), d in zip(scored, domains):
        sums[d] = sums.get(d, 0.0) - lp
        counts[d] = counts.get(d, 0) + n
    out = {d: sums[d] / max(counts[d], 1) for d in sums}
    out["all"] = sum(sums.values()) / max(sum(counts.values()), 1)
    return out


@torch.no_grad()
def token_nll(adapter: Any, batches: Iterable[Batch]) -> dict[str, float]:
    """Mean next-token negative log-likelihood per domain (and "all"), over real text tokens.

    Padding and image tokens are never targets.
    """
    teacher, domains = token_batches(adapter, batches)
    scored: list[tuple[float, int]] = [(0.0, 0)] * len(domains)
    for batch in teacher:
        if not len(batch.rows):
            continue
        logits, _ = logits_at(adapter, batch.inputs, batch.rows, batch.cols, use_cache=False)
        for i, res in zip(batch.index, batch_scores(batch, logits)):
            scored[i] = res
    return domain_nll(scored, domains)
