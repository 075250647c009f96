"""Generation: the generate kind.

generate: greedy, batched with left padding, stopped at `until` (and EOS), cut at the first stop
string, answer extracted by the task's extractor (or judged by an OpenAI-compatible endpoint),
compared with the gold answer -> {"accuracy", "n"}. Few-shot examples are the same for every
prompt: their KV cache is computed once per evaluation and shared (checked once per prepared task
against plain generation, as for choice in `teacher`; see `check_prefix`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from layercut.evaluation.batching import Context, Prepared, collate, seq_of
from layercut.evaluation.extract import EXTRACTORS, is_equiv
from layercut.evaluation.tasks import TaskSpec
from layercut.models.compat import output_cache, with_cache


def evaluate_generate(adapter: Any, prepared: Prepared, batch_size: int, judge_url: str | None,
                      judge_model: str, details: list | None, max_tokens: int | None = None) -> dict[str, float]:
    spec = prepared.task
    cut: list[bool] = []
    outputs = generate(adapter, [it.context for it in prepared.items], spec.max_new_tokens,
                       prepared.stop, batch_size, prefix_len=prepared.prefix_len, max_tokens=max_tokens,
                       truncated=cut)
    extractor = EXTRACTORS[spec.extractor]
    hits = 0
    for k, (it, text) in enumerate(zip(prepared.items, outputs)):
        if judge_url:
            from layercut.evaluation.judge import judge

            pred, ok = None, judge(judge_url, it.question, str(it.gold), text, model=judge_model)
        else:
            pred = extractor(text)
            ok = _compare(spec, pred, str(it.gold))
        hits += bool(ok)
        if details is not None:
            details.append({"id": it.id, "output": text, "extracted": pred, "gold": it.gold,
                            "correct": bool(ok), "truncated": cut[k]})
    n = len(prepared.items)
    # The share of answers that stopped at max_new_tokens: they count as wrong whatever they were
    # going to say, so a high share means the limit, not the model, decides the accuracy.
    return {"accuracy": hits / n, "n": float(n), "truncated": sum(cut) / n}


def _compare(spec: TaskSpec, pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    if spec.metric == "math_equiv":
        return is_equiv(pred, gold)
    extractor = EXTRACTORS[spec.extractor]
    # the gold answer goes through the same normalisation as the prediction
    return pred == (extractor(gold) or gold.strip())


def generate(adapter: Any, contexts: list[Context], max_new_tokens: int, stop: Iterable[str],
             batch_size: int, prefix_len: int = 0, max_tokens: int | None = None,
             truncated: list[bool] | None = None) -> list[str]:
    """Greedy continuations (decoded, cut at the first stop string), in the order given.

    Rows go longest first, left-padded, `batch_size` at a time, each batch one `generate` call with
    the KV cache. With `max_tokens`, a batch instead holds as many rows as keep rows x (longest
    prompt + max_new_tokens) within it, so the KV cache and activations stay under one ceiling
    whatever the prompts' lengths (a row longer than that goes alone).
    With `prefix_len`, every context starts with the same `prefix_len` tokens (few-shot
    examples): they are run once and their KV cache is shared by every row, whose own tokens are
    left-padded after the prefix ([prefix | pad | rest]; positions follow the attention mask).
    `truncated`, when given, is filled with one flag per context: whether its answer was cut by
    `max_new_tokens` (no end of sequence and no stop string within the limit)."""
    tok = adapter.tokenizer
    stop = [s for s in stop if s]
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tok)
    prefix_cache = _prefix_cache(adapter, contexts[0], prefix_len)
    outputs = [""] * len(contexts)
    cut = [False] * len(contexts)
    ends = _end_ids(adapter)
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i].ids))
    for chunk in _batches(order, [len(c.ids) + max_new_tokens for c in contexts], batch_size, max_tokens):
        width, out = _generate_batch(adapter, [contexts[i] for i in chunk], prefix_len,
                                     prefix_cache, **kwargs)
        for r, i in enumerate(chunk):
            new = out[r, width:]
            text = tok.decode(new, skip_special_tokens=True)
            outputs[i] = cut_at_stops(text, stop)
            # Cut by the limit: all max_new_tokens used, none of them an end (EOS or padding after
            # one), and no stop string reached.
            cut[i] = (new.shape[0] >= max_new_tokens and not any(int(t) in ends for t in new)
                      and outputs[i] == text)
    if truncated is not None:
        truncated[:] = cut
    return outputs


def _end_ids(adapter: Any) -> set[int]:
    """Token ids that end an answer: the tokenizer's and the generation config's EOS, and padding."""
    ids: set[int] = set()
    tok = adapter.tokenizer
    gc = getattr(adapter.model, "generation_config", None)
    for value in (getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None),
                  getattr(gc, "eos_token_id", None), getattr(gc, "pad_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Consecutive rows of `order` (longest first): `batch_size` at a time, or as many as fit
    rows x longest <= max_tokens."""
    start = 0
    while start < len(order):
        rows = batch_size if max_tokens is None else max(1, max_tokens // max(lengths[order[start]], 1))
        yield order[start:start + rows]
        start += rows


def _prefix_cache(adapter: Any, context: Context, prefix_len: int) -> Any:
    if not prefix_len:
        return None
    inputs = collate(adapter, [context.ids[:prefix_len]], [{}], [{}], left=True)
    return output_cache(adapter.model(**inputs, use_cache=True))


def _generate_batch(adapter: Any, ctxs: list[Context], prefix_len: int, prefix_cache: Any,
                    **kwargs: Any) -> tuple[int, Any]:
    """(prompt width, `generate` output) for one batch, left-padded (after the prefix)."""
    if prefix_cache is not None:
        inputs = collate(adapter, [c.ids[prefix_len:] for c in ctxs], [{}] * len(ctxs),
                         [{}] * len(ctxs), left=True, prefix=ctxs[0].ids[:prefix_len])
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(ctxs))
        kwargs.update(with_cache(adapter.model, cache))
    else:
        inputs = collate(adapter, [c.ids for c in ctxs], [seq_of(c, 0) for c in ctxs],
                         [c.extras for c in ctxs], left=True)
    tok = adapter.tokenizer
    with _quiet_generation(adapter.model):
        out = adapter.model.generate(**inputs, do_sample=False, num_beams=1,
                                     pad_token_id=getattr(tok, "pad_token_id", None), **kwargs)
    return inputs["input_ids"].shape[1], out


def common_prefix(contexts: list[Context], minimum: int = 32) -> int:
    """Tokens shared by the start of every text-only context (0 when fewer than `minimum`)."""
    if len(contexts) < 2 or any(c.seq or c.tokens or c.extras for c in contexts):
        return 0
    first = contexts[0].ids
    n = min(len(c.ids) for c in contexts) - 1  # every row keeps at least one token of its own
    for c in contexts[1:]:
        same = (c.ids[:n] == first[:n]).long()
        n = int(same.cumprod(0).sum()) if n > 0 else 0
    return n if n >= minimum else 0


def check_prefix(adapter: Any, contexts: list[Context], prefix_len: int, tol: float = 1e-3) -> bool:
    """Whether sharing the prefix cache gives this model's plain greedy logits (a few steps on
    the first two prompts); any error or mismatch keeps plain rows."""
    if not prefix_len:
        return False
    sample = contexts[:2]
    kwargs = {"max_new_tokens": 3, "output_logits": True, "return_dict_in_generate": True}
    try:
        with torch.no_grad():
            cache = _prefix_cache(adapter, sample[0], prefix_len)
            _, shared = _generate_batch(adapter, sample, prefix_len, cache, **kwargs)
            _, plain = _generate_batch(adapter, sample, 0, None, **kwargs)
    except Exception:  # noqa: BLE001 (a family's cache/positions do not allow it: plain rows)
        return False
    return len(shared.logits) == len(plain.logits) and all(
        torch.allclose(x.float(), y.float(), atol=tol, rtol=tol)
        for x, y in zip(shared.logits, plain.logits))


def cut_at_stops(text: str, stop: Iterable[str]) -> str:
    """Text up to the first stop string (empty stop strings stop nothing)."""
    for s in stop:
        k = text.find(s) if s else -1
        if k >= 0:
            text = text[:k]
    return text


@contextlib.contextmanager
def _quiet_generation(model: Any) -> Iterator[None]:
    """Greedy decoding without warnings about the model's own sampling defaults."""
    gc = getattr(model, "generation_config", None)
    saved = {}
    if gc is not None:
        for name in ("temperature", "top_p", "top_k", "typical_p", "min_p"):
            if getattr(gc, name, None) is not None:
                saved[name] = getattr(gc, name)
                setattr(gc, name, None)
        saved_sample = gc.do_sample
        gc.do_sample = False
    try:
        yield
    finally:
        if gc is not None:
            for name, v in saved.items():
                setattr(gc, name, v)
            gc.do_sample = saved_sample
