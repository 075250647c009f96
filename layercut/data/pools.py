"""What the built-in text and image sets share: finding a package's data folder without importing
the package, reading JSONL, the stable split of items by hash, the seeded random source of each
set and the round-robin draw over several pools. Imports nothing from its sibling modules.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from pathlib import Path

from layercut.errors import LayercutError


def hash_split(key: str) -> str:
    """Stable assignment of an item to a split: one key in four goes to eval."""
    return "eval" if int(digest(key)[:8], 16) % 4 == 0 else "calib"


def round_robin(pools: list[list], n: int, rng: random.Random, what: str) -> list:
    """n items taken in turn from each shuffled pool (an exhausted pool is skipped)."""
    total = sum(len(p) for p in pools)
    if n > total:
        raise LayercutError(f"only {total} {what} items exist: lower n_per_domain to {total}")
    shuffled = [rng.sample(p, len(p)) for p in pools]
    out: list = []
    depth = 0
    while len(out) < n:
        for pool in shuffled:
            if depth < len(pool) and len(out) < n:
                out.append(pool[depth])
        depth += 1
    return out


def rng(seed: int, split: str, what: str) -> random.Random:
    return random.Random(f"layercut/{what}/{split}/{seed}")  # str seeds hash stably (sha512)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def package_dir(module: str, requirement: str) -> Path:
    """A package's folder, found without importing it (some import heavy or unwanted things)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LayercutError(f"the built-in sets need the {module} package: "
                            f"pip install {requirement}")
    return Path(spec.submodule_search_locations[0])
