"""Real model shapes without weights: one small JSON per real configuration under `shapes/`.

Each file holds the structural fields of a published checkpoint's config.json, written down as the
hub file has them (layer counts, widths, heads, vocabulary, rope settings that change shapes, sliding
windows, deepstack indexes, cross-attention layers, MoE fields, nested text/vision configs), plus:

- `source`: the hub id the shape is taken from;
- `params`: the published parameter count (approximate, for reports);
- `provenance`: where each value was read (public copies of the hub file);
- `unverified`: fields for which no copy of the real config was found (say so, never guess silently).

`config(name)` builds the transformers config offline from these fields; nothing downloads. Random
weights of a real shape: `AutoModel...from_config(config(name))` (`random:NAME` in `api`).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from layercut.errors import LayercutError

SHAPES_DIR = Path(__file__).with_name("shapes")
META = ("source", "params", "provenance", "unverified")  # keys that are not config fields


def names() -> list[str]:
    """Every shape layercut ships, sorted."""
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


@cache
def _read(name: str) -> dict[str, Any]:
    return json.loads((SHAPES_DIR / f"{name}.json").read_text())


def shape(name: str) -> dict[str, Any]:
    """The JSON of a shape (a copy: callers may edit it), or a one-line error naming the known ones."""
    if name not in names():
        raise LayercutError(f"unknown model shape '{name}': known shapes are {', '.join(names())}")
    return copy.deepcopy(_read(name))


def fields(name: str) -> dict[str, Any]:
    """The config fields of a shape alone (its metadata removed)."""
    return {k: v for k, v in shape(name).items() if k not in META}


def config(name: str) -> Any:
    """A transformers config of the real shape, built offline from its fields.

    Nested `text_config` / `vision_config` stay dicts: the composite config classes build their
    sub-configs from them (each names its own `model_type`), as `from_pretrained` does.
    """
    import transformers

    values = fields(name)
    model_type = values.pop("model_type")
    try:
        return transformers.AutoConfig.for_model(model_type, **values)
    except ValueError as exc:  # a model_type this transformers does not know
        first = str(exc).strip().splitlines()[0]
        raise LayercutError(
            f"model shape '{name}' needs a transformers that knows '{model_type}' ({first[:120]}): "
            "upgrade transformers"
        ) from None


def parameters(name: str) -> int:
    """The published parameter count of a shape (approximate)."""
    return int(shape(name)["params"])
