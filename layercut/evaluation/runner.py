"""Run a task on a model: `prepare` once, `evaluate` many times (one per layer-skip view).

`prepare(task, adapter)` loads the documents, renders prompts (few-shot examples, chat template,
images through the processor) and tokenises everything once. `evaluate(adapter, prepared)` runs
the model as it is now, so a sweep can evaluate the same prepared task under many
`surgery.skipped` views of the same adapter. Three kinds:

- generate: greedy, batched with left padding, stopped at `until` (and EOS), cut at the first stop
  string, answer extracted by the task's extractor (or judged by an OpenAI-compatible endpoint),
  compared with the gold answer -> {"accuracy", "n"}. Few-shot examples are the same for every
  prompt: their KV cache is computed once per evaluation and shared (checked once per prepared
  task against plain generation, as for choice below).
- choice: the log-likelihood of each full candidate continuation (cloze style), argmax ->
  {"accuracy", "accuracy_norm" (per character of the candidate, lm-eval's acc_norm), "n"}. The
  context is run once per document and its KV cache shared by the candidates, where that gives
  the same numbers as separate rows (checked once per prepared task; see `_check_shared`).
- nll: mean negative log-likelihood per token of the gold continuation given the prompt ->
  {"nll", "tokens", "n"}; stays informative when a small model's accuracies sit near zero.

Teacher-forced kinds apply the LM head only at the scored positions (a pre-hook on the output
embedding gathers those hidden states), so a 49k-vocabulary head costs what the targets need; any
logit post-processing in the model's forward (e.g. Gemma's final soft-capping) still applies.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layercut.errors import LayercutError
from layercut.evaluation import extract
from layercut.evaluation.sources import load_docs
from layercut.evaluation.tasks import TaskSpec, get_task
from layercut.models import ensure_pad_token
from layercut.scoring import Batch

HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "accuracy_norm": True, "nll": False}
SEQ_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")  # padded like input_ids


@dataclass
class Context:
    """One encoded prompt: token ids plus whatever else the processor produced."""

    ids: torch.Tensor  # 1-D long
    seq: dict[str, torch.Tensor] = field(default_factory=dict)  # 1-D, aligned with ids
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


# --- prepare -------------------------------------------------------------------------------


def prepare(task: TaskSpec | str, adapter: Any, limit: int | None = None, seed: int = 0) -> Prepared:
    """Load `limit` documents (default: the task's), render and encode them once.

    `seed` picks the documents and the few-shot examples; the same seed gives the same ones."""
    spec = get_task(task)
    n = spec.limit if limit is None else limit
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LayercutError(f"limit must be a positive integer, got {limit!r}")
    tok = _tokenizer(adapter)
    if spec.image and getattr(adapter.processor, "image_processor", None) is None:
        raise LayercutError(f"task '{spec.name}' has images but model '{adapter.source}' has no "
                            "image processor: use a vision-language model or a text task")
    with tempfile.TemporaryDirectory(prefix="layercut-task-") as workdir:
        docs = load_docs(spec.resolve(spec.source), n, seed, Path(workdir))
        if not docs:
            raise LayercutError(f"task '{spec.name}': its source has no documents")
        shots = []
        if spec.fewshot:
            shots = load_docs(spec.resolve(spec.fewshot_source), spec.fewshot, seed, Path(workdir))
        eot = _end_of_turn(adapter) if spec.chat else ""
        items = [_item(spec, adapter, tok, doc, shots, eot) for doc in docs]
    prepared = Prepared(task=spec, items=items)
    if spec.kind == "generate":
        prepared.stop = tuple(s for s in (*spec.until, eot) if s)
        contexts = [it.context for it in items]
        n = common_prefix(contexts)
        prepared.prefix_len = n if _check_prefix(adapter, contexts, n) else 0
    if spec.kind == "choice":
        prepared.shared_prefix = _check_shared(adapter, items[0])
    return prepared


def _item(spec: TaskSpec, adapter: Any, tok: Any, doc: dict, shots: list[dict], eot: str) -> Item:
    prompt = _render(spec, spec.prompt, doc)
    question = str(doc.get("question", prompt))
    shot_pairs = [(_render(spec, spec.prompt, s),
                   _render(spec, spec.fewshot_target or spec.target, s)) for s in shots]
    image = doc.get("image") if spec.image else None
    if spec.image and not image:
        raise LayercutError(f"task '{spec.name}': document {doc.get('id')} has no 'image' field")
    context = _encode_context(spec, adapter, tok, prompt, shot_pairs, image)
    item = Item(id=str(doc.get("id", "")), context=context, question=question)
    delim = "" if spec.chat else spec.delimiter
    if spec.kind == "generate":
        item.gold = _render(spec, spec.target, doc)
    elif spec.kind == "nll":
        item.continuations = [_ids(tok, delim + _render(spec, spec.target, doc) + eot)]
    else:
        candidates, gold = _candidates(spec, doc)
        item.continuations = [_ids(tok, delim + c + eot) for c in candidates]
        item.chars = [len(c) for c in candidates]
        item.gold = gold
    return item


def _render(spec: TaskSpec, template: str, doc: dict) -> str:
    try:
        return template.format_map(doc)
    except (KeyError, IndexError, AttributeError) as exc:
        raise LayercutError(
            f"task '{spec.name}': template {template!r} needs {exc} but document "
            f"{doc.get('id', '?')} has fields {', '.join(sorted(doc))}: fix the template"
        ) from None


def _candidates(spec: TaskSpec, doc: dict) -> tuple[list[str], int]:
    """The candidate texts and the index of the gold one."""
    if isinstance(spec.choices, str):
        if not isinstance(doc.get(spec.choices), list):
            raise LayercutError(f"task '{spec.name}': document {doc.get('id')} has no list field "
                                f"'{spec.choices}' to take choices from")
        candidates = [str(c) for c in doc[spec.choices]]
    else:
        candidates = [c for c in spec.choices if isinstance(c, str)]
    field_name = spec.target[1:-1] if spec.target.startswith("{") and spec.target.endswith("}") else None
    raw = doc.get(field_name) if field_name else None
    if isinstance(raw, int) and not isinstance(raw, bool):  # an index into the candidates
        if not 0 <= raw < len(candidates):
            raise LayercutError(f"task '{spec.name}': answer index {raw} out of range in {doc.get('id')}")
        return candidates, raw
    gold = _render(spec, spec.target, doc)
    if not isinstance(spec.choices, str):
        groups = [g for g in spec.choices if isinstance(g, tuple) and gold in g]
        if groups:  # candidate groups: score the gold's group only (e.g. colours, shapes, yes/no)
            candidates = list(groups[0])
    if gold not in candidates:
        raise LayercutError(f"task '{spec.name}': gold answer {gold!r} of {doc.get('id')} is not "
                            f"among its choices: fix the data or the choices")
    return candidates, candidates.index(gold)


def _tokenizer(adapter: Any) -> Any:
    tok = adapter.tokenizer
    if tok is None:
        raise LayercutError(f"model '{adapter.source}' has no tokenizer files: save one beside the weights")
    ensure_pad_token(tok)
    return tok


def _ids(tok: Any, text: str) -> torch.Tensor:
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _chat_owner(adapter: Any, image: bool) -> Any:
    """Whichever of processor and tokenizer holds the chat template."""
    proc, tok = adapter.processor, adapter.tokenizer
    if image and getattr(proc, "chat_template", None):
        return proc
    if getattr(tok, "chat_template", None):
        return tok
    if getattr(proc, "chat_template", None):
        return proc
    return None


def _end_of_turn(adapter: Any) -> str:
    """What the chat template writes after an assistant message ('<|im_end|>'), else EOS."""
    owner = _chat_owner(adapter, image=False) or _chat_owner(adapter, image=True)
    tok = adapter.tokenizer
    if owner is not None:
        sentinel = "LAYERCUTSENTINEL"
        try:
            text = owner.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}],
                tokenize=False)
        except Exception:  # noqa: BLE001 (templates raise many types on unexpected messages)
            text = ""
        after = text.split(sentinel, 1)[1].split() if sentinel in text else []
        if after:
            return after[0]
    return tok.eos_token or ""


def _encode_context(spec: TaskSpec, adapter: Any, tok: Any, prompt: str,
                    shots: list[tuple[str, str]], image: str | None) -> Context:
    if spec.chat:
        owner = _chat_owner(adapter, image is not None)
        messages = []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        content: Any = prompt
        if image is not None:
            content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages.append({"role": "user", "content": content})
        if owner is not None:
            text = owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            special = False  # the template writes its own BOS
        elif image is None:
            raise LayercutError(f"task '{spec.name}' uses the chat template but the model has none: "
                                "set chat: false in the task")
        else:  # a processor without a chat template: its image token in front of the text
            text, special = getattr(adapter.processor, "image_token", "") + prompt, True
    else:
        parts = [q + spec.delimiter + a for q, a in shots]
        text = spec.fewshot_separator.join(parts + [prompt])
        special = True
        if image is not None:
            text = getattr(adapter.processor, "image_token", "") + text
    if image is None:
        enc = tok(text, add_special_tokens=special, return_tensors="pt")
    else:
        from layercut.data.encode import _open_image

        enc = adapter.processor(text=[text], images=[[_open_image(image)]], return_tensors="pt")
    enc = dict(enc)
    ids = enc.pop("input_ids")[0]
    seq, extras = {}, {}
    for k, v in enc.items():
        if not isinstance(v, torch.Tensor):
            continue
        if k in SEQ_KEYS and v.dim() == 2 and v.shape[1] == ids.shape[0]:
            seq[k] = v[0]
        else:
            extras[k] = v
    seq.pop("attention_mask", None)  # rebuilt when batching
    return Context(ids=ids.long(), seq=seq, extras=extras)


# --- evaluate ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(adapter: Any, prepared: Prepared, batch_size: int = 8, *,
             judge_url: str | None = None, judge_model: str = "judge",
             details: list | None = None) -> dict[str, float]:
    """Metrics of the model as it is now (e.g. inside `surgery.skipped`) on a prepared task.

    `judge_url`: an OpenAI-compatible endpoint that judges generated answers instead of the
    rule-based extractor. `details`: a list that receives one record per document.
    """
    if batch_size < 1:
        raise LayercutError(f"batch_size must be at least 1, got {batch_size}")
    adapter.model.eval()
    kind = prepared.task.kind
    if kind == "nll":
        return _evaluate_nll(adapter, prepared, batch_size, details)
    if kind == "choice":
        return _evaluate_choice(adapter, prepared, batch_size, details)
    return _evaluate_generate(adapter, prepared, batch_size, judge_url, judge_model, details)


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


def _evaluate_nll(adapter: Any, prepared: Prepared, batch_size: int, details: list | None) -> dict[str, float]:
    return teacher_metrics(prepared, score_continuations(adapter, teacher_rows(prepared), batch_size), details)


def _evaluate_choice(adapter: Any, prepared: Prepared, batch_size: int,
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


def _evaluate_generate(adapter: Any, prepared: Prepared, batch_size: int, judge_url: str | None,
                       judge_model: str, details: list | None) -> dict[str, float]:
    spec = prepared.task
    outputs = generate(adapter, [it.context for it in prepared.items], spec.max_new_tokens,
                       prepared.stop, batch_size, prefix_len=prepared.prefix_len)
    extractor = extract.EXTRACTORS[spec.extractor]
    hits = 0
    for it, text in zip(prepared.items, outputs):
        if judge_url:
            from layercut.evaluation.judge import judge

            pred, ok = None, judge(judge_url, it.question, str(it.gold), text, model=judge_model)
        else:
            pred = extractor(text)
            ok = _compare(spec, pred, str(it.gold))
        hits += bool(ok)
        if details is not None:
            details.append({"id": it.id, "output": text, "extracted": pred, "gold": it.gold,
                            "correct": bool(ok)})
    n = len(prepared.items)
    return {"accuracy": hits / n, "n": float(n)}


def _compare(spec: TaskSpec, pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    if spec.metric == "math_equiv":
        return extract.is_equiv(pred, gold)
    extractor = extract.EXTRACTORS[spec.extractor]
    # the gold answer goes through the same normalisation as the prediction
    return pred == (extractor(gold) or gold.strip())


# --- batched model calls -------------------------------------------------------------------


def _device(adapter: Any) -> tuple[torch.device, torch.dtype]:
    p = next(adapter.model.parameters())
    return p.device, p.dtype


def _collate(adapter: Any, seqs: list[torch.Tensor], seq_extra: list[dict], extras: list[dict],
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
    keys = sorted({k for d in seq_extra for k in d})
    aligned = {k: torch.zeros((B, width), dtype=torch.long) for k in keys}
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(P, P + len(s))
        ids[r, sl] = s
        mask[r, sl] = 1
        for k in keys:
            v = seq_extra[r].get(k)
            if v is not None:
                aligned[k][r, sl] = v
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask, **aligned}
    for k in sorted({k for d in extras for k in d}):
        inputs[k] = torch.cat([d[k] for d in extras], dim=0)
    inputs = adapter.complete_inputs(inputs)
    device, dtype = _device(adapter)
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}


def _seq_of(ctx: Context, extra_len: int) -> dict[str, torch.Tensor]:
    """The context's aligned tensors, extended by zeros (text) over a continuation."""
    return {k: torch.cat([v, torch.zeros(extra_len, dtype=v.dtype)]) for k, v in ctx.seq.items()}


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


@dataclass
class TeacherBatch:
    """One padded batch of teacher-forced rows and the positions it scores."""

    index: list[int]  # which rows (of the caller's list) the batch holds, in batch order
    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor  # scored positions: batch row ...
    cols: torch.Tensor  # ... and the position that predicts the target
    targets: torch.Tensor
    owner: torch.Tensor | None = None  # per scored position, its row in `index` (default: `rows`)


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
            seq_extra.append(_seq_of(ctx, len(cont)))
            extras.append(ctx.extras)
            first = max(len(ctx.ids), 1)  # position of the first scored token
            for p in range(first, len(ctx.ids) + len(cont)):
                rr.append(r)
                cc.append(p - 1)  # predicted from the position before
                targets.append(int(seqs[-1][p]))
        inputs = _collate(adapter, seqs, seq_extra, extras, left=False)
        device = inputs["input_ids"].device
        yield TeacherBatch(chunk, inputs, torch.tensor(rr, dtype=torch.long, device=device),
                           torch.tensor(cc, dtype=torch.long, device=device),
                           torch.tensor(targets, dtype=torch.long, device=device))


def packed_batches(adapter: Any, prepared: Prepared, batch_size: int) -> list[TeacherBatch]:
    """A choice task's items, each as one packed row [context | candidate 1 | ... | candidate K]:
    a 4-D mask lets every candidate see the context and its own earlier tokens only, and each
    candidate's positions continue from the context's end, so the context is computed once per
    item instead of once per candidate. The rows are those of `teacher_rows`, in its order."""
    device, dtype = _device(adapter)
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
            seq_extra.append(_seq_of(ctx, sum(len(c) for c in conts)))
            extras.append(ctx.extras)
            spans.append((len(ctx.ids), [len(c) for c in conts]))
        inputs = _collate(adapter, seqs, seq_extra, extras, left=False)
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
    inputs = _collate(adapter, [ctx.ids], [ctx.seq], [ctx.extras], left=False)
    first, out = logits_at(adapter, inputs, torch.tensor([0]), torch.tensor([T - 1]), use_cache=True)
    first_logp = torch.log_softmax(first.float(), dim=-1)[0]
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.batch_repeat_interleave(K)
    conts = item.continuations
    seq_extra = [{k: torch.zeros(len(c), dtype=v.dtype) for k, v in ctx.seq.items()} for c in conts]
    cand = _collate(adapter, conts, seq_extra, [{}] * K, left=False)
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
        logits, _ = logits_at(adapter, cand, torch.tensor(rr), torch.tensor(cc), cache=cache,
                              use_cache=True)
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0]
        for k, v in zip(rr, picked.double().cpu().tolist()):
            scores[k] += v
    return scores


def _check_shared(adapter: Any, item: Item, tol: float = 1e-3) -> bool:
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


def generate(adapter: Any, contexts: list[Context], max_new_tokens: int, stop: Iterable[str],
             batch_size: int, prefix_len: int = 0) -> list[str]:
    """Greedy continuations (decoded, cut at the first stop string), in the order given.

    With `prefix_len`, every context starts with the same `prefix_len` tokens (few-shot
    examples): they are run once and their KV cache is shared by every row, whose own tokens are
    left-padded after the prefix ([prefix | pad | rest]; positions follow the attention mask)."""
    tok = adapter.tokenizer
    stop = [s for s in stop if s]
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tok)
    prefix_cache = _prefix_cache(adapter, contexts[0], prefix_len)
    outputs = [""] * len(contexts)
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width, out = _generate_batch(adapter, [contexts[i] for i in chunk], prefix_len,
                                     prefix_cache, **kwargs)
        for r, i in enumerate(chunk):
            outputs[i] = _cut(tok.decode(out[r, width:], skip_special_tokens=True), stop)
    return outputs


def _prefix_cache(adapter: Any, context: Context, prefix_len: int) -> Any:
    if not prefix_len:
        return None
    inputs = _collate(adapter, [context.ids[:prefix_len]], [{}], [{}], left=True)
    return adapter.model(**inputs, use_cache=True).cache


def _generate_batch(adapter: Any, ctxs: list[Context], prefix_len: int, prefix_cache: Any,
                    **kwargs: Any) -> tuple[int, Any]:
    """(prompt width, `generate` output) for one batch, left-padded (after the prefix)."""
    if prefix_cache is not None:
        inputs = _collate(adapter, [c.ids[prefix_len:] for c in ctxs], [{}] * len(ctxs),
                          [{}] * len(ctxs), left=True, prefix=ctxs[0].ids[:prefix_len])
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(ctxs))
        kwargs["cache"] = cache
    else:
        inputs = _collate(adapter, [c.ids for c in ctxs], [c.seq for c in ctxs],
                          [c.extras for c in ctxs], left=True)
    tok = adapter.tokenizer
    with _quiet_generation(adapter.model):
        out = adapter.model.generate(**inputs, do_sample=False, num_beams=1,
                                     pad_token_id=getattr(tok, "pad_token_id", None), **kwargs)
    return inputs["input_ids"].shape[1], out


def common_prefix(contexts: list[Context], minimum: int = 32) -> int:
    """Tokens shared by the start of every text-only context (0 when fewer than `minimum`)."""
    if len(contexts) < 2 or any(c.seq or c.extras for c in contexts):
        return 0
    first = contexts[0].ids
    n = min(len(c.ids) for c in contexts) - 1  # every row keeps at least one token of its own
    for c in contexts[1:]:
        same = (c.ids[:n] == first[:n]).long()
        n = int(same.cumprod(0).sum()) if n > 0 else 0
    return n if n >= minimum else 0


def _check_prefix(adapter: Any, contexts: list[Context], prefix_len: int, tol: float = 1e-3) -> bool:
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


def _cut(text: str, stop: Iterable[str]) -> str:
    for s in stop:
        k = text.find(s)
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
