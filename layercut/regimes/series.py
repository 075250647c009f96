"""From the sweep's tidy results table to series: the table validated, every series read through
the normalised score r, the ingredients of its noise floor (q_m and sigma; `analyze` takes eps
from them), and the statistics of each budget that the change-point rule (`changepoint`) reads.

Series. Every (task, metric) pair is a series in the metric's own units, and every (domain,
metric) pair is one too: the mean over the domain's tasks of a normalised score r that is 1 at
budget 0 and where higher is always better,
    higher is better: r = v / v0          lower is better (nll): r = v0 / v
(v0 = the budget-0 value; where v0 <= 0, or some v <= 0 for lower-is-better, r = 1 + (v - v0)
or 1 - (v - v0) instead, in metric units). The change-point rule and the claims read every
series through r, so one rule fits accuracy and nll alike, and S(k), the spread of r across
methods at budget k (max - min), is a fraction of the unpruned score.

Noise floor. eps = max(rel_floor, q_m * sigma): the spread that m equally good methods would
exceed only 5 % of the time by sampling alone, and never below rel_floor (2 % of the unpruned
score). q_m is the 95 % quantile of the range of m independent standard normals (the studentized
range with infinite degrees of freedom: 2.77 for 2 methods, 3.63 for 4, 4.17 for 7). sigma is
the standard error of one method's r: sqrt(p (1 - p) / n) / v0, for metrics in [0, 1] where
higher is better (per-example scores in [0, 1] have variance at most p (1 - p), so this bounds
accuracy, exact match, ANLS, ...), with p the value of the series nearest 0.5 and n the most
examples of its rows (all rows of a full sweep; in an adaptive sweep the close calls, which run to
the end, while a cell that stopped early was decided by its own test); a domain's sigma is sqrt(sum sigma_t^2) / T over its T tasks. Other metrics
(nll) have no sigma and use rel_floor alone. Methods scored on the same examples differ less than
this independent-samples bound, so eps errs towards calling a difference noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from layercut.errors import LayercutError

REQUIRED = ("method", "budget", "task", "domain", "metric", "value", "higher_is_better")
TIE = 1e-9  # scores closer than this (in units of r) are tied


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


# --------------------------------------------------------------------------- public functions


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
class RawSeries:
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


def validated_table(results: pd.DataFrame) -> pd.DataFrame:
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


def task_raw(g: pd.DataFrame, task: str, metric: str, methods: list[str]) -> RawSeries:
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
        # the most documents behind one value: a full sweep's every cell; an adaptive sweep's close
        # calls, which ran to the end (the floor is what equally good methods show by chance)
        n = int(ns.max()) if len(ns) else None
    sigma = None
    if higher and n and 0.0 <= min(seen) and max(seen) <= 1.0:
        p = min(seen, key=lambda v: abs(v - 0.5))
        sigma = math.sqrt(p * (1.0 - p) / n) / (v0 if ratio else 1.0)
    domain = str(g["domain"].iloc[0])
    return RawSeries("task", task, metric, domain, [task], higher, here, budgets, v0, n, normalisation, values, scores,
                sigma)


def _get(cell: pd.Series, key: tuple[str, int]) -> float | None:
    return float(cell[key]) if key in cell.index else None


def domain_raw(domain: str, metric: str, tasks: list[RawSeries]) -> RawSeries:
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
    return RawSeries("domain", domain, metric, domain, [t.name for t in tasks], True, methods, budgets, 1.0, None,
                f"mean over tasks of r ({', '.join(norms)})", scores, {m: list(v) for m, v in scores.items()}, sigma)


def stats_per_budget(raw: RawSeries, fam: dict[str, list[str]], eps: float) -> list[BudgetStats]:
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
