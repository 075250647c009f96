"""The claims of the paper tested on one series, from where the change-point rule put its
boundaries (`changepoint._Segments`).

Claims, each "holds", "does not hold" or "not testable", with the numbers behind it:
  H1 at low budgets the choice of method matters: S* > eps on the budgets before k3.
  H2 methods converge at moderate budgets: regime 1 is followed by regime 2 (the spread falls to
     at most max(S*/2, eps) and stays there). Not testable when nothing differed to begin with,
     or when the sweep ends at the spread's peak.
  H3 at high budgets spacing-aware methods lead and contiguous drops collapse: regime 3 exists.
     Not testable without at least one method of each family.
  H4 the domain-aware rankings are the most stable in the ranking-sensitive regime (regime 1):
     one of them is at least as good as every baseline on each measure of `STABILITY`.
  H5 at larger budgets (regimes 2 and 3) the domain-aware rankings match or exceed the
     structure-aware baselines: the best one's mean r >= the best baseline's mean r - eps.
  H4 and H5 are not testable where the series has no domain-aware method (`domain_aware`), no
  baseline, or none of the budgets they are judged on.

Which methods are domain-aware depends on the series' domain: `math` and `mixed` on math,
the domain's own ranking (`general` on general), `nonmath` and `mixed` on any other domain.
`mixed-rank` and `hybrid` are neither domain-aware nor baselines here: they are variants of ours
the paper does not name in these claims. Measure (a) needs several tasks, so it enters only on
a domain series with two or more tasks; H4 on a task series (or a one-task domain) rests on (b)
and (c), and its reason says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layercut.regimes.changepoint import Segments, family_hint
from layercut.regimes.series import TIE, BudgetStats, RawSeries
from layercut.selection import MATH, NONMATH

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"
BASELINES = ("bi", "block", "last", "uniform", "spacing", "random", "iterative")  # H4's rivals
STRUCTURE_AWARE = ("block", "uniform", "spacing")  # H5's rivals
# H4's measures over the ranking-sensitive budgets, each lower-is-better, in the words the report prints
STABILITY = {
    "task spread": ("(a) task spread: the mean over the ranking-sensitive budgets of the range (max − min) of a "
                    "method's retention r across the tasks of the domain."),
    "worst drop": ("(b) worst drop: the largest fall of a method's r from one swept budget to the next, over the "
                   "steps into each ranking-sensitive budget."),
    "mean rank": ("(c) mean rank: a method's rank by r among all methods (1 = best, ties share the mean rank), "
                  "averaged over the ranking-sensitive budgets."),
}
DEFINITIONS = (
    ("H4 holds when one domain-aware ranking (math and mixed on math; the domain's own, nonmath and mixed on "
     "others) is at least as good as every baseline present (bi, block, last, uniform, spacing, random, "
     "iterative) on each of (a), (b) and (c) over the ranking-sensitive budgets."),
    *STABILITY.values(),
    ("H5 holds when, over the converging and structure-dominated budgets, the best domain-aware ranking's mean r "
     "is at least the best structure-aware baseline's (block, uniform, spacing) minus the noise floor ε."),
)


@dataclass
class Claim:
    """A paper claim tested on one series."""

    id: str  # "H1", "H2", "H3"
    statement: str
    verdict: str  # HOLDS, FAILS or UNTESTABLE
    reason: str  # one line with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)


def judge_claims(
    seg: Segments, stats: list[BudgetStats], eps: float, m: int, fam: dict[str, list[str]], methods: list[str]
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
        h3.reason = f"no {' and no '.join(lacking)} method in the sweep ({family_hint(fam, lacking)})"
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


def domain_aware(domain: str) -> tuple[str, ...]:
    """The paper's own rankings for a series of `domain`."""
    return (MATH, "mixed") if domain == MATH else (domain, NONMATH, "mixed")


def judge_ours(seg: Segments, raw: RawSeries, tasks: list[RawSeries], eps: float) -> list[Claim]:
    """H4 and H5 on one series; `tasks` are the task series a domain series averages (measure (a))."""
    h4 = Claim("H4", "in the ranking-sensitive regime the domain-aware rankings are the most stable", UNTESTABLE, "")
    h5 = Claim("H5", "at larger budgets the domain-aware rankings match or exceed the structure-aware baselines",
               UNTESTABLE, "")
    regime = {k: seg.assignment.get(k) for k in raw.budgets}
    r1 = [k for k in raw.budgets if regime[k] == 1]
    late = [k for k in raw.budgets if regime[k] in (2, 3)]
    aware = domain_aware(raw.domain)
    _judge_h4(h4, raw, tasks, r1, aware, seg.notes[1] or "no ranking-sensitive budget")
    _judge_h5(h5, raw, late, aware, eps)
    return [h4, h5]


def _judge_h4(h4: Claim, raw: RawSeries, tasks: list[RawSeries], r1: list[int], aware: tuple[str, ...],
              why_absent: str) -> None:
    if not r1:
        h4.reason = f"no ranking-sensitive regime: {why_absent}"
        return
    cols = [raw.budgets.index(k) for k in r1]
    # a regime-1 budget is positive, so it has a previous one (budget 0 at least)
    here = [m for m in raw.methods if all(raw.scores[m][j] is not None for i in cols for j in (i - 1, i))]
    mine, rivals = [m for m in aware if m in here], [m for m in BASELINES if m in here]
    if not mine or not rivals:
        h4.reason = (f"no domain-aware method ({', '.join(aware)}) in the series" if not mine else
                     f"no baseline ({', '.join(BASELINES)}) in the series")
        return
    used = sorted({j for i in cols for j in (i - 1, i)})
    r = {m: {j: round(raw.scores[m][j], 12) for j in used} for m in here}  # rounding as in stats_per_budget
    crit: dict[str, dict[str, float]] = {}
    if len(tasks) >= 2:
        spread = {}
        for m in here:
            per = [[t.scores[m][t.budgets.index(k)] for t in tasks if m in t.scores and k in t.budgets] for k in r1]
            if all(len(v) == len(tasks) and None not in v for v in per):
                spread[m] = float(np.mean([max(v) - min(v) for v in per]))
        if all(m in spread for m in mine + rivals):
            crit["task spread"] = spread
    crit["worst drop"] = {m: max(r[m][i - 1] - r[m][i] for i in cols) for m in here}
    ranks: dict[str, list[float]] = {m: [] for m in here}
    for i in cols:
        for m in here:
            better = sum(r[o][i] > r[m][i] + TIE for o in here)
            tied = sum(abs(r[o][i] - r[m][i]) <= TIE for o in here)
            ranks[m].append(better + (tied + 1) / 2.0)
    crit["mean rank"] = {m: float(np.mean(v)) for m, v in ranks.items()}
    lost = {a: [(c, b) for c, vals in crit.items() for b in rivals if vals[b] < vals[a] - TIE] for a in mine}
    best = min(mine, key=lambda a: len({c for c, _ in lost[a]}))
    h4.numbers = {"budgets": r1, "domain_aware": mine, "baselines": rivals, "best_domain_aware": best,
                  "measures": crit}
    span = f"k={r1[0]}–{r1[-1]}" if len(r1) > 1 else f"k={r1[0]}"
    if "task spread" not in crit:
        span += f" ((a) not measured: it needs two or more tasks, the series has {len(raw.tasks)})"
    if not lost[best]:
        h4.verdict = HOLDS
        h4.reason = f"over {span} {best} is at least as good as every baseline on " + "; ".join(
            f"{c} ({best} {v[best]:.3f}, best baseline {min(rivals, key=v.get)} {min(v[b] for b in rivals):.3f})"
            for c, v in crit.items())
    else:
        h4.verdict = FAILS
        beaten = {c: min((b for cc, b in lost[best] if cc == c), key=crit[c].get) for c, _ in lost[best]}
        h4.reason = f"over {span} every domain-aware method loses to a baseline; {best}: " + "; ".join(
            f"{c} {crit[c][best]:.3f} vs {b} {crit[c][b]:.3f}" for c, b in beaten.items())


def _judge_h5(h5: Claim, raw: RawSeries, late: list[int], aware: tuple[str, ...], eps: float) -> None:
    if not late:
        h5.reason = "no converging or structure-dominated budget: regimes 2 and 3 are both absent"
        return
    cols = [raw.budgets.index(k) for k in late]
    mean = {m: float(np.mean([raw.scores[m][i] for i in cols])) for m in raw.methods
            if all(raw.scores[m][i] is not None for i in cols)}
    mine, rivals = [m for m in aware if m in mean], [m for m in STRUCTURE_AWARE if m in mean]
    if not mine or not rivals:
        h5.reason = (f"no domain-aware method ({', '.join(aware)}) in the series" if not mine else
                     f"no structure-aware baseline ({', '.join(STRUCTURE_AWARE)}) in the series")
        return
    a, b = max(mine, key=mean.get), max(rivals, key=mean.get)
    gap = mean[a] - mean[b]
    h5.numbers = {"budgets": late, "mean_r": {m: mean[m] for m in mine + rivals}, "best_domain_aware": a,
                  "best_structure_aware": b, "gap": gap, "noise_floor": eps}
    span = f"k={late[0]}–{late[-1]}" if len(late) > 1 else f"k={late[0]}"
    h5.verdict = HOLDS if gap >= -eps - TIE else FAILS
    h5.reason = (f"over {span} {a} keeps mean r={mean[a]:.3f} vs {b} {mean[b]:.3f}: {gap:+.3f}, "
                 + ("at or above" if h5.verdict == HOLDS else "below") + f" −ε (ε={eps:.3f})")


def _who(methods: Iterable[str]) -> str:
    return ", ".join(methods) or "none"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"r={x:.3f}"
