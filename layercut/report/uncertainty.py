"""The report's account of sampling noise: the paired bootstrap's results as document blocks.

`regimes.bootstrap` resamples the evaluation documents; here its `Uncertainty` becomes a
paragraph saying how, tables of each series' boundaries and claim verdicts over the resamples,
and per task series and budget which methods the leader beats beyond the interval. A sweep whose
cells carry no per-document values (written before they were stored, or all its metrics
aggregated by a harness its own way) gets one paragraph saying why there are no intervals.
"""

from __future__ import annotations

from layercut.regimes import Analysis
from layercut.regimes.bootstrap import NONE, Uncertainty

NO_DOCS = ("the sweep's cells hold no per-document values (sweeps written before layercut stored them, "
           "or metrics a harness aggregates its own way): the verdicts and boundaries below carry no "
           "stated uncertainty; re-run the sweep to get them")


def method_blocks(u: Uncertainty | None, why: str = NO_DOCS) -> list[tuple]:
    """How the intervals were made, or why there are none."""
    if u is None:
        return [("p", f"**No intervals:** {why}.")]
    held = f" Held at their values (no per-document values): {', '.join(u.fixed)}." if u.fixed else ""
    return [("p", (f"**Uncertainty.** A paired bootstrap over the evaluation documents: {u.replicates} resamples "
                   f"(seed {u.seed}), each drawing every task's documents with replacement, the same draw for "
                   "every method and budget of the task; every cell recomputed from its per-document values and "
                   f"the whole analysis rerun. Intervals are the central {u.confidence:.0%} of the resamples; a "
                   f"verdict's share is the fraction of resamples in which it holds.{held}"))]


def verdict_share(u: Uncertainty | None, series: str, claim: str) -> str:
    """' (holds in 62 % of 1000 resamples)', or '' without a bootstrap."""
    if u is None or series not in u.verdicts:
        return ""
    return f" (holds in {u.verdicts[series][claim]:.0%} of {u.replicates} resamples)"


def boundary_blocks(a: Analysis, u: Uncertainty | None) -> list[tuple]:
    if u is None:
        return []
    rows = [[f"`{s.key}`", _distribution(u.boundaries.get(s.key, {}).get("k2", {})),
             _distribution(u.boundaries.get(s.key, {}).get("k3", {}))] for s in a.series]
    return [("p", "Where the boundaries fall over the resamples (share of resamples; none = the regime is absent):"),
            ("table", ["series", "k2 over resamples", "k3 over resamples"], rows)]


def claim_blocks(a: Analysis, u: Uncertainty | None) -> list[tuple]:
    if u is None:
        return []
    rows = [[f"`{s.key}`"] + [f"{u.verdicts.get(s.key, {}).get(h, 0.0):.0%}" for h in ("H1", "H2", "H3")]
            for s in a.series]
    return [("p", f"Share of the {u.replicates} resamples in which each claim holds:"),
            ("table", ["series", "H1 holds", "H2 holds", "H3 holds"], rows)]


def difference_blocks(u: Uncertainty | None) -> list[tuple]:
    """Per task series and budget: the leader, the methods it beats beyond the interval, the rest."""
    if u is None or not u.differences:
        return []
    blocks: list[tuple] = [
        ("h", 2, "Which differences are significant"),
        ("p", (f"At each budget, the leader (best value) against every other method: the central {u.confidence:.0%} "
               "of the paired resampled differences (leader − method, oriented so that positive means the leader "
               "is better). Beyond noise: the whole interval is above 0."))]
    for series, by_budget in u.differences.items():
        rows = []
        for budget, cell in sorted(by_budget.items(), key=lambda kv: int(kv[0])):
            beyond = [m for m, (low, _) in cell["methods"].items() if low > 0]
            within = [m for m in cell["methods"] if m not in beyond]
            worst = max(cell["methods"].items(), key=lambda kv: kv[1][0], default=None)
            rows.append([budget, cell["leader"], ", ".join(beyond) or "none", ", ".join(within) or "none",
                         "" if worst is None else f"{worst[0]}: [{worst[1][0]:+.3g}, {worst[1][1]:+.3g}]"])
        blocks.append(("p", f"**{series}**"))
        blocks.append(("table", ["k", "leader", "beyond noise", "within noise", "largest difference (interval)"], rows))
    return blocks


def _distribution(shares: dict[str, float]) -> str:
    if not shares:
        return ""
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0] == NONE))
    return ", ".join(f"{k} ({v:.0%})" for k, v in ranked[:4]) + (", …" if len(ranked) > 4 else "")
