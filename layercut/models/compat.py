"""What differs between the transformers versions layercut supports (>=5.17,<6), in one place.

`make test-compat` runs the family, surgery, scoring, engine and evaluation tests on 5.17.0 (the
oldest supported, what a fixed GPU-node image may hold) and 5.25.0 (the newest served); `make
test` runs them on constraints.txt's 5.24.0. Differences found, and how they are met:

- The KV cache's name. Up to 5.23 a model's forward (and so `generate`) takes it as
  `past_key_values` and returns it in `output.past_key_values`; from 5.24 both are `cache`
  (`past_key_values` still accepted, with a FutureWarning, until 5.40). An unknown keyword is not
  an error on either side: 5.17 swallows `cache=` into the forward's `**kwargs` and runs without
  the cache, so a cache-sharing shortcut silently stops sharing (the evaluation's own check then
  keeps plain rows: right numbers, slower). Ask the model's forward which name it takes.

- Per-token inputs of a forward that continues a cache (`Family.token_inputs`: Mllama's
  cross_attention_mask). 5.17 indexes them by absolute position (cached + new tokens) and raises
  an IndexError on rows for the new tokens only; from 5.24 either is taken (a full one is sliced
  by the model). Extend them over the cached tokens, as the attention mask is, on every version.

- Logit scaling. Aya Vision's forward multiplies its logits by `text_config.logit_scale` (as
  Cohere2's causal LM always did) from 5.25; 5.17-5.24 return them unscaled. Code that makes
  logits from hidden states itself (`Adapter.head`, the sweep engine's tail) asks `logit_scale`.

Nothing else in the tested surface (decoder lookup, config edits and save, layer renumbering,
hooks, image-token inputs, device maps) differs between these versions.

Checkpoints are also read by older clients. transformers 5 writes the RoPE base only inside
`rope_parameters`; transformers 4.x ignores that block and silently uses its default base (10000
where SmolLM2 has 100000: logits off by up to 4.7, other greedy text). `transformers4_keys` adds
the top-level keys 4.x reads beside it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers


def cache_kwarg(model: Any) -> str:
    """The keyword this model's forward (and `generate`) takes its KV cache by."""
    forward = type(model).forward  # the class's, not a hook's wrapper around the instance's
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """`model(**inputs, **with_cache(model, cache))`: the cache under the name the model reads."""
    return {cache_kwarg(model): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (`output.cache` from 5.24, `output.past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


# model_type -> the first transformers version whose forward scales the logits by the text config's
# `logit_scale` (Cohere2-based text models).
LOGIT_SCALE_SINCE: dict[str, tuple[int, int]] = {"aya_vision": (5, 25)}


def transformers_version() -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def logit_scale(model: Any) -> float | None:
    """The factor this model's forward multiplies its logits by after the LM head, or None."""
    since = LOGIT_SCALE_SINCE.get(getattr(model.config, "model_type", ""))
    if since is None or transformers_version() < since:
        return None
    return float(model.config.get_text_config(decoder=True).logit_scale)


def cover_cached(inputs: dict[str, torch.Tensor], cached: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` of a forward that continues a cache, each per-token input extended over the cached
    tokens like the attention mask: `cached[k]` holds the cached tokens' rows [T, ...], the same
    for every row of the batch."""
    out = dict(inputs)
    for k, rows in cached.items():
        if k in out:
            new = out[k]
            rows = rows.to(dtype=new.dtype, device=new.device)
            out[k] = torch.cat([rows.unsqueeze(0).expand(new.shape[0], *rows.shape), new], dim=1)
    return out


def transformers4_keys(section: dict[str, Any]) -> dict[str, Any]:
    """A config.json section (the top level, or a VLM's `text_config`) with the RoPE keys
    transformers 4.x reads (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) added beside a
    transformers 5 `rope_parameters` block. Keys the section already has are kept as they are."""
    rope = section.get("rope_parameters")
    if not isinstance(rope, dict):
        return section
    if rope and all(isinstance(v, dict) for v in rope.values()):  # per layer type (Gemma 3)
        main, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
        if "rope_theta" in local:
            section.setdefault("rope_local_base_freq", local["rope_theta"])
    else:
        main = rope
    if "rope_theta" in main:
        section.setdefault("rope_theta", main["rope_theta"])
    scaling = {k: v for k, v in main.items() if k != "rope_theta"}
    if set(scaling) - {"rope_type"} or scaling.get("rope_type", "default") != "default":
        section.setdefault("rope_scaling", scaling)  # e.g. llama3 factors, Qwen-VL's mrope_section
    return section
