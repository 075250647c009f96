"""The practitioner's answer: the deepest cut, and the method, that keeps at least a given share
of the unpruned score on every named domain, with confidence.

Retention is the regime analysis' r (`series.task_raw` / `series.domain_raw`): per task the score
relative to budget 0 (lower-is-better metrics inverted), per domain the mean over its tasks. Its
lower bound comes from the same paired bootstrap over documents as `bootstrap.py`: each replicate
draws every task's documents with replacement, one draw for every cell of the task and for its
budget-0 baseline, recomputes each cell's value from its per-document values and r from them.
A bound at `confidence` 0.95 is one-sided: the 5th percentile of the replicates (`low`), and
`high` is the 95th, so [low, high] is a central 90 % interval whose ends are each 95 % bounds.

A cell (method, budget > 0) meets a target when its `low` reaches the asked share on every named
domain. The pick is the largest budget with a cell that meets it; at that budget the method with
the widest margin (the smallest low - share over the domains, largest first) wins, and the
runner-up is the next one by the same order. Healed series (domain DOMAIN+healN) are domains of
their own: a target names healed domains alone or unhealed ones alone, because a checkpoint is
either pruned, or pruned and healed.

`retention` computes r and its bounds for every cell of every domain once (the report's frontier
reads it too); `choose` applies a target to it; `pick` does both and refuses, in one line, a
target that no cell meets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from layercut.errors import LayercutError
from layercut.regimes import analyze
from layercut.regimes.bootstrap import DocValues
from layercut.regimes.series import domain_raw, task_raw, validated_table

HEAL_TAG = "+heal"  # the suffix of healed tasks and domains in a sweep's results (sweep.spec.HEAL_TAG)


@dataclass
class Retention:
    """r of every cell on every domain of one metric, with its one-sided bounds."""

    metric: str
    domains: list[str]
    methods: list[str]
    budgets: list[int]
    r: dict[str, dict[str, list[float | None]]]  # domain -> method -> r per budget (None: not swept)
    low: dict[str, dict[str, list[float | None]]]  # the (1 - confidence) quantile of the replicates
    high: dict[str, dict[str, list[float | None]]]  # the confidence quantile
    drops: dict[str, dict[int, list[int]]]  # method -> budget -> the layers it dropped, sorted
    replicates: int  # 0: point estimates only (low = high = r)
    seed: int
    confidence: float  # of each one-sided bound


@dataclass
class Cell:
    """One (method, budget) judged against a target."""

    method: str
    budget: int
    drop: list[int]
    r: dict[str, float]  # per named domain
    low: dict[str, float]
    high: dict[str, float]
    margin: float  # min over the domains of low - share: >= 0 when the cell meets the target
    misses: list[str]  # the domains whose low is below their share


@dataclass
class Pick:
    """The answer to a target: the deepest cut that meets it, or the best reachable."""

    keep: dict[str, float]  # domain -> share of the unpruned score to keep
    metric: str
    confidence: float
    replicates: int
    seed: int
    chosen: Cell | None  # None: no pruned cell meets the target
    runner_up: Cell | None  # the next method at the chosen budget (it may not meet the target)
    next: Cell | None  # the best cell of the next swept budget (it misses the target), if any
    reachable: Cell | None  # without a pick: the best cell of the smallest positive budget
    retention: Retention = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The answer as plain JSON values (the retention table left out: it is the sweep's)."""
        return {k: asdict(v) if isinstance(v, Cell) else v for k, v in vars(self).items() if k != "retention"}


# --------------------------------------------------------------------------- public functions


def parse_keep(text: str) -> dict[str, float]:
    """'math=0.95,general=0.90' -> {'math': 0.95, 'general': 0.9}; every share in (0, 1]."""
    keep: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",")):
        name, eq, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not part or not eq or not name.strip() or math.isnan(share):
            raise LayercutError(f"--keep '{text}': give DOMAIN=SHARE pairs like math=0.95,general=0.90")
        if name.strip() in keep:
            raise LayercutError(f"--keep names '{name.strip()}' twice: name each domain once")
        keep[name.strip()] = share
    _check_keep(keep)
    return keep


def retention(
    results: pd.DataFrame,
    docs: DocValues,
    *,
    metric: str | None = None,
    domains: list[str] | None = None,
    replicates: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    point: bool = False,
) -> Retention:
    """r and its one-sided bounds for every cell on `domains` (default: all) of `metric` (default:
    the analysis' primary metric). `point=True` skips the bootstrap (low = high = r): the only way
    for a sweep without per-document values, and said in `replicates` = 0."""
    if not 0.5 < confidence < 1.0:
        raise LayercutError(f"confidence {confidence} is outside (0.5, 1): pass e.g. 0.95")
    if replicates < 1 and not point:
        raise LayercutError(f"replicates={replicates}: give at least 1 (1000 is the default)")
    df = validated_table(results).reset_index(drop=True)
    if "drop" not in df.columns:
        raise LayercutError("the results table has no 'drop' column: pass the results.parquet of `layercut sweep`")
    metric = metric or analyze(results).primary_metric
    have = list(dict.fromkeys(df["metric"]))
    if metric not in have:
        raise LayercutError(f"no metric '{metric}' in the sweep (have: {', '.join(have)}): pick one of those")
    df = df[df["metric"] == metric].reset_index(drop=True)
    known = list(dict.fromkeys(df["domain"]))
    domains = known if domains is None else list(domains)
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise LayercutError(f"no domain '{unknown[0]}' in the sweep for {metric} (have: {', '.join(known)}): "
                            "name one of those")
    df = df[df["domain"].isin(domains)].reset_index(drop=True)
    methods = list(dict.fromkeys(df["method"]))
    budgets = sorted(set(int(b) for b in df["budget"]))
    tasks = {t: g.index.to_numpy() for t, g in df.groupby("task", sort=False)}

    raws = [task_raw(df.loc[rows], t, metric, methods) for t, rows in tasks.items()]  # the definition of r
    point_r = {}
    for d in domains:
        raw = domain_raw(d, metric, [x for x in raws if x.domain == d])
        point_r[d] = {m: [raw.scores[m][raw.budgets.index(k)] if m in raw.scores and k in raw.budgets else None
                          for k in budgets] for m in methods}
    low, high = point_r, point_r
    if not point:
        rng = np.random.default_rng(seed)
        values = np.tile(df["value"].to_numpy(dtype=float), (replicates, 1))
        for n, rows, vw, w in _draws(df, docs, tasks, metric):  # one draw per task and replicate
            counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)])
            wc = counts @ w.T  # 0 where a draw missed every document a cell evaluated (adaptive): keep it
            values[:, rows] = np.where(wc > 0, (counts @ vw.T) / np.maximum(wc, 1e-300), values[:, rows])
        reps = domain_r(values, df, tasks, domains, methods, budgets)
        low, high = (_nested(np.quantile(reps, q, axis=0), domains, methods, point_r)
                     for q in (1.0 - confidence, confidence))
    drops: dict[str, dict[int, list[int]]] = {}
    for (m, k), g in df.groupby(["method", "budget"], sort=False):
        drops.setdefault(str(m), {})[int(k)] = sorted(_layers(g["drop"].iloc[0]))  # a set, not a ranking
    return Retention(metric, domains, methods, budgets, point_r, low, high, drops, 0 if point else replicates,
                     seed, confidence)


def choose(ret: Retention, keep: dict[str, float]) -> Pick:
    """Apply a target to a `Retention`: the pick, its runner-up and the next budget's cost; or,
    when no pruned cell meets the target, `chosen` None and the best reachable cell."""
    _check_keep(keep)
    unknown = [d for d in keep if d not in ret.domains]
    if unknown:
        raise LayercutError(f"no domain '{unknown[0]}' in the sweep for {ret.metric} "
                            f"(have: {', '.join(ret.domains)}): name one of those")
    by_budget = {k: sorted(filter(None, (_cell(ret, keep, m, k) for m in ret.methods)),
                           key=lambda c: -c.margin)  # stable: method order breaks ties
                 for k in ret.budgets if k > 0}
    meets = [k for k, cells in by_budget.items() if cells and cells[0].margin >= 0]
    chosen = runner_up = nxt = reachable = None
    if meets:
        k = max(meets)
        chosen = by_budget[k][0]
        runner_up = by_budget[k][1] if len(by_budget[k]) > 1 else None
        later = [b for b in by_budget if b > k and by_budget[b]]
        nxt = by_budget[min(later)][0] if later else None
    else:
        reachable = next((cells[0] for k, cells in sorted(by_budget.items()) if cells), None)
    return Pick(dict(keep), ret.metric, ret.confidence, ret.replicates, ret.seed, chosen, runner_up, nxt, reachable,
                ret)


def pick(
    results: pd.DataFrame,
    docs: DocValues,
    keep: dict[str, float],
    **options: Any,
) -> Pick:
    """The deepest cut that keeps `keep` (domain -> share) with confidence; `options` go to
    `retention` (metric, replicates, seed, confidence, point). A target that no pruned cell
    meets is one line naming the best reachable."""
    _check_keep(keep)  # before the bootstrap: a bad target is refused at once
    p = choose(retention(results, docs, domains=list(keep), **options), keep)
    if p.chosen is None:
        raise LayercutError(unmet(p))
    return p


def unmet(p: Pick) -> str:
    """Why a target has no pick, and the best a pruned cell reaches."""
    target = " and ".join(f"{d} ≥ {s:g}" for d, s in p.keep.items())
    sure = f"with {100 * p.confidence:g} % confidence" if p.replicates else "(point estimates)"
    best = p.reachable
    if best is None:
        return f"no pruned cell of the sweep has {p.metric} on {', '.join(p.keep)}: sweep a budget above 0"
    bounds = ", ".join(f"{d} {best.low[d]:.3f}" for d in p.keep)
    return (f"no pruned cell keeps {target} of the unpruned {p.metric} {sure}: the best reachable is k = "
            f"{best.budget} with {best.method} (lower bounds {bounds}); lower the shares or sweep smaller budgets")


# --------------------------------------------------------------------------- helpers


def _check_keep(keep: dict[str, float]) -> None:
    if not keep:
        raise LayercutError("--keep names no domain: give DOMAIN=SHARE pairs like math=0.95,general=0.90")
    for d, share in keep.items():
        if not 0.0 < share <= 1.0:
            raise LayercutError(f"--keep {d}={share:g}: a share is in (0, 1], e.g. 0.90 keeps 90 % of the "
                                "unpruned score")
    if len({HEAL_TAG in d for d in keep}) > 1:
        raise LayercutError("--keep mixes healed (DOMAIN+healN) and unhealed domains: a checkpoint is either "
                            "pruned or pruned and healed, so name one kind")


def _draws(df: pd.DataFrame, docs: DocValues, tasks: dict[str, np.ndarray],
           metric: str) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per task: its document count, its rows, and their value x weight and weight matrices;
    a task whose cells lack per-document values (or disagree on their count) is refused."""
    out = []
    for task, rows in tasks.items():
        got = [docs.get((str(df.at[i, "method"]), int(df.at[i, "budget"]), task, metric)) for i in rows]
        sizes = {len(g[0]) for g in got if g is not None}
        if any(g is None for g in got) or sizes == {0}:
            raise LayercutError(f"the cells of task '{task}' hold no per-document values for {metric} (a sweep "
                                "written before layercut stored them, or a harness's own aggregate), so there is "
                                "no lower bound: re-run the sweep, or pick on point estimates (--point-estimates)")
        if len(sizes) != 1:
            raise LayercutError(f"the cells of task '{task}' hold per-document values of {metric} on different "
                                f"numbers of documents ({', '.join(map(str, sorted(sizes)))}), so they cannot be "
                                "resampled in pairs: re-run the sweep, or pick on point estimates (--point-estimates)")
        w = np.stack([np.asarray(g[1], float) for g in got])
        out.append((sizes.pop(), rows, np.stack([np.asarray(g[0], float) for g in got]) * w, w))
    return out


def domain_r(values: np.ndarray, df: pd.DataFrame, tasks: dict[str, np.ndarray], domains: list[str],
             methods: list[str], budgets: list[int]) -> np.ndarray:
    """r of every (domain, method, budget) for many value columns at once: `values` is (replicates,
    rows of df), the result (replicates, domains, methods, budgets), NaN where a cell was not swept.
    The vectorised form of `series.task_raw` (r per task, ratio or difference as it decides, per
    replicate) and `series.domain_raw` (the mean over the domain's tasks that have the cell); a
    test holds the two equal."""
    reps, cells = values.shape[0], len(methods) * len(budgets)
    cell_of = (df["method"].map({m: i for i, m in enumerate(methods)}).to_numpy() * len(budgets)
               + df["budget"].map({k: j for j, k in enumerate(budgets)}).to_numpy())
    total = np.zeros((reps, len(domains), cells))
    count = np.zeros((len(domains), cells))
    for rows in tasks.values():
        first = rows[0]
        higher, d = bool(df.at[first, "higher_is_better"]), domains.index(str(df.at[first, "domain"]))
        member = np.zeros((len(rows), cells))
        member[np.arange(len(rows)), cell_of[rows]] = 1.0
        swept = member.sum(axis=0) > 0
        v = (values[:, rows] @ member)[:, swept] / member.sum(axis=0)[swept]  # duplicate rows: their mean
        v0 = values[:, rows[df.loc[rows, "budget"].to_numpy() == 0]].mean(axis=1, keepdims=True)
        ratio = (v0 > 0) & (higher | (v.min(axis=1, keepdims=True) > 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(ratio, v / v0 if higher else v0 / v, 1.0 + (1.0 if higher else -1.0) * (v - v0))
        total[:, d, swept] += r
        count[d, swept] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return (total / count).reshape(reps, len(domains), len(methods), len(budgets))


def _nested(q: np.ndarray, domains: list[str], methods: list[str],
            like: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, list[float | None]]]:
    """A (domain, method, budget) array as nested dicts, None where the cell was not swept."""
    return {d: {m: [None if like[d][m][j] is None else float(q[i, h, j]) for j in range(q.shape[2])]
                for h, m in enumerate(methods)} for i, d in enumerate(domains)}


def _cell(ret: Retention, keep: dict[str, float], method: str, budget: int) -> Cell | None:
    j = ret.budgets.index(budget)
    if any(ret.r[d][method][j] is None for d in keep):
        return None
    low = {d: float(ret.low[d][method][j]) for d in keep}
    return Cell(method, budget, ret.drops.get(method, {}).get(budget, []),
                {d: float(ret.r[d][method][j]) for d in keep}, low, {d: float(ret.high[d][method][j]) for d in keep},
                min(low[d] - s for d, s in keep.items()), [d for d, s in keep.items() if low[d] < s])


def _layers(s: Any) -> list[int]:
    text = "" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s)
    return [int(x) for x in text.split(",") if x.strip() and x.strip() != "<NA>"]
