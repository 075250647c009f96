"""Selection stability under the calibration data: would another draw of calibration samples pick
the same layers?

scores.json keeps each calibration sample's per-layer sums (`DomainScores.per_sample`), so the
scores can be recomputed from any multiset of the samples without a model (`resample`, through
`scoring.from_samples`, the same code that made the saved scores: every sample drawn once gives
them back exactly). A replicate draws, per domain, as many samples as the domain has, with
replacement (or `draw` of them: an m-out-of-n draw, how a calibration set of m samples per domain
would fare), seeded; one draw serves every method and budget (paired). Out (`Stability`), per
method and budget: the full-data pick, how often each layer is picked over the replicates, and
the mean Jaccard index of the replicate's pick with the full-data pick. `domain_specific`: where
the math-aware and general-aware picks differ on the full data, which of those layers differ the
same way in at least `SPECIFIC` of the replicates (beyond calibration noise).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layercut.errors import LayercutError
from layercut.scoring import DomainScores, LayerScores, from_samples
from layercut.selection import MATH, NONMATH, select

FORMAT = "layercut.stability/1"
SPECIFIC = 0.95  # a layer is domain-specific when the picks differ on it in this share of replicates
STABLE = 0.9  # the mean Jaccard a pick needs to count as stable (benchmarks/bench_calib_stability.py)
MODEL_METHODS = ("iterative", "damage")  # need a model or a probe, not scores: cannot be resampled


@dataclass
class Stability:
    """How the picks of several methods move when the calibration samples are redrawn."""

    replicates: int
    seed: int
    draw: int | None  # samples per domain and replicate; None: as many as each domain has
    samples: dict[str, int]  # samples per domain in the scores
    num_layers: int
    picks: dict[str, dict[str, list[int]]]  # method -> budget -> full-data drop list
    frequency: dict[str, dict[str, list[float]]]  # method -> budget -> share of replicates picking each layer
    jaccard: dict[str, dict[str, float]]  # method -> budget -> mean Jaccard with the full-data pick
    # budget -> {"math": method, "general": method, "math_only": [...], "general_only": [...],
    #            "shares": {layer: share of replicates differing the same way}, "beyond_noise": [...]}
    domain_specific: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stability:
        return cls(**{k: v for k, v in d.items() if k != "format"})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Stability:
        return cls.from_dict(json.loads(Path(path).read_text()))



def why_not_resamplable(scores: LayerScores) -> str | None:
    """None when every domain keeps its per-sample sums; else the one line saying why not."""
    bare = [name for name, d in scores.domains.items() if not d.per_sample]
    if not bare:
        return None
    return (f"the scores of domain(s) {', '.join(bare)} keep no per-sample statistics (written before layercut "
            "kept them, or with --no-sample-stats): re-run `layercut score` to measure selection stability")


def resample(scores: LayerScores, draws: dict[str, np.ndarray]) -> LayerScores:
    """The scores recomputed from the samples `draws[domain]` (indices, repeats allowed) of each
    domain; a domain not in `draws` keeps all its samples."""
    return _resample(scores, _all_arrays(scores), draws)


def _resample(scores: LayerScores, arrays: dict[str, tuple[np.ndarray, ...]], draws: dict[str, np.ndarray]) -> LayerScores:
    domains = {}
    for name, parts in arrays.items():
        idx = np.sort(draws[name]) if name in draws else np.arange(len(parts[0]))
        domains[name] = from_samples(*(a[idx] for a in parts), keep=False)
    return LayerScores(scores.num_layers, domains, scores.scope, scores.block_tokens, scores.model, dict(scores.meta))


def selection_stability(
    scores: LayerScores,
    methods: Sequence[str],
    budgets: Sequence[int],
    *,
    protect: Iterable[int] | None = None,
    replicates: int = 200,
    seed: int = 0,
    draw: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Stability:
    """Redraw the calibration samples `replicates` times and re-select with every method at every
    budget (`options` go to `selection.select`, e.g. alpha, min_gap, domain)."""
    if replicates < 1:
        raise LayercutError(f"replicates={replicates}: give at least 1 (200 is the default)")
    if draw is not None and draw < 1:
        raise LayercutError(f"draw={draw}: draw at least 1 calibration sample per domain")
    bad = [m for m in methods if m.removesuffix("+guard") in MODEL_METHODS]
    if bad:
        raise LayercutError(f"method(s) {', '.join(bad)} do not select from the scores alone: leave them out of "
                            "the stability analysis")
    arrays = _all_arrays(scores)
    protect = None if protect is None else sorted(protect)
    budgets = sorted({int(k) for k in budgets if int(k) > 0})
    if not budgets or not methods:
        raise LayercutError("no method or no positive budget to test: pass e.g. --method math,bi --budgets 2,4,8")

    def pick(s: LayerScores) -> dict[str, dict[int, list[int]]]:
        return {m: {k: select(s, m, k, protect=protect, **options).drop for k in budgets} for m in methods}

    full = pick(scores)
    L = scores.num_layers
    counts = {m: {k: np.zeros(L) for k in budgets} for m in methods}
    jac = {m: {k: 0.0 for k in budgets} for m in methods}
    pair = _domain_pair(methods)
    sides = {k: _sides(full, pair, k) for k in budgets} if pair else {}
    same = {k: {layer: 0 for layer in sides[k][0] | sides[k][1]} for k in sides}
    rng = np.random.default_rng(seed)
    sizes = {name: d.samples for name, d in scores.domains.items()}
    for b in range(replicates):
        draws = {name: rng.integers(0, n, draw or n) for name, n in sizes.items()}
        got = pick(_resample(scores, arrays, draws))
        for m in methods:
            for k in budgets:
                counts[m][k][got[m][k]] += 1
                jac[m][k] += _jaccard(got[m][k], full[m][k])
        for k, (only_math, only_general) in sides.items():
            now_math, now_general = _sides(got, pair, k)
            for layer in same[k]:
                same[k][layer] += layer in (now_math if layer in only_math else now_general)
        if progress is not None:
            progress(b + 1, replicates)
    specific = {}
    for k, (only_math, only_general) in sides.items():
        shares = {str(layer): n / replicates for layer, n in sorted(same[k].items())}
        specific[str(k)] = {"math": pair[0], "general": pair[1], "math_only": sorted(only_math),
                            "general_only": sorted(only_general), "shares": shares,
                            "beyond_noise": [int(x) for x, p in shares.items() if p >= SPECIFIC]}
    return Stability(
        replicates, seed, draw, sizes, L,
        picks={m: {str(k): v for k, v in by.items()} for m, by in full.items()},
        frequency={m: {str(k): (c / replicates).tolist() for k, c in by.items()} for m, by in counts.items()},
        jaccard={m: {str(k): v / replicates for k, v in by.items()} for m, by in jac.items()},
        domain_specific=specific,
    )


def _all_arrays(scores: LayerScores) -> dict[str, tuple[np.ndarray, ...]]:
    why = why_not_resamplable(scores)
    if why:
        raise LayercutError(why)
    return {name: _arrays(d, scores.num_layers, name) for name, d in scores.domains.items()}


def _arrays(d: DomainScores, L: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The per-sample sums as arrays: stats [S, L, 5], block and block_n [S, L, L], units [S]."""
    p = d.per_sample
    try:
        stats = np.asarray(p["stats"], dtype=np.float64).reshape(-1, L, 5)
        block = np.zeros((len(stats), L, L))
        block_n = np.zeros((len(stats), L, L), dtype=np.int64)
        for s, (rows, ns) in enumerate(zip(p["block"], p["block_n"], strict=True)):
            for l in range(L):
                block[s, l, : L - l] = rows[l]
                block_n[s, l, : L - l] = ns[l]
        units = np.asarray(p["units"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, IndexError):
        raise LayercutError(f"domain '{name}': the per-sample statistics are malformed: re-run `layercut score`") from None
    if len(units) != len(stats) or len(stats) != d.samples:
        raise LayercutError(f"domain '{name}': {len(stats)} per-sample rows for {d.samples} samples: "
                            "re-run `layercut score`")
    return stats, block, block_n, units


def _domain_pair(methods: Sequence[str]) -> tuple[str, str] | None:
    """The math-aware and the general-aware method among `methods`, if both are there."""
    general = next((m for m in methods if m in ("general", NONMATH)), None)
    return (MATH, general) if MATH in methods and general else None


def _sides(picks: dict[str, dict[int, list[int]]], pair: tuple[str, str], k: int) -> tuple[set[int], set[int]]:
    """Layers only the math-aware pick drops, and only the general-aware one."""
    a, b = set(picks[pair[0]][k]), set(picks[pair[1]][k])
    return a - b, b - a


def _jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
