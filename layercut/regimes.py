"""Regime analysis of a sweep: where the choice of method matters, where methods converge, and
where the shape of the drop set (spread out vs contiguous) decides.

The sweep's tidy results table in (one row per method, budget, task, metric), dataclasses out;
no model and no plotting here. Everything serialises with `to_dict` / `save` / `load`.

Series. Every (task, metric) pair is a series in the metric's own units, and every (domain,
metric) pair is one too: the mean over the domain's tasks of a normalised score r that is 1 at
budget 0 and where higher is always better,
    higher is better: r = v / v0          lower is better (nll): r = v0 / v
(v0 = the budget-0 value; where v0 <= 0, or some v <= 0 for lower-is-better, r = 1 + (v - v0)
or 1 - (v - v0) instead, in metric units). The rules below read every series through r, so one
rule fits accuracy and nll alike, and S(k), the spread of r across methods at budget k
(max - min), is a fraction of the unpruned score.

Noise floor. eps = max(rel_floor, q_m * sigma): the spread that m equally good methods would
exceed only 5 % of the time by sampling alone, and never below rel_floor (2 % of the unpruned
score). q_m is the 95 % quantile of the range of m independent standard normals (the studentized
range with infinite degrees of freedom: 2.77 for 2 methods, 3.63 for 4, 4.17 for 7). sigma is
the standard error of one method's r: sqrt(p (1 - p) / n) / v0, for metrics in [0, 1] where
higher is better (per-example scores in [0, 1] have variance at most p (1 - p), so this bounds
accuracy, exact match, ANLS, ...), with p the value of the series nearest 0.5 and n the fewest
examples of its rows; a domain's sigma is sqrt(sum sigma_t^2) / T over its T tasks. Other metrics
(nll) have no sigma and use rel_floor alone. Methods scored on the same examples differ less than
this independent-samples bound, so eps errs towards calling a difference noise.

The change-point rule. Only positive budgets are segmented (budget 0 is the reference); the
boundaries k2 and k3 are budgets; regime 1 is [first budget, k2), 2 is [k2, k3), 3 is [k3, last].
Families: contiguous = block, last; spacing-aware = spacing, uniform; the rest rank layers. `hybrid`
is in neither: below its threshold it ranks like its domain method, so counting it as spacing-aware
would let its ranking half start regime 3, and its threshold is what this analysis estimates.
  Regime 3 (structure-dominated) starts at k3, the smallest budget where (a) a spacing-aware method
  has the best r (ties count), (b) the best contiguous method is more than eps below it (they
  collapse), and (c) at every larger budget the best spacing-aware method stays within eps of the
  best method (nothing later contradicts it). No such budget, or no method of one of the two
  families in the sweep: the regime is absent, and the analysis says which.
  Regimes 1 and 2 split the budgets before k3 (all of them when regime 3 is absent). S* is the
  largest spread there, first reached at k*. If S* <= eps the methods never differ beyond noise:
  regime 1 is absent and those budgets are regime 2. Otherwise regime 2 starts at k2, the first
  budget after k* from which the spread stays at or below max(S*/2, eps) up to k3 (a half-maximum
  rule: one noisy budget cannot end regime 1 early, and a late rebound keeps it going); when the
  spread never settles there, regime 2 is absent and regime 1 runs up to k3 (or the last budget).

Claims, each "holds", "does not hold" or "not testable", with the numbers behind it:
  H1 at low budgets the choice of method matters: S* > eps on the budgets before k3.
  H2 methods converge at moderate budgets: regime 1 is followed by regime 2 (the spread falls to
     at most max(S*/2, eps) and stays there). Not testable when nothing differed to begin with,
     or when the sweep ends at the spread's peak.
  H3 at high budgets spacing-aware methods lead and contiguous drops collapse: regime 3 exists.
     Not testable without at least one method of each family.

`hybrid_threshold` turns the analysis into the budget from which the `hybrid` method spaces its
drops: the earliest k3 over the domain series of the primary metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layercut.errors import LayercutError

FORMAT = "layercut.regimes/1"
CONTIGUOUS = ("block", "last")  # drops that cluster: they collapse once a block grows too long
SPACING_AWARE = ("spacing", "uniform")  # drops kept apart by construction (hybrid only above its threshold)
REGIME_NAMES = {1: "ranking-sensitive", 2: "converging", 3: "structure-dominated"}
HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"
REQUIRED = ("method", "budget", "task", "domain", "metric", "value", "higher_is_better")
TIE = 1e-9  # scores closer than this (in units of r) are tied
PRIMARY_METRICS = ("accuracy", "acc", "exact_match", "score")  # the first present leads the summary

# The rule in the words the report prints (the docstring above says the same at more length).
RULE = (
    ("Every series is read through r, the score relative to the unpruned model (budget 0), oriented so "
     "that higher is better: r = v / v0, or v0 / v for lower-is-better metrics such as nll. A domain "
     "series averages r over its tasks. S(k) = max − min of r across methods at budget k."),
    ("Noise floor ε = max(2 % of the unpruned score, q_m · σ): q_m is the 95 % quantile of the range of "
     "m independent standard normals (m = number of methods) and σ = √(p(1−p)/n) / v0 the binomial "
     "standard error of one method's r (metrics in [0, 1] only; p = the series value nearest 0.5, n = "
     "examples). A spread above ε is more than m equally good methods would show by chance."),
    ("Regime 3 (structure-dominated) starts at k3, the smallest budget where a spacing-aware method "
     "(spacing, uniform) has the best r, the best contiguous method (block, last) is more than ε below it, "
     "and at every larger budget the best spacing-aware method stays within ε of the best. `hybrid` is in "
     "neither family: below its threshold it ranks like its domain method, and the threshold is what this "
     "analysis estimates."),
    ("Before k3: S* = the largest spread, first at k*. If S* ≤ ε, regime 1 is absent (methods never "
     "differ beyond noise) and those budgets are regime 2. Otherwise regime 2 starts at k2, the first "
     "budget after k* from which S(k) stays ≤ max(S*/2, ε) until k3 (half-maximum rule); regime 1 is "
     "every budget before k2."),
    ("A regime with no budget meeting its condition is reported absent, with the reason; no boundary is "
     "invented. The hybrid threshold is the earliest k3 over the domain series of the primary metric."),
)


@dataclass
class BudgetStats:
    """One budget of one series: how far apart the methods are and who leads."""

    budget: int
    methods: int  # methods with a value at this budget
    spread: float  # max - min across methods, metric units (a domain series: units of r)
    std: float  # population std across methods, same units
    rel_spread: float  # max - min of r: a fraction of the unpruned score
    rel_std: float
    best: float  # the leaders' r
    leaders: list[str]  # the methods with the best r (ties kept)
    near_best: list[str]  # the methods within the noise floor of the best
    tau_next: float | None  # Kendall tau-b of the methods' r here vs at next_budget; None if undefined
    next_budget: int | None
    best_spacing: str | None  # best spacing-aware method and its r
    best_spacing_score: float | None
    best_contiguous: str | None  # best contiguous method and its r
    best_contiguous_score: float | None
    gap: float | None  # best_spacing_score - best_contiguous_score
    regime: int | None  # 1, 2 or 3; None at budget 0 and where nothing is segmented


@dataclass
class Regime:
    """One of the three regimes of one series; `present` False says it was not found, `note` why."""

    index: int  # 1, 2, 3
    name: str
    present: bool
    budgets: list[int]
    start: int | None  # first budget in it
    end: int | None  # last budget in it (inclusive)
    leaders: list[str]  # highest mean r over the regime's budgets
    mean_score: dict[str, float]  # method -> mean r over the regime's budgets (methods seen at all of them)
    lead_counts: dict[str, int]  # method -> budgets of the regime where it was a leader
    mean_rel_spread: float | None
    mean_tau: float | None  # mean tau-b to the next budget over the regime's budgets that have one
    note: str  # how it was found, or why it is absent


@dataclass
class Claim:
    """A paper claim tested on one series."""

    id: str  # "H1", "H2", "H3"
    statement: str
    verdict: str  # HOLDS, FAILS or UNTESTABLE
    reason: str  # one line with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)


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
    n: int | None  # fewest examples behind one value (None when unknown or a domain series)
    normalisation: str  # how r was made from the values
    values: dict[str, list[float | None]]  # method -> value per budget, metric units (domain: r)
    scores: dict[str, list[float | None]]  # method -> r per budget
    noise_floor: float  # eps, in units of r
    noise: dict[str, Any]  # what eps was made of
    budget_stats: list[BudgetStats]
    regimes: list[Regime]  # always three, index 1..3
    claims: list[Claim]  # always H1, H2, H3

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
    df = _validated(results)
    methods = [str(m) for m in pd.unique(df["method"])]
    budgets = sorted(int(b) for b in pd.unique(df["budget"]))
    fam = {"contiguous": [str(m) for m in contiguous], "spacing-aware": [str(m) for m in spacing_aware]}

    groups = df.groupby(["task", "metric"], sort=False)
    tasks = [_task_raw(g, task, metric, methods) for (task, metric), g in groups]
    domains: list[_Raw] = []
    for (domain, metric) in dict.fromkeys((t.domain, t.metric) for t in tasks):
        domains.append(_domain_raw(domain, metric, [t for t in tasks if (t.domain, t.metric) == (domain, metric)]))
    series = [_analyse(raw, fam, rel_floor, confidence) for raw in tasks + domains]

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


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired samples (ties handled as in scipy.stats.kendalltau).

    None when it is undefined: fewer than two pairs, or every value of x (or of y) tied.
    """
    if len(x) != len(y):
        raise LayercutError(f"kendall_tau_b got {len(x)} and {len(y)} values: pass paired samples")
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0  # tied_x: pairs tied in x (whatever y does)
    for i in range(n):
        for j in range(i + 1, n):
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    pairs = n * (n - 1) // 2
    denom = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return (concordant - discordant) / denom if denom > 0 else None


def range_quantile(m: int, confidence: float = 0.95) -> float:
    """The `confidence` quantile of the range (max - min) of m independent standard normals."""
    return _range_quantile(int(m), float(confidence))


# --------------------------------------------------------------------------- helpers


@dataclass
class _Raw:
    """A series before analysis: values and r per method per budget, and its noise."""

    kind: str
    name: str
    metric: str
    domain: str
    tasks: list[str]
    higher_is_better: bool
    methods: list[str]
    budgets: list[int]
    baseline: float
    n: int | None
    normalisation: str
    values: dict[str, list[float | None]]
    scores: dict[str, list[float | None]]
    sigma: float | None  # standard error of one method's r, None when unknown


def _validated(results: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise LayercutError(
            f"the results table lacks column(s) {', '.join(missing)}: pass the results.parquet of `layercut sweep`"
        )
    df = results.copy()
    df = df[pd.notna(df["value"]) & np.isfinite(pd.to_numeric(df["value"], errors="coerce"))]
    if df.empty:
        raise LayercutError("the results table has no finite values: re-run `layercut sweep`")
    df["value"] = df["value"].astype(float)
    df["budget"] = df["budget"].astype(int)
    for c in ("method", "task", "domain", "metric"):
        df[c] = df[c].astype(str)
    df["higher_is_better"] = df["higher_is_better"].map(_as_bool)
    return df


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _task_raw(g: pd.DataFrame, task: str, metric: str, methods: list[str]) -> _Raw:
    if g["higher_is_better"].nunique() > 1:
        raise LayercutError(f"task '{task}' metric '{metric}' is both higher- and lower-is-better: fix the sweep rows")
    higher = bool(g["higher_is_better"].iloc[0])
    budgets = sorted(int(b) for b in pd.unique(g["budget"]))
    base_rows = g[g["budget"] == 0]["value"]
    if base_rows.empty:
        raise LayercutError(
            f"task '{task}' metric '{metric}' has no budget-0 row: include budget 0 (the unpruned model) in the sweep"
        )
    v0 = float(base_rows.mean())
    cell = g.groupby(["method", "budget"])["value"].mean()
    here = [m for m in methods if m in set(g["method"])]
    values = {m: [_get(cell, (m, k)) for k in budgets] for m in here}
    seen = [v for vs in values.values() for v in vs if v is not None]
    ratio = v0 > 0 and (higher or min(seen) > 0)
    if ratio:
        scores = {m: [None if v is None else (v / v0 if higher else v0 / v) for v in vs] for m, vs in values.items()}
        normalisation = "v / v0" if higher else "v0 / v"
    else:
        sign = 1.0 if higher else -1.0
        scores = {m: [None if v is None else 1.0 + sign * (v - v0) for v in vs] for m, vs in values.items()}
        normalisation = "1 + (v - v0)" if higher else "1 - (v - v0)"
    n = None
    if "n" in g.columns:
        ns = pd.to_numeric(g["n"], errors="coerce")
        ns = ns[ns > 0]
        n = int(ns.min()) if len(ns) else None
    sigma = None
    if higher and n and 0.0 <= min(seen) and max(seen) <= 1.0:
        p = min(seen, key=lambda v: abs(v - 0.5))
        sigma = math.sqrt(p * (1.0 - p) / n) / (v0 if ratio else 1.0)
    domain = str(g["domain"].iloc[0])
    return _Raw("task", task, metric, domain, [task], higher, here, budgets, v0, n, normalisation, values, scores,
                sigma)


def _get(cell: pd.Series, key: tuple[str, int]) -> float | None:
    return float(cell[key]) if key in cell.index else None


def _domain_raw(domain: str, metric: str, tasks: list[_Raw]) -> _Raw:
    budgets = sorted({k for t in tasks for k in t.budgets})
    methods = list(dict.fromkeys(m for t in tasks for m in t.methods))
    scores: dict[str, list[float | None]] = {}
    for m in methods:
        row = []
        for k in budgets:
            rs = [t.scores[m][t.budgets.index(k)] for t in tasks if m in t.scores and k in t.budgets]
            rs = [r for r in rs if r is not None]
            row.append(float(np.mean(rs)) if rs else None)
        scores[m] = row
    sigmas = [t.sigma for t in tasks if t.sigma is not None]
    sigma = math.sqrt(sum(s * s for s in sigmas)) / len(tasks) if sigmas else None
    norms = sorted({t.normalisation for t in tasks})
    return _Raw("domain", domain, metric, domain, [t.name for t in tasks], True, methods, budgets, 1.0, None,
                f"mean over tasks of r ({', '.join(norms)})", scores, {m: list(v) for m, v in scores.items()}, sigma)


def _analyse(raw: _Raw, fam: dict[str, list[str]], rel_floor: float, confidence: float) -> SeriesAnalysis:
    m = len(raw.methods)
    q = _range_quantile(m, confidence)
    eps = max(rel_floor, q * raw.sigma) if raw.sigma is not None else rel_floor
    noise = {
        "methods": m,
        "q": q,
        "sigma": raw.sigma,
        "rel_floor": rel_floor,
        "confidence": confidence,
        "source": "sampling" if raw.sigma is not None and q * raw.sigma > rel_floor else "rel_floor",
    }
    stats = _budget_stats(raw, fam, eps)
    seg = _segment(stats, eps, m, fam, raw.methods)
    for s in stats:
        s.regime = seg.assignment.get(s.budget)
    regimes = [_regime(i, seg, stats, raw) for i in (1, 2, 3)]
    claims = _claims(seg, stats, eps, m, fam, raw.methods)
    return SeriesAnalysis(
        kind=raw.kind, name=raw.name, metric=raw.metric, domain=raw.domain, tasks=raw.tasks,
        higher_is_better=raw.higher_is_better, methods=raw.methods, budgets=raw.budgets, baseline=raw.baseline,
        n=raw.n, normalisation=raw.normalisation, values=raw.values, scores=raw.scores, noise_floor=eps,
        noise=noise, budget_stats=stats, regimes=regimes, claims=claims,
    )


def _budget_stats(raw: _Raw, fam: dict[str, list[str]], eps: float) -> list[BudgetStats]:
    out = []
    for i, k in enumerate(raw.budgets):
        here = [m for m in raw.methods if raw.scores[m][i] is not None]
        r = {m: round(raw.scores[m][i], 12) for m in here}  # rounding: float noise is no rank change
        v = np.array([raw.values[m][i] for m in here])
        rs = np.array([r[m] for m in here])
        best = float(rs.max())
        tau, nxt = None, None
        if i + 1 < len(raw.budgets):
            nxt = raw.budgets[i + 1]
            both = [m for m in here if raw.scores[m][i + 1] is not None]
            tau = kendall_tau_b([r[m] for m in both], [round(raw.scores[m][i + 1], 12) for m in both])
        sp = _best_of(r, fam["spacing-aware"])
        co = _best_of(r, fam["contiguous"])
        out.append(BudgetStats(
            budget=k, methods=len(here), spread=float(v.max() - v.min()), std=float(v.std()),
            rel_spread=float(rs.max() - rs.min()), rel_std=float(rs.std()), best=best,
            leaders=[m for m in here if r[m] >= best - TIE], near_best=[m for m in here if r[m] >= best - eps],
            tau_next=tau, next_budget=nxt,
            best_spacing=sp[0], best_spacing_score=sp[1], best_contiguous=co[0], best_contiguous_score=co[1],
            gap=None if sp[1] is None or co[1] is None else sp[1] - co[1], regime=None,
        ))
    return out


def _best_of(r: dict[str, float], family: list[str]) -> tuple[str | None, float | None]:
    mine = [m for m in r if m in family]
    if not mine:
        return None, None
    best = max(mine, key=lambda m: r[m])  # first in method order on a tie
    return best, r[best]


@dataclass
class _Segments:
    """Where the rule put the boundaries of one series, and what it saw on the way."""

    positive: list[BudgetStats]
    pre: list[BudgetStats]  # the positive budgets before k3
    k2: int | None  # index into pre
    k3: int | None  # index into positive
    peak: float | None  # S*
    peak_at: int | None  # index into pre
    settle: float | None  # max(S*/2, eps)
    assignment: dict[int, int]  # budget -> regime
    notes: dict[int, str]


def _segment(
    stats: list[BudgetStats], eps: float, m: int, fam: dict[str, list[str]], methods: list[str]
) -> _Segments:
    pos = [s for s in stats if s.budget > 0]
    seg = _Segments(pos, [], None, None, None, None, None, {}, {1: "", 2: "", 3: ""})
    if not pos or m < 2:
        why = "the sweep has no positive budget" if not pos else "only one method: nothing to compare"
        seg.notes = {1: why, 2: why, 3: why}
        return seg

    # Regime 3: walk down from the largest budget while the spacing-aware family stays near the top.
    lacking = [name for name in ("contiguous", "spacing-aware") if not set(fam[name]) & set(methods)]
    if lacking:
        seg.notes[3] = f"no {' and no '.join(lacking)} method in the sweep ({_family_hint(fam, lacking)})"
    else:
        for i in range(len(pos) - 1, -1, -1):
            s = pos[i]
            if s.best_spacing_score is None or s.best_spacing_score < s.best - eps:
                break
            if s.best_spacing_score >= s.best - TIE and s.gap is not None and s.gap > eps:
                seg.k3 = i
        last = pos[-1]
        if seg.k3 is None:
            gap = "n/a" if last.gap is None else f"{last.gap:+.3f}"
            seg.notes[3] = (
                f"no budget from which a spacing-aware method leads, the contiguous ones more than ε={eps:.3f} "
                f"behind, to the end of the sweep (at k={last.budget}: spacing-aware minus contiguous = {gap}); "
                "it may lie beyond the swept budgets"
            )
        else:
            s = pos[seg.k3]
            seg.notes[3] = (
                f"from k={s.budget}: {s.best_spacing} leads (r={s.best_spacing_score:.3f}) and the best contiguous "
                f"method {s.best_contiguous} is {s.gap:.3f} behind (> ε={eps:.3f}); spacing-aware stays within ε "
                "of the best to the end of the sweep"
            )
    pre = pos[: seg.k3] if seg.k3 is not None else pos
    seg.pre = pre
    for s in pos[len(pre):]:
        seg.assignment[s.budget] = 3
    if not pre:
        why = "structure dominates from the first swept budget"
        seg.notes[1] = seg.notes[2] = why
        return seg

    # Regimes 1 and 2: the half-maximum rule on the spread before k3.
    spreads = [s.rel_spread for s in pre]
    seg.peak = max(spreads)
    seg.peak_at = spreads.index(seg.peak)
    peak_k = pre[seg.peak_at].budget
    if seg.peak <= eps:
        seg.k2 = 0
        seg.notes[1] = f"S*={seg.peak:.3f} (k={peak_k}) ≤ ε={eps:.3f}: the methods never differ beyond noise"
        seg.notes[2] = f"the spread stays within the noise floor ε={eps:.3f} from the first budget"
    else:
        seg.settle = max(seg.peak / 2.0, eps)
        for i in range(len(pre) - 1, seg.peak_at, -1):
            if pre[i].rel_spread > seg.settle:
                break
            seg.k2 = i
        seg.notes[1] = f"spread peaks at S*={seg.peak:.3f} at k={peak_k} (ε={eps:.3f})"
        if seg.k2 is None:
            seg.notes[2] = (
                f"the sweep ends at the spread's peak (k={peak_k})" if seg.peak_at == len(pre) - 1 and seg.k3 is None
                else f"after its peak the spread does not settle at or below max(S*/2, ε)={seg.settle:.3f} "
                f"{'before regime 3' if seg.k3 is not None else 'by the end of the sweep'}"
            )
        else:
            seg.notes[2] = (
                f"from k={pre[seg.k2].budget} the spread stays at or below max(S*/2, ε)={seg.settle:.3f}"
                f"{' until regime 3' if seg.k3 is not None else ' to the end of the sweep'}"
            )
    split = seg.k2 if seg.k2 is not None else len(pre)
    for i, s in enumerate(pre):
        seg.assignment[s.budget] = 1 if i < split else 2
    return seg


def _regime(index: int, seg: _Segments, stats: list[BudgetStats], raw: _Raw) -> Regime:
    budgets = [k for k, r in seg.assignment.items() if r == index]
    budgets.sort()
    if not budgets:
        return Regime(index, REGIME_NAMES[index], False, [], None, None, [], {}, {}, None, None,
                      seg.notes[index] or "no budget meets its condition")
    rows = [s for s in stats if s.budget in budgets]
    cols = [raw.budgets.index(k) for k in budgets]
    mean = {m: float(np.mean([raw.scores[m][i] for i in cols])) for m in raw.methods
            if all(raw.scores[m][i] is not None for i in cols)}
    top = max(mean.values()) if mean else None
    leaders = [m for m, v in mean.items() if top is not None and v >= top - TIE]
    counts = {m: sum(m in s.leaders for s in rows) for m in raw.methods}
    taus = [s.tau_next for s in rows if s.tau_next is not None]
    return Regime(
        index, REGIME_NAMES[index], True, budgets, budgets[0], budgets[-1], leaders, mean,
        {m: c for m, c in counts.items() if c}, float(np.mean([s.rel_spread for s in rows])),
        float(np.mean(taus)) if taus else None, seg.notes[index],
    )


def _claims(
    seg: _Segments, stats: list[BudgetStats], eps: float, m: int, fam: dict[str, list[str]], methods: list[str]
) -> list[Claim]:
    h1 = Claim("H1", "at low budgets the choice of method matters", UNTESTABLE, "")
    h2 = Claim("H2", "methods converge at moderate budgets", UNTESTABLE, "")
    h3 = Claim("H3", "at high budgets spacing-aware methods lead and contiguous drops collapse", UNTESTABLE, "")
    claims = [h1, h2, h3]
    if m < 2 or not seg.positive:
        why = "only one method: nothing to compare" if m < 2 else "the sweep has no positive budget"
        for c in claims:
            c.reason = why
        return claims

    # H1: the spread before structure dominates against the noise floor.
    if not seg.pre:
        h1.reason = "structure dominates from the first swept budget: no low-budget range to test"
    else:
        top = seg.pre[seg.peak_at]
        h1.numbers = {"peak_spread": seg.peak, "peak_budget": top.budget, "noise_floor": eps,
                      "ratio": seg.peak / eps if eps > 0 else None, "leaders": top.leaders,
                      "peak_spread_metric_units": top.spread}
        ratio = f"{seg.peak / eps:.1f}× ε" if eps > 0 else "ε = 0"
        if seg.peak > eps:
            h1.verdict = HOLDS
            h1.reason = (f"spread S*={seg.peak:.3f} of the unpruned score at k={top.budget} is {ratio} "
                         f"(ε={eps:.3f}); leader(s) there: {_who(top.leaders)}")
        else:
            h1.verdict = FAILS
            h1.reason = (f"the largest spread before structure dominates, S*={seg.peak:.3f} at k={top.budget}, "
                         f"is within the noise floor ε={eps:.3f}")

    # H2: after the peak the spread settles at or below half of it.
    if not seg.pre:
        h2.reason = "structure dominates from the first swept budget: no moderate budgets to test"
    elif seg.peak <= eps:
        h2.reason = f"the methods never differ beyond noise (S*={seg.peak:.3f} ≤ ε={eps:.3f}): nothing to converge from"
    elif seg.k2 is None and seg.peak_at == len(seg.pre) - 1 and seg.k3 is None:
        h2.reason = (f"the spread is still at its peak at the largest budget k={seg.pre[-1].budget}: "
                     "sweep larger budgets to test convergence")
    else:
        after = seg.pre[seg.peak_at + 1:]
        top = seg.pre[seg.peak_at]
        low = min(after, key=lambda s: s.rel_spread) if after else None
        h2.numbers = {"peak_spread": seg.peak, "peak_budget": top.budget, "settle_threshold": seg.settle,
                      "noise_floor": eps}
        if seg.k2 is not None:
            r2 = seg.pre[seg.k2:]
            mean = float(np.mean([s.rel_spread for s in r2]))
            h2.verdict = HOLDS
            h2.numbers |= {"k2": r2[0].budget, "spread_at_k2": r2[0].rel_spread, "mean_spread": mean,
                           "ratio_to_peak": mean / seg.peak}
            h2.reason = (f"spread falls from S*={seg.peak:.3f} at k={top.budget} to {r2[0].rel_spread:.3f} at "
                         f"k={r2[0].budget} and stays ≤ {seg.settle:.3f} up to k={r2[-1].budget} "
                         f"(mean {mean:.3f}, {mean / seg.peak:.0%} of the peak)")
        else:
            h2.verdict = FAILS
            h2.numbers |= {"lowest_spread_after_peak": None if low is None else low.rel_spread,
                           "lowest_at": None if low is None else low.budget}
            where = "before structure dominates" if seg.k3 is not None else "by the end of the sweep"
            h2.reason = (f"after S*={seg.peak:.3f} at k={top.budget} the spread does not settle at or below "
                         f"{seg.settle:.3f} {where}"
                         + (f" (lowest {low.rel_spread:.3f} at k={low.budget})" if low is not None else ""))

    # H3: regime 3 exists.
    lacking = [name for name in ("contiguous", "spacing-aware") if not set(fam[name]) & set(methods)]
    last = seg.positive[-1]
    if lacking:
        h3.reason = f"no {' and no '.join(lacking)} method in the sweep ({_family_hint(fam, lacking)})"
    else:
        h3.numbers = {"largest_budget": last.budget, "best_spacing": last.best_spacing,
                      "best_spacing_score": last.best_spacing_score, "best_contiguous": last.best_contiguous,
                      "best_contiguous_score": last.best_contiguous_score, "gap_at_largest": last.gap,
                      "leaders_at_largest": last.leaders, "noise_floor": eps}
        if seg.k3 is not None:
            r3 = seg.positive[seg.k3:]
            gaps = [s.gap for s in r3 if s.gap is not None]
            h3.verdict = HOLDS
            h3.numbers |= {"k3": r3[0].budget, "mean_gap": float(np.mean(gaps))}
            h3.reason = (f"from k={r3[0].budget} a spacing-aware method leads and contiguous drops trail by more "
                         f"than ε={eps:.3f}; at k={last.budget}: {last.best_spacing} {_fmt(last.best_spacing_score)} "
                         f"vs {last.best_contiguous} {_fmt(last.best_contiguous_score)} (gap {_fmt(last.gap)}, "
                         f"mean gap over regime 3 {np.mean(gaps):.3f})")
        else:
            h3.verdict = FAILS
            h3.reason = (f"no structure-dominated regime up to k={last.budget}: there {last.best_spacing} "
                         f"{_fmt(last.best_spacing_score)} vs {last.best_contiguous} "
                         f"{_fmt(last.best_contiguous_score)} (gap {_fmt(last.gap)}, ε={eps:.3f}), leader(s) "
                         f"{_who(last.leaders)}; structure may dominate beyond the swept budgets")
    return claims


def _family_hint(fam: dict[str, list[str]], lacking: list[str]) -> str:
    return "; ".join(f"{name}: {', '.join(fam[name])}" for name in lacking)


def _who(methods: Iterable[str]) -> str:
    return ", ".join(methods) or "none"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"r={x:.3f}"


@cache
def _range_quantile(m: int, confidence: float) -> float:
    # P(range <= w) = m * integral phi(x) (Phi(x + w) - Phi(x))^(m-1) dx, solved for w by bisection.
    if m < 2:
        return 0.0
    x = np.linspace(-9.0, 9.0, 3601)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    erf = np.vectorize(math.erf)
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))

    def prob(w: float) -> float:
        inner = 0.5 * (1.0 + erf((x + w) / math.sqrt(2.0))) - cdf
        return float(m * np.trapezoid(phi * inner ** (m - 1), x))

    lo, hi = 0.0, 15.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prob(mid) < confidence else (lo, mid)
    return 0.5 * (lo + hi)
