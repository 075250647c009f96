"""Regime analysis of a sweep: where the choice of method matters, where methods converge, and
where the shape of the drop set (spread out vs contiguous) decides.

The sweep's tidy results table in (one row per method, budget, task, metric), dataclasses out;
no model and no plotting here. Everything serialises with `to_dict` / `save` / `load`.

The analysis flows one way through three submodules, each holding its part of the rule:
  series       the results table validated and read as series of r; the noise floor's ingredients
               (q_m, sigma); the statistics of each budget (`BudgetStats`); `kendall_tau_b`
  changepoint  the change-point rule: the boundaries k2 and k3, and the three `Regime`s
  verdicts     the claims H1-H3 (the regimes) and H4, H5 (the paper's own method: most stable in
               regime 1, no worse than structure-aware baselines beyond it), each a `Claim` with
               the numbers behind it
This file puts them together: `analyze`, the results of a series and of a sweep, and their
serialisation.

`hybrid_threshold` turns the analysis into the budget from which the `hybrid` method spaces its
drops: the earliest k3 over the domain series of the primary metric.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layercut.errors import LayercutError
from layercut.regimes.changepoint import (
    CONTIGUOUS,
    REGIME_NAMES,
    RULE,
    SPACING_AWARE,
    Regime,
    regime_of,
    segment,
)
from layercut.regimes.series import (
    REQUIRED,
    TIE,
    BudgetStats,
    RawSeries,
    domain_raw,
    kendall_tau_b,
    range_quantile,
    stats_per_budget,
    task_raw,
    validated_table,
)
from layercut.regimes.verdicts import (
    BASELINES,
    DEFINITIONS,
    FAILS,
    HOLDS,
    STRUCTURE_AWARE,
    UNTESTABLE,
    Claim,
    domain_aware,
    judge_claims,
    judge_ours,
)

__all__ = [
    "BASELINES",
    "CONTIGUOUS",
    "DEFINITIONS",
    "FAILS",
    "FORMAT",
    "HOLDS",
    "PRIMARY_METRICS",
    "REGIME_NAMES",
    "REQUIRED",
    "RULE",
    "SPACING_AWARE",
    "STRUCTURE_AWARE",
    "TIE",
    "UNTESTABLE",
    "Analysis",
    "BudgetStats",
    "Claim",
    "HybridRow",
    "Regime",
    "SeriesAnalysis",
    "analyze",
    "compare_hybrid",
    "domain_aware",
    "hybrid_threshold",
    "kendall_tau_b",
    "range_quantile",
]

FORMAT = "layercut.regimes/1"
PRIMARY_METRICS = ("accuracy", "acc", "exact_match", "score")  # the first present leads the summary


@dataclass
class SeriesAnalysis:
    """One (task, metric) or (domain, metric) series, analysed."""

    kind: str  # "task" or "domain"
    name: str  # the task or the domain
    metric: str
    domain: str
    tasks: list[str]
    higher_is_better: bool  # of `values`; a domain series holds r, so always True
    methods: list[str]
    budgets: list[int]
    baseline: float  # budget-0 value in metric units (1.0 for a domain series)
    n: int | None  # most examples behind one value (None when unknown or a domain series)
    normalisation: str  # how r was made from the values
    values: dict[str, list[float | None]]  # method -> value per budget, metric units (domain: r)
    scores: dict[str, list[float | None]]  # method -> r per budget
    noise_floor: float  # eps, in units of r
    noise: dict[str, Any]  # what eps was made of
    budget_stats: list[BudgetStats]
    regimes: list[Regime]  # always three, index 1..3
    claims: list[Claim]  # always H1 .. H5

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}/{self.metric}"

    def regime(self, index: int) -> Regime:
        return self.regimes[index - 1]

    @property
    def k2(self) -> int | None:
        """Start of the converging regime, or None when absent."""
        return self.regime(2).start

    @property
    def k3(self) -> int | None:
        """Start of the structure-dominated regime, or None when absent."""
        return self.regime(3).start

    def claim(self, id: str) -> Claim:
        return next(c for c in self.claims if c.id == id)


@dataclass
class HybridRow:
    """`hybrid` against its two parents at one budget of one series."""

    series: str
    budget: int
    hybrid: float | None  # metric units (domain: r)
    parents: dict[str, float | None]
    best_parent: str | None
    delta: float | None  # hybrid - best parent, oriented so positive = hybrid better, metric units
    rel_delta: float | None  # the same in units of r
    within_noise: bool | None  # |rel_delta| <= the series' noise floor


@dataclass
class Analysis:
    """The regime analysis of a whole sweep."""

    series: list[SeriesAnalysis]
    methods: list[str]
    budgets: list[int]
    families: dict[str, list[str]]  # "contiguous" and "spacing-aware" as used
    primary_metric: str
    rel_floor: float
    confidence: float
    rule: list[str] = field(default_factory=lambda: list(RULE))

    def get(self, kind: str, name: str, metric: str | None = None) -> SeriesAnalysis:
        metric = metric or self.primary_metric
        for s in self.series:
            if (s.kind, s.name, s.metric) == (kind, name, metric):
                return s
        raise LayercutError(
            f"no {kind} series '{name}' for metric '{metric}' (have: {', '.join(s.key for s in self.series)}): "
            "pick one of those"
        )

    def domain_series(self, metric: str | None = None) -> list[SeriesAnalysis]:
        metric = metric or self.primary_metric
        return [s for s in self.series if s.kind == "domain" and s.metric == metric]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        series = []
        for s in d["series"]:
            s = dict(s)
            s["budget_stats"] = [BudgetStats(**b) for b in s["budget_stats"]]
            s["regimes"] = [Regime(**r) for r in s["regimes"]]
            s["claims"] = [Claim(**c) for c in s["claims"]]
            series.append(SeriesAnalysis(**s))
        return cls(
            series=series,
            methods=list(d["methods"]),
            budgets=[int(b) for b in d["budgets"]],
            families={k: list(v) for k, v in d["families"].items()},
            primary_metric=d["primary_metric"],
            rel_floor=float(d["rel_floor"]),
            confidence=float(d["confidence"]),
            rule=list(d.get("rule", RULE)),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Analysis:
        path = Path(path)
        if not path.is_file():
            raise LayercutError(f"analysis file '{path}' not found: run `layercut report` on the sweep first")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LayercutError(
                f"analysis file '{path}' is not a layercut regime analysis ({exc.__class__.__name__}): "
                "run `layercut report` again"
            ) from None


# --------------------------------------------------------------------------- public functions


def analyze(
    results: pd.DataFrame,
    *,
    contiguous: Sequence[str] = CONTIGUOUS,
    spacing_aware: Sequence[str] = SPACING_AWARE,
    rel_floor: float = 0.02,
    confidence: float = 0.95,
) -> Analysis:
    """Analyse a sweep results table: one series per (task, metric) and per (domain, metric).

    `contiguous` and `spacing_aware` name the two method families the structure rule compares;
    `rel_floor` is the smallest noise floor (a fraction of the unpruned score); `confidence` the
    level of the sampling-noise floor.
    """
    if not 0.0 < confidence < 1.0:
        raise LayercutError(f"confidence {confidence} is outside (0, 1): pass e.g. 0.95")
    if rel_floor < 0.0:
        raise LayercutError(f"rel_floor {rel_floor} is negative: pass a fraction of the unpruned score, e.g. 0.02")
    df = validated_table(results)
    methods = [str(m) for m in pd.unique(df["method"])]
    budgets = sorted(int(b) for b in pd.unique(df["budget"]))
    fam = {"contiguous": [str(m) for m in contiguous], "spacing-aware": [str(m) for m in spacing_aware]}

    groups = df.groupby(["task", "metric"], sort=False)
    tasks = [task_raw(g, task, metric, methods) for (task, metric), g in groups]
    domains: list[RawSeries] = []
    for (domain, metric) in dict.fromkeys((t.domain, t.metric) for t in tasks):
        domains.append(domain_raw(domain, metric, [t for t in tasks if (t.domain, t.metric) == (domain, metric)]))
    series = [_analyse(raw, fam, rel_floor, confidence, [t for t in tasks if raw.kind == "domain"
                       and t.name in raw.tasks and t.metric == raw.metric]) for raw in tasks + domains]

    metrics = list(dict.fromkeys(s.metric for s in series))
    primary = next((m for m in PRIMARY_METRICS if m in metrics), None)
    if primary is None:
        higher = [s.metric for s in series if s.kind == "task" and s.higher_is_better]
        primary = higher[0] if higher else metrics[0]
    return Analysis(series, methods, budgets, fam, primary, rel_floor, confidence)


def hybrid_threshold(analysis: Analysis, domain: str | None = None, metric: str | None = None) -> int | None:
    """The budget from which `hybrid` should switch from domain ranking to spaced drops.

    The earliest start of the structure-dominated regime over the domain series of `metric` (the
    primary metric by default), or of `domain` alone: from there on, in at least one domain, a
    spacing-aware method leads and contiguous drops have collapsed; below it no domain shows
    that, so ranking by the domain keeps whatever low-budget advantage it has. The earliest
    rather than a later start, because spacing costs little where methods have converged and
    ranking costs much once structure dominates. None when no domain series reaches regime 3
    inside the swept budgets (keep ranking; sweep larger budgets to find out).
    """
    series = analysis.domain_series(metric)
    if domain is not None:
        series = [s for s in series if s.name == domain]
        if not series:
            have = ", ".join(s.name for s in analysis.domain_series(metric))
            raise LayercutError(f"no domain '{domain}' in the analysis (have: {have}): pick one of those")
    starts = [s.k3 for s in series if s.k3 is not None]
    return min(starts) if starts else None


def compare_hybrid(
    analysis: Analysis, hybrid: str = "hybrid", parents: Sequence[str] = ("math", "spacing")
) -> list[HybridRow]:
    """`hybrid` against its parents (its ranking domain and `spacing`) at every budget of every
    series; empty when the sweep has no `hybrid` or none of the parents."""
    rows: list[HybridRow] = []
    if hybrid not in analysis.methods:
        return rows
    for s in analysis.series:
        present = [p for p in parents if p in s.values]
        if hybrid not in s.values or not present:
            continue
        sign = 1.0 if s.higher_is_better else -1.0
        for i, k in enumerate(s.budgets):
            h, hr = s.values[hybrid][i], s.scores[hybrid][i]
            vals = {p: s.values[p][i] for p in present}
            seen = [p for p in present if vals[p] is not None]
            best = max(seen, key=lambda p: s.scores[p][i]) if seen else None
            if h is None or best is None:
                rows.append(HybridRow(s.key, k, h, vals, best, None, None, None))
                continue
            delta = sign * (h - vals[best]) + 0.0  # + 0.0: no "-0.000" in tables
            rel = hr - s.scores[best][i] + 0.0
            rows.append(HybridRow(s.key, k, h, vals, best, delta, rel, abs(rel) <= s.noise_floor))
    return rows


# --------------------------------------------------------------------------- helpers


def _analyse(raw: RawSeries, fam: dict[str, list[str]], rel_floor: float, confidence: float,
             tasks: list[RawSeries]) -> SeriesAnalysis:
    m = len(raw.methods)
    q = range_quantile(m, confidence)
    eps = max(rel_floor, q * raw.sigma) if raw.sigma is not None else rel_floor
    noise = {
        "methods": m,
        "q": q,
        "sigma": raw.sigma,
        "rel_floor": rel_floor,
        "confidence": confidence,
        "source": "sampling" if raw.sigma is not None and q * raw.sigma > rel_floor else "rel_floor",
    }
    stats = stats_per_budget(raw, fam, eps)
    seg = segment(stats, eps, m, fam, raw.methods)
    for s in stats:
        s.regime = seg.assignment.get(s.budget)
    regimes = [regime_of(i, seg, stats, raw) for i in (1, 2, 3)]
    claims = judge_claims(seg, stats, eps, m, fam, raw.methods) + judge_ours(seg, raw, tasks, eps)
    return SeriesAnalysis(
        kind=raw.kind, name=raw.name, metric=raw.metric, domain=raw.domain, tasks=raw.tasks,
        higher_is_better=raw.higher_is_better, methods=raw.methods, budgets=raw.budgets, baseline=raw.baseline,
        n=raw.n, normalisation=raw.normalisation, values=raw.values, scores=raw.scores, noise_floor=eps,
        noise=noise, budget_stats=stats, regimes=regimes, claims=claims,
    )
