"""The change-point rule: where the regimes of one series start and end, read from the statistics
of its budgets (`series.BudgetStats`), and the three regimes it yields.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layercut.regimes.series import TIE, BudgetStats, RawSeries

CONTIGUOUS = ("block", "last")  # drops that cluster: they collapse once a block grows too long
SPACING_AWARE = ("spacing", "uniform")  # drops kept apart by construction (hybrid only above its threshold)
REGIME_NAMES = {1: "ranking-sensitive", 2: "converging", 3: "structure-dominated"}

# The rule in the words the report prints (this docstring and that of `series` say the same at
# more length).
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
class Segments:
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


def segment(
    stats: list[BudgetStats], eps: float, m: int, fam: dict[str, list[str]], methods: list[str]
) -> Segments:
    pos = [s for s in stats if s.budget > 0]
    seg = Segments(pos, [], None, None, None, None, None, {}, {1: "", 2: "", 3: ""})
    if not pos or m < 2:
        why = "the sweep has no positive budget" if not pos else "only one method: nothing to compare"
        seg.notes = {1: why, 2: why, 3: why}
        return seg

    # Regime 3: walk down from the largest budget while the spacing-aware family stays near the top.
    lacking = [name for name in ("contiguous", "spacing-aware") if not set(fam[name]) & set(methods)]
    if lacking:
        seg.notes[3] = f"no {' and no '.join(lacking)} method in the sweep ({family_hint(fam, lacking)})"
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


def regime_of(index: int, seg: Segments, stats: list[BudgetStats], raw: RawSeries) -> Regime:
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


def family_hint(fam: dict[str, list[str]], lacking: list[str]) -> str:
    return "; ".join(f"{name}: {', '.join(fam[name])}" for name in lacking)
