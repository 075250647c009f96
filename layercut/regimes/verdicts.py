"""The claims of the paper tested on one series, from where the change-point rule put its
boundaries (`changepoint._Segments`).

Claims, each "holds", "does not hold" or "not testable", with the numbers behind it:
  H1 at low budgets the choice of method matters: S* > eps on the budgets before k3.
  H2 methods converge at moderate budgets: regime 1 is followed by regime 2 (the spread falls to
     at most max(S*/2, eps) and stays there). Not testable when nothing differed to begin with,
     or when the sweep ends at the spread's peak.
  H3 at high budgets spacing-aware methods lead and contiguous drops collapse: regime 3 exists.
     Not testable without at least one method of each family.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layercut.regimes.changepoint import Segments, family_hint
from layercut.regimes.series import BudgetStats

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable"


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


def _who(methods: Iterable[str]) -> str:
    return ", ".join(methods) or "none"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"r={x:.3f}"
