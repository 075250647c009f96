"""Turn calibration samples into model inputs, one domain per batch.

- `text` is tokenised as raw text with the tokenizer's defaults (BOS as the tokenizer adds it);
- `messages` go through the model's chat template;
- a sample with images goes through the processor: its text is wrapped as one user turn holding
  the images and the text and rendered by the processor's chat template, so every family gets its
  own image placeholders; a processor without a chat template gets its `image_token` per image
  in front of the text.
Samples with and without images are batched apart, since processors differ on mixed batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from PIL import Image

from layercut.data import Sample
from layercut.errors import LayercutError


@dataclass
class Batch:
    """One forward's worth of encoded samples, all of one domain."""

    domain: str
    inputs: dict[str, torch.Tensor]  # model kwargs; attention_mask marks padding
    samples: int = 0

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        attn = self.inputs.get("attention_mask")
        return int(attn.sum()) if attn is not None else int(self.inputs["input_ids"].numel())


def encode_batches(
    adapter: Any,
    samples: list[Sample],
    batch_size: int = 8,
    max_length: int = 1024,
    max_tokens: int | None = None,
) -> Iterator[Batch]:
    """Batches of encoded samples; each holds one domain and either all-image or all-text rows.

    With `max_tokens`, rows are sorted by length (longest first, so a batch that does not fit
    fails at once) and packed so that rows x longest row <= max_tokens: padded memory stays under
    one ceiling whatever the calibration set's size; `batch_size` is then not used. A sample
    longer than the budget gets a batch of its own.
    """
    if max_tokens is not None and max_tokens < 1:
        raise LayercutError(f"--max-tokens-per-batch {max_tokens}: give a positive token budget")
    groups: dict[tuple[str, bool], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.domain, bool(s.images)), []).append(s)
    for (domain, _), group in groups.items():
        if max_tokens is None:
            chunks = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
        else:
            chunks = _pack_by_tokens(adapter, group, max_length, max_tokens)
        for chunk in chunks:
            yield Batch(domain=domain, inputs=encode(adapter, chunk, max_length), samples=len(chunk))


def sample_length(adapter: Any, sample: Sample, max_length: int = 1024) -> int:
    """Tokens the sample takes once encoded (image placeholders included), truncation applied."""
    if sample.images:
        return int(_encode_with_images(adapter, [sample])["input_ids"].shape[1])
    return int(_encode_text(adapter, [sample], max_length)["input_ids"].shape[1])


def _pack_by_tokens(adapter: Any, group: list[Sample], max_length: int, max_tokens: int) -> list[list[Sample]]:
    lengths = [sample_length(adapter, s, max_length) for s in group]
    order = sorted(range(len(group)), key=lambda i: -lengths[i])  # stable: ties keep file order
    chunks: list[list[Sample]] = []
    start = 0
    while start < len(order):
        rows = max(1, max_tokens // max(lengths[order[start]], 1))
        chunks.append([group[i] for i in order[start : start + rows]])
        start += rows
    return chunks


def encode(adapter: Any, samples: list[Sample], max_length: int = 1024) -> dict[str, torch.Tensor]:
    """Model kwargs (padded) for samples that all have images or all have none."""
    with_images = bool(samples[0].images)
    if with_images:
        inputs = _encode_with_images(adapter, samples)
    else:
        inputs = _encode_text(adapter, samples, max_length)
    inputs = adapter.complete_inputs(dict(inputs))
    # A dispatched model's first parameter may sit on 'meta' (offloaded): ask the adapter.
    device = getattr(adapter, "input_device", None) or next(adapter.model.parameters()).device
    dtype = next(adapter.model.parameters()).dtype
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def ensure_pad_token(tok: Any) -> Any:
    """Give a tokenizer without one a pad token (EOS): padding is always masked, so any id does."""
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def _tokenizer(adapter: Any) -> Any:
    tok = adapter.tokenizer
    if tok is None:
        raise LayercutError(
            f"model '{adapter.source}' has no tokenizer files: save one beside the weights"
        )
    ensure_pad_token(tok)
    return tok


def _render_messages(tok: Any, messages: list[dict]) -> str:
    if not getattr(tok, "chat_template", None):
        raise LayercutError(
            "a calibration sample uses 'messages' but the model has no chat template: "
            "use 'text' samples or a model folder with a chat template"
        )
    return tok.apply_chat_template(messages, tokenize=False)


def _encode_text(adapter: Any, samples: list[Sample], max_length: int) -> dict[str, torch.Tensor]:
    tok = _tokenizer(adapter)
    if all(s.messages is None for s in samples):
        return tok(
            [s.text for s in samples],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    # A chat template writes its own BOS, so the tokenizer must not add another.
    texts = [_render_messages(tok, s.messages) if s.messages is not None else s.text for s in samples]
    return tok(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        add_special_tokens=False,
        return_tensors="pt",
    )


def open_image(path: Any) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise LayercutError(f"image '{path}' is not a readable image ({exc}): replace the file") from None


def _encode_with_images(adapter: Any, samples: list[Sample]) -> dict[str, torch.Tensor]:
    proc = adapter.processor
    if proc is None or not hasattr(proc, "image_processor"):
        raise LayercutError(
            f"calibration samples have images but model '{adapter.source}' has no image "
            "processor: use a vision-language model or text-only samples"
        )
    tok = proc.tokenizer
    ensure_pad_token(tok)
    texts = []
    for s in samples:
        if s.messages is not None:
            messages = s.messages
        else:
            content = [{"type": "image"} for _ in s.images] + [{"type": "text", "text": s.text}]
            messages = [{"role": "user", "content": content}]
        if getattr(proc, "chat_template", None):
            texts.append(proc.apply_chat_template(messages, tokenize=False))
        else:
            placeholder = getattr(proc, "image_token", None)
            if placeholder is None:
                raise LayercutError(
                    "the processor has neither a chat template nor an image token: "
                    "save a chat template with the model"
                )
            texts.append(placeholder * len(s.images) + (s.text or ""))
    images = [[open_image(p) for p in s.images] for s in samples]
    try:
        return dict(proc(text=texts, images=images, padding=True, return_tensors="pt"))
    except (ValueError, TypeError) as exc:
        raise LayercutError(f"the processor rejected a calibration batch ({exc}): check the samples") from None
