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
