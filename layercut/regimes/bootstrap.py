"""Uncertainty for the regime analysis: a paired bootstrap over the evaluation documents.

Every cell of a sweep (method, budget, task, metric) is a mean over the same documents of its
task, so the documents are the source of sampling noise. Each replicate draws, per task, as many
documents as it has, with replacement (seeded), and uses that one draw for every method and
budget of the task: method differences are measured on the same documents (paired). Every
cell's value is recomputed from its per-document values (a weighted mean: the tokens of each
document for nll, weight 1 for accuracies), and `analyze` runs again on the resampled table.

Out (`Uncertainty`): a percentile interval for every cell; the distribution of each series'
boundaries k2 and k3 over the replicates; for each series the share of replicates in which each
claim (H1 .. H5) holds; and for each task series and budget, whether each method's difference from the
budget's leader (paired, replicate by replicate) keeps its sign across the interval. A (task,
metric) whose cells lack per-document values (e.g. a perplexity a harness aggregates its own
way, or a sweep written before cells stored them) is held at its value and listed in `fixed`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layercut.errors import LayercutError
from layercut.regimes import HOLDS, Analysis, analyze

# (method, budget, task, metric) -> (per-document values, their weights), documents in task order
DocValues = dict[tuple[str, int, str, str], tuple[np.ndarray, np.ndarray]]
NONE = "none"  # a boundary that is absent in a replicate


@dataclass
class Uncertainty:
    """What the bootstrap says about a sweep's regime analysis (see the module docstring)."""

    replicates: int
    seed: int
    confidence: float
    intervals: dict[str, list[float]]  # cell key "method|budget|task|metric" -> [low, high]
    boundaries: dict[str, dict[str, dict[str, float]]]  # series -> {"k2"|"k3": {budget or "none": share}}
    verdicts: dict[str, dict[str, float]]  # series -> {"H1": share of replicates in which it holds, ...}
    # task series -> {budget: {"leader": method, "methods": {method: [low, high]}}}: the interval
    # of leader minus method, oriented so that positive means the leader is better
    differences: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # "task|metric" held at their values

    def significant(self, series: str, budget: int) -> list[str]:
        """Methods whose difference from the leader at `budget` is beyond the interval."""
        cell = self.differences.get(series, {}).get(str(budget))
        return [m for m, (low, _) in cell["methods"].items() if low > 0] if cell else []

    def annotate(self, analysis: Analysis) -> None:
        """Put each claim's share of resamples into `analysis` (claim.numbers["share"]), so that
        analysis.json carries the probabilities beside the verdicts."""
        for s in analysis.series:
            for c in s.claims:
                if c.id in self.verdicts.get(s.key, {}):
                    c.numbers["share"] = self.verdicts[s.key][c.id]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Uncertainty:
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Uncertainty:
        return cls.from_dict(json.loads(Path(path).read_text()))


def cell_key(method: str, budget: int, task: str, metric: str) -> str:
    return f"{method}|{int(budget)}|{task}|{metric}"


def bootstrap(
    results: pd.DataFrame,
    docs: DocValues,
    *,
    replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    draw: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **analyze_options: Any,
) -> Uncertainty:
    """The paired bootstrap of `analyze(results, **analyze_options)` over the documents in `docs`.

    `draw` documents per task and replicate instead of as many as the task has (an m-out-of-n
    bootstrap): how stable the verdicts would be on a sweep of `draw` documents, e.g. to find how
    many a sweep needs before its boundaries settle (benchmarks/bench_regime_stability.py)."""
    if replicates < 1:
        raise LayercutError(f"replicates={replicates}: give at least 1 (1000 is the default)")
    if not 0.0 < confidence < 1.0:
        raise LayercutError(f"confidence {confidence} is outside (0, 1): pass e.g. 0.95")
    if draw is not None and draw < 1:
        raise LayercutError(f"draw={draw}: draw at least 1 document per task")
    df = results.reset_index(drop=True)
    if draw is not None and "n" in df:
        df = df.assign(n=draw)  # the noise floor of an accuracy follows the documents drawn
    keys = [(str(r.method), int(r.budget), str(r.task), str(r.metric)) for r in df.itertuples()]
    groups, fixed = _resamplable(keys, docs)
    rng = np.random.default_rng(seed)
    values = np.empty((replicates, len(df)))
    k2: dict[str, list[str]] = {}
    k3: dict[str, list[str]] = {}
    holds: dict[str, dict[str, int]] = {}
    base = df["value"].to_numpy(dtype=float)
    for b in range(replicates):
        current = base.copy()
        for n, parts in groups.values():  # one draw per task: every method and budget shares it
            counts = np.bincount(rng.integers(0, n, draw or n), minlength=n)
            for rows, vw, w in parts:
                wc = w @ counts  # 0 where a draw missed every document a cell evaluated (adaptive): keep it
                current[rows] = np.where(wc > 0, (vw @ counts) / np.maximum(wc, 1e-300), base[rows])
        values[b] = current
        analysis = analyze(df.assign(value=current), **analyze_options)
        for s in analysis.series:
            k2.setdefault(s.key, []).append(NONE if s.k2 is None else str(s.k2))
            k3.setdefault(s.key, []).append(NONE if s.k3 is None else str(s.k3))
            tally = holds.setdefault(s.key, {c.id: 0 for c in s.claims})
            for c in s.claims:
                tally[c.id] += c.verdict == HOLDS
        if progress is not None:
            progress(b + 1, replicates)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
    intervals = {cell_key(*k): [float(lo), float(hi)] for k, lo, hi in zip(keys, low, high)}
    boundaries = {key: {"k2": _shares(k2[key]), "k3": _shares(k3[key])} for key in k2}
    verdicts = {key: {h: n / replicates for h, n in tally.items()} for key, tally in holds.items()}
    return Uncertainty(replicates, seed, confidence, intervals, boundaries, verdicts,
                       _differences(df, keys, values, alpha), fixed)


def _resamplable(keys: list[tuple[str, int, str, str]], docs: DocValues) -> tuple[dict, list[str]]:
    """{task: (its document count, [(rows, value x weight matrix, weight matrix) per metric])}
    for the (task, metric)s whose every cell has per-document values of one length, and the
    names of the others (held at their values)."""
    by_tm: dict[tuple[str, str], list[int]] = {}
    for i, (_, _, task, metric) in enumerate(keys):
        by_tm.setdefault((task, metric), []).append(i)
    groups: dict[str, tuple[int, list]] = {}
    fixed = []
    for (task, metric), rows in by_tm.items():
        got = [docs.get(keys[i]) for i in rows]
        sizes = {len(g[0]) for g in got if g is not None}
        n = groups[task][0] if task in groups else next(iter(sizes), 0)
        if any(g is None for g in got) or sizes != {n} or n == 0:
            fixed.append(f"{task}|{metric}")
            continue
        vw = np.stack([np.asarray(g[0], float) * np.asarray(g[1], float) for g in got])
        w = np.stack([np.asarray(g[1], float) for g in got])
        groups.setdefault(task, (n, []))[1].append((np.asarray(rows), vw, w))
    return groups, fixed


def _shares(picks: list[str]) -> dict[str, float]:
    counts = pd.Series(picks).value_counts(normalize=True, sort=True)
    return {str(k): float(v) for k, v in counts.items()}


def _differences(df: pd.DataFrame, keys: list, values: np.ndarray, alpha: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (task, metric), g in df.groupby(["task", "metric"], sort=False):
        sign = 1.0 if bool(g["higher_is_better"].iloc[0]) else -1.0
        series = f"task:{task}/{metric}"
        for budget, at in g.groupby("budget"):
            if len(at) < 2:
                continue
            rows = at.index.to_numpy()
            leader = rows[np.argmax(sign * at["value"].to_numpy())]
            cell = {"leader": str(df.at[leader, "method"]), "methods": {}}
            for r in rows:
                if r == leader or df.at[r, "method"] == df.at[leader, "method"]:
                    continue
                diff = sign * (values[:, leader] - values[:, r])
                lo, hi = np.quantile(diff, [alpha, 1.0 - alpha])
                cell["methods"][str(df.at[r, "method"])] = [float(lo), float(hi)]
            out.setdefault(series, {})[str(int(budget))] = cell
    return out
