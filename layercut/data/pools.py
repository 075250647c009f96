"""What the built-in text and image sets share: reading JSONL, the stable split of items by hash,
the seeded random source of each set and the round-robin draw over several pools. Imports nothing
from its sibling modules.
"""

from __future__ import annotations

import hashlib
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

