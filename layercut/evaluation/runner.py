"""Run a task on a model: `prepare` once, `evaluate` many times (one per layer-skip view).

`prepare(task, adapter)` loads the documents, renders prompts (few-shot examples, chat template,
images through the processor) and tokenises everything once. `evaluate(adapter, prepared)` runs
the model as it is now, so a sweep can evaluate the same prepared task under many
`surgery.skipped` views of the same adapter. Three kinds:

- generate (`generate`): greedy, cut at the first stop string, answer extracted (or judged) and
  compared with the gold answer -> {"accuracy", "n", "truncated"} (the share cut at max_new_tokens).
- choice (`teacher`): the log-likelihood of each candidate continuation, argmax ->
  {"accuracy", "accuracy_norm", "n"}.
- nll (`teacher`): mean negative log-likelihood per token of the gold continuation ->
  {"nll", "tokens", "n"}.

`prepare` also checks, once per prepared task, whether sharing a KV cache gives the plain numbers:
the few-shot prefix of generate prompts (`generate.check_prefix`) and a choice item's context
across its candidates (`teacher.check_shared`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from layercut.data.encode import ensure_pad_token
from layercut.errors import LayercutError
from layercut.evaluation.batching import SEQ_KEYS, Context, Item, Prepared
from layercut.evaluation.generate import check_prefix, common_prefix, evaluate_generate
from layercut.evaluation.sources import load_docs
from layercut.evaluation.tasks import TaskSpec, get_task
from layercut.evaluation.teacher import check_shared, evaluate_choice, evaluate_nll

HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "accuracy_norm": True, "nll": False}
# A generate cell also records "truncated": the share of answers that stopped at max_new_tokens
# (scored wrong whatever they were going to say). Above this share, eval and the report warn.
TRUNCATION_WARN = 0.05


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
        prepared.prefix_len = n if check_prefix(adapter, contexts, n) else 0
    if spec.kind == "choice":
        prepared.shared_prefix = check_shared(adapter, items[0])
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
        from layercut.data.encode import open_image

        enc = adapter.processor(text=[text], images=[[open_image(image)]], return_tensors="pt")
    enc = dict(enc)
    ids = enc.pop("input_ids")[0]
    seq, tokens, extras = {}, {}, {}
    for k, v in enc.items():
        if not isinstance(v, torch.Tensor):
            continue
        aligned = v.dim() >= 2 and v.shape[1] == ids.shape[0]
        if aligned and k in SEQ_KEYS and v.dim() == 2:
            seq[k] = v[0]
        elif aligned and k in adapter.family.token_inputs:
            tokens[k] = v[0]
        else:
            extras[k] = v
    seq.pop("attention_mask", None)  # rebuilt when batching
    return Context(ids=ids.long(), seq=seq, tokens=tokens, extras=extras)


# --- evaluate ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(adapter: Any, prepared: Prepared, batch_size: int = 8, *,
             judge_url: str | None = None, judge_model: str = "judge",
             details: list | None = None, max_tokens_per_batch: int | None = None) -> dict[str, float]:
    """Metrics of the model as it is now (e.g. inside `surgery.skipped`) on a prepared task.

    `judge_url`: an OpenAI-compatible endpoint that judges generated answers instead of the
    rule-based extractor. `details`: a list that receives one record per document.
    `max_tokens_per_batch`: generation batches hold at most this many prompt + new tokens
    (instead of `batch_size` rows).
    """
    if batch_size < 1:
        raise LayercutError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise LayercutError(f"--max-tokens-per-batch {max_tokens_per_batch}: give a positive token budget")
    adapter.model.eval()
    kind = prepared.task.kind
    if kind == "nll":
        return evaluate_nll(adapter, prepared, batch_size, details)
    if kind == "choice":
        return evaluate_choice(adapter, prepared, batch_size, details)
    return evaluate_generate(adapter, prepared, batch_size, judge_url, judge_model, details, max_tokens_per_batch)


def per_document(kind: str, details: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{metric: (value per document, weight per document)} from `evaluate`'s details, such that
    each metric is the weighted mean of its values (nll: per-document NLL, weighted by tokens;
    accuracies: 1 or 0, weight 1). What the regime analysis resamples (`regimes.bootstrap`)."""
    if kind == "nll":
        return {"nll": ([float(d["nll"]) for d in details], [float(d["tokens"]) for d in details])}
    ones = [1.0] * len(details)
    if kind == "choice":
        return {"accuracy": ([float(d["pick"] == d["gold"]) for d in details], ones),
                "accuracy_norm": ([float(d["pick_norm"] == d["gold"]) for d in details], ones)}
    return {"accuracy": ([float(d["correct"]) for d in details], ones)}
