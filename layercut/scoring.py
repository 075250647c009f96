"""Per-domain layer scores from one streaming pass over a calibration set.

For decoder layer l with raw input x and raw output y (hooks on the layer itself, so never the
final norm and never a deepstack injection), over the in-scope tokens of a domain:
  cosine  s_l = mean_t cos(x_t, y_t)         angular  = mean_t arccos(cos(x_t, y_t)) / pi
plus the Gromov block distance d(l, n) = arccos(cos(x^(l), x^(l+n))) / pi, where x^(l) is the input
of layer l and x^(L) the raw output of the last layer, averaged over samples on their last token
(or over every in-scope token). Sums and counts are kept per layer in float64; hidden states are
never stored beyond the one batch in flight. Padding never counts; zero-norm tokens are skipped
and counted, so no NaN reaches the output.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from layercut.errors import LayercutError

SCOPES = ("all", "text", "image", "last")
BLOCK_TOKENS = ("last", "scope")
FORMAT = "layercut.scores/1"


@dataclass
class DomainScores:
    """Scores of one domain; lists have one entry per decoder layer unless said otherwise."""

    cosine: list[float]  # mean cos(x_t, y_t) over counted tokens (0.0 where no token counted)
    angular: list[float]  # mean arccos(cos)/pi over the same tokens
    tokens: list[int]  # tokens that counted
    zero_norm: list[int]  # tokens skipped because x_t or y_t had zero norm
    samples: int
    # block_distance[l][n-1] = d(l, n) for n = 1..L-l (row l has L-l entries)
    block_distance: list[list[float]] = field(default_factory=list)
    block_samples: int = 0

    @property
    def num_layers(self) -> int:
        return len(self.cosine)


@dataclass
class LayerScores:
    """Everything `layercut score` measured; `num_layers` and `domains.<d>.cosine` are public."""

    num_layers: int
    domains: dict[str, DomainScores]
    scope: str = "all"
    block_tokens: str = "last"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def domain(self, name: str) -> DomainScores:
        if name not in self.domains:
            raise LayercutError(
                f"no domain '{name}' in the scores (have: {', '.join(sorted(self.domains))}): "
                "pick one of those or re-score with a calibration set that has it"
            )
        return self.domains[name]

    def combined(self, names: Iterable[str] | None = None) -> DomainScores:
        """Several domains as one, weighted by their token (and sample) counts: exact pooling."""
        names = list(self.domains) if names is None else list(names)
        if not names:
            raise LayercutError("no domains to combine: the scores file has no domains")
        parts = [self.domain(n) for n in names]
        L = self.num_layers
        tokens = [sum(p.tokens[i] for p in parts) for i in range(L)]

        def pool(attr: str) -> list[float]:
            out = []
            for i in range(L):
                total = sum(getattr(p, attr)[i] * p.tokens[i] for p in parts)
                out.append(total / tokens[i] if tokens[i] else 0.0)
            return out

        bs = sum(p.block_samples for p in parts)
        block = [
            [
                (sum(p.block_distance[l][j] * p.block_samples for p in parts if p.block_samples) / bs)
                if bs
                else 0.0
                for j in range(L - l)
            ]
            for l in range(L)
        ] if bs else []
        return DomainScores(
            cosine=pool("cosine"),
            angular=pool("angular"),
            tokens=tokens,
            zero_norm=[sum(p.zero_norm[i] for p in parts) for i in range(L)],
            samples=sum(p.samples for p in parts),
            block_distance=block,
            block_samples=bs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "num_layers": self.num_layers,
            "scope": self.scope,
            "block_tokens": self.block_tokens,
            "model": self.model,
            "domains": {k: asdict(v) for k, v in self.domains.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerScores":
        return cls(
            num_layers=int(d["num_layers"]),
            domains={k: DomainScores(**v) for k, v in d["domains"].items()},
            scope=d.get("scope", "all"),
            block_tokens=d.get("block_tokens", "last"),
            model=d.get("model", ""),
            meta=d.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LayerScores":
        path = Path(path)
        if not path.is_file():
            raise LayercutError(f"scores file '{path}' not found: run `layercut score` first")
        try:
            d = json.loads(path.read_text())
            scores = cls.from_dict(d)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LayercutError(
                f"scores file '{path}' is not a layercut scores.json ({exc.__class__.__name__}): "
                "re-run `layercut score`"
            ) from None
        if any(len(v.cosine) != scores.num_layers for v in scores.domains.values()):
            raise LayercutError(f"scores file '{path}' is inconsistent (num_layers vs lists): re-run `layercut score`")
        return scores

    def to_frame(self) -> Any:
        """Tidy table: one row per (domain, layer)."""
        import pandas as pd

        rows = []
        for name, d in self.domains.items():
            for i in range(self.num_layers):
                rows.append(
                    {
                        "domain": name,
                        "layer": i,
                        "cosine": d.cosine[i],
                        "angular": d.angular[i],
                        "tokens": d.tokens[i],
                        "zero_norm": d.zero_norm[i],
                    }
                )
        return pd.DataFrame(rows)

