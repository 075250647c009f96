"""Regime analysis on synthetic sweeps whose regimes are built in, and Kendall tau on known values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from layercut.errors import LayercutError
from layercut.regimes import (
    FAILS,
    HOLDS,
    UNTESTABLE,
    Analysis,
    analyze,
    compare_hybrid,
    hybrid_threshold,
    kendall_tau_b,
    range_quantile,
)

BUDGETS = [0, 2, 4, 6, 8, 10, 12, 14, 16]
# Accuracy per method at each budget of BUDGETS, built to have three regimes (unpruned 0.60):
#   k = 2, 4     ranking-sensitive: math far ahead, spread .23 and .27 (r: .383, .450 = the peak S*)
#   k = 6 .. 10  converging: every method within .04 (r spread <= .067 <= S*/2)
#   k = 12 .. 16 structure-dominated: block and last collapse towards 0, spacing / uniform lead
# With n = 2000 and 7 methods the noise floor is eps = 4.17 * sqrt(.25 / 2000) / .6 = .078 (sampling).
# At k = 8 and 10 spacing ties the top but block is only .01 behind (r: .017 < eps, also < the 2 %
# floor of nll, which has no sampling term): regime 3 must not start there.
ACC = {
    "math":    [.60, .58, .55, .36, .30, .25, .20, .15, .10],
    "nonmath": [.60, .45, .38, .34, .29, .24, .18, .12, .09],
    "bi":      [.60, .50, .45, .35, .30, .25, .19, .14, .10],
    "block":   [.60, .40, .30, .33, .29, .24, .05, .02, .01],
    "last":    [.60, .35, .28, .32, .28, .23, .03, .01, .00],
    "uniform": [.60, .42, .36, .34, .29, .25, .22, .18, .15],
    "spacing": [.60, .52, .47, .35, .30, .25, .24, .19, .14],
}
N = 2000


def frame(
    table: dict[str, list[float]],
    budgets: list[int] = BUDGETS,
    task: str = "gsm8k",
    domain: str = "math",
    metric: str = "accuracy",
    higher: bool = True,
    n: int | None = N,
) -> pd.DataFrame:
    """The sweep's tidy results table for one (task, metric)."""
    rows = []
    for method, values in table.items():
        for k, v in zip(budgets, values):
            rows.append({
                "method": method, "budget": k, "task": task, "domain": domain, "metric": metric,
                "value": float(v), "higher_is_better": higher, "drop": ",".join(str(i + 1) for i in range(k)),
                "n": n if n is not None else 0, "seconds": 0.1, "shared": k == 0,
            })
    return pd.DataFrame(rows)


def sweep_frame() -> pd.DataFrame:
    """Three tasks in two domains, accuracy and nll: what the report test writes to disk."""
    as_nll = {m: [2.0 * 0.60 / max(v, 0.005) / 10 for v in vs] for m, vs in ACC.items()}  # r = v0/v = acc/.6
    math2 = {m: [min(1.0, v * 1.2) for v in vs] for m, vs in ACC.items()}
    general = {m: [.8 - .01 * k for k in BUDGETS] for m in ACC}  # no method effect at all
    return pd.concat([
        frame(ACC, task="gsm8k", domain="math"),
        frame(math2, task="mathvqa", domain="math"),
        frame(general, task="easyvqa", domain="general"),
        frame(as_nll, task="gsm8k", domain="math", metric="nll", higher=False, n=None),
    ], ignore_index=True)


def cut(table: dict[str, list[float]], upto: int) -> tuple[dict[str, list[float]], list[int]]:
    keep = [i for i, k in enumerate(BUDGETS) if k <= upto]
    return {m: [v[i] for i in keep] for m, v in table.items()}, [BUDGETS[i] for i in keep]


# ---- the constructed boundaries ---------------------------------------------------------------


def test_three_regimes_found_at_the_constructed_budgets():
    s = analyze(frame(ACC)).get("task", "gsm8k", "accuracy")
    assert [r.present for r in s.regimes] == [True, True, True]
    assert s.regime(1).budgets == [2, 4]
    assert s.regime(2).budgets == [6, 8, 10]
    assert s.regime(3).budgets == [12, 14, 16]
    assert (s.k2, s.k3) == (6, 12)
    assert s.noise["source"] == "sampling"
    assert s.noise_floor == pytest.approx(range_quantile(7) * math.sqrt(0.25 / N) / 0.6)
    assert [b.regime for b in s.budget_stats] == [None, 1, 1, 2, 2, 2, 3, 3, 3]
    assert s.regime(1).leaders == ["math"]
    assert s.regime(3).leaders == ["spacing"]  # mean r over 12..16: spacing .317 > uniform .306
    assert [c.id for c in s.claims] == ["H1", "H2", "H3", "H4", "H5"]
    assert [c.verdict for c in s.claims] == [HOLDS] * 5
    h1 = s.claim("H1").numbers
    assert h1["peak_budget"] == 4 and h1["peak_spread"] == pytest.approx(0.27 / 0.6)
    assert s.claim("H3").numbers["k3"] == 12


def test_per_budget_spread_std_and_leaders():
    s = analyze(frame(ACC)).get("task", "gsm8k", "accuracy")
    b4 = s.budget_stats[BUDGETS.index(4)]
    values = [ACC[m][2] for m in ACC]
    assert b4.spread == pytest.approx(max(values) - min(values))
    assert b4.std == pytest.approx(np.std(values))
    assert b4.rel_spread == pytest.approx(b4.spread / 0.6)
    assert b4.leaders == ["math"] and b4.next_budget == 6
    assert b4.best_contiguous == "block" and b4.best_spacing == "spacing"
    b0 = s.budget_stats[0]
    assert b0.spread == 0.0 and b0.tau_next is None and sorted(b0.leaders) == sorted(ACC)  # all tied
    b10 = s.budget_stats[BUDGETS.index(10)]
    assert sorted(b10.leaders) == ["bi", "math", "spacing", "uniform"]  # four-way tie at .25
    assert s.budget_stats[-1].tau_next is None  # no next budget


def test_lower_is_better_metric_gives_the_same_regimes():
    # nll with v0 / v equal to the accuracy's r: the same series seen the other way up.
    nll = {m: [1.0 / max(v / 0.6, 1e-3) for v in vs] for m, vs in ACC.items()}
    s = analyze(frame(nll, metric="nll", higher=False, n=None)).get("task", "gsm8k", "nll")
    assert s.noise["source"] == "rel_floor" and s.noise_floor == 0.02
    assert [r.budgets for r in s.regimes] == [[2, 4], [6, 8, 10], [12, 14, 16]]
    assert s.regime(1).leaders == ["math"]
    assert s.budget_stats[BUDGETS.index(4)].leaders == ["math"]  # lowest nll leads
    # H5: math's mean r over k = 6..16 is .031 below spacing's: inside ε = .078 of the accuracy
    # (sampling noise of 2000 examples), beyond the 2 % floor of nll
    assert [c.verdict for c in s.claims] == [HOLDS, HOLDS, HOLDS, HOLDS, FAILS]


def test_domain_series_averages_relative_scores():
    a = analyze(sweep_frame())
    d = a.get("domain", "math", "accuracy")
    assert d.tasks == ["gsm8k", "mathvqa"]
    g = a.get("task", "gsm8k", "accuracy")
    v = a.get("task", "mathvqa", "accuracy")
    for m in ACC:
        for i in range(len(BUDGETS)):
            assert d.scores[m][i] == pytest.approx((g.scores[m][i] + v.scores[m][i]) / 2)
    assert (d.k2, d.k3) == (6, 12)
    sigma = math.sqrt(g.noise["sigma"] ** 2 + v.noise["sigma"] ** 2) / 2
    assert d.noise_floor == pytest.approx(max(0.02, range_quantile(7) * sigma))
    assert a.primary_metric == "accuracy"
    assert [s.key for s in a.domain_series()] == ["domain:math/accuracy", "domain:general/accuracy"]


# ---- absent regimes ---------------------------------------------------------------------------


def test_sweep_that_stops_before_structure_dominates():
    table, budgets = cut(ACC, 10)
    s = analyze(frame(table, budgets)).get("task", "gsm8k", "accuracy")
    assert s.regime(1).budgets == [2, 4] and s.regime(2).budgets == [6, 8, 10]
    assert not s.regime(3).present and s.k3 is None and s.regime(3).budgets == []
    assert "beyond the swept budgets" in s.regime(3).note
    assert s.claim("H3").verdict == FAILS and "k=10" in s.claim("H3").reason
    assert hybrid_threshold(analyze(frame(table, budgets))) is None


def test_sweep_that_ends_at_the_peak_cannot_test_convergence():
    table, budgets = cut(ACC, 4)
    s = analyze(frame(table, budgets)).get("task", "gsm8k", "accuracy")
    assert s.regime(1).budgets == [2, 4]
    assert not s.regime(2).present and not s.regime(3).present
    assert [c.verdict for c in s.claims[:3]] == [HOLDS, UNTESTABLE, FAILS]
    assert "sweep larger budgets" in s.claim("H2").reason


def test_no_method_effect_means_no_ranking_regime():
    same = {m: [.6 - .02 * k for k in BUDGETS] for m in ACC}
    same["block"] = [v + 0.001 for v in same["block"]]  # below every noise floor
    s = analyze(frame(same)).get("task", "gsm8k", "accuracy")
    assert not s.regime(1).present and "never differ beyond noise" in s.regime(1).note
    assert s.regime(2).budgets == BUDGETS[1:]
    assert not s.regime(3).present
    assert [c.verdict for c in s.claims[:3]] == [FAILS, UNTESTABLE, FAILS]
    assert s.claim("H4").verdict == UNTESTABLE and "no ranking-sensitive regime" in s.claim("H4").reason


def test_spread_that_never_settles_leaves_no_converging_regime():
    table = {m: list(v) for m, v in ACC.items()}
    table["last"] = [.60, .35, .28, .10, .08, .07, .03, .01, .00]  # last collapses early ...
    table["block"] = [.60, .40, .30, .12, .10, .08, .05, .02, .01]  # ... and so does block
    table["uniform"] = [.60, .42, .36, .30, .27, .24, .22, .18, .15]
    table["spacing"] = [.60, .52, .47, .34, .30, .26, .24, .19, .14]  # spacing leads from k = 8
    s = analyze(frame(table)).get("task", "gsm8k", "accuracy")
    assert s.regime(3).start == 8  # at 6 math (.36) leads
    assert not s.regime(2).present  # spread at 6 is .26/.6 = .43 > S*/2
    assert s.regime(1).budgets == [2, 4, 6]
    assert s.claim("H2").verdict == FAILS and "before structure dominates" in s.claim("H2").reason


def test_structure_from_the_first_budget():
    table = {"uniform": [.6, .5, .45], "block": [.6, .2, .1], "math": [.6, .45, .40]}
    s = analyze(frame(table, [0, 2, 4])).get("task", "gsm8k", "accuracy")
    assert s.regime(3).budgets == [2, 4]
    assert not s.regime(1).present and not s.regime(2).present
    assert s.claim("H1").verdict == UNTESTABLE and s.claim("H3").verdict == HOLDS


def test_a_later_contradiction_pushes_regime_3_back():
    table = {m: list(v) for m, v in ACC.items()}
    table["math"][-1] = 0.40  # at k = 16 math is far ahead of every spacing-aware method
    s = analyze(frame(table)).get("task", "gsm8k", "accuracy")
    assert not s.regime(3).present
    assert s.claim("H3").verdict == FAILS


def test_without_one_family_structure_is_not_testable():
    table = {m: v for m, v in ACC.items() if m not in ("block", "last")}
    s = analyze(frame(table)).get("task", "gsm8k", "accuracy")
    assert not s.regime(3).present and "no contiguous method" in s.regime(3).note
    assert s.claim("H3").verdict == UNTESTABLE


def test_single_method_is_never_segmented():
    s = analyze(frame({"math": ACC["math"]})).get("task", "gsm8k", "accuracy")
    assert not any(r.present for r in s.regimes)
    assert all(c.verdict == UNTESTABLE for c in s.claims)
    assert all(b.tau_next is None and b.spread == 0.0 for b in s.budget_stats)


def test_ties_everywhere_give_undefined_tau_and_shared_leadership():
    table = {"a": [.5, .4, .3], "b": [.5, .4, .3]}
    s = analyze(frame(table, [0, 1, 2])).get("task", "gsm8k", "accuracy")
    assert all(b.tau_next is None for b in s.budget_stats)
    assert all(b.leaders == ["a", "b"] for b in s.budget_stats)
    assert s.regime(2).leaders == ["a", "b"]


def test_baseline_zero_falls_back_to_differences_and_stays_finite():
    table = {"a": [0.0, 0.0, 0.1], "b": [0.0, 0.0, 0.0]}
    s = analyze(frame(table, [0, 1, 2], n=10)).get("task", "gsm8k", "accuracy")
    assert s.normalisation == "1 + (v - v0)"
    assert s.scores["a"] == [1.0, 1.0, 1.1]
    json.dumps(analyze(frame(table, [0, 1, 2], n=10)).to_dict(), allow_nan=False)


def test_outputs_are_nan_free_and_round_trip(tmp_path):
    a = analyze(sweep_frame())
    json.dumps(a.to_dict(), allow_nan=False)  # raises on NaN or inf anywhere
    a.save(tmp_path / "analysis.json")
    b = Analysis.load(tmp_path / "analysis.json")
    assert b.to_dict() == a.to_dict()
    assert b.get("domain", "math").k3 == 12


def test_missing_cells_and_nan_values_are_skipped():
    df = frame(ACC)
    df.loc[(df.method == "last") & (df.budget == 16), "value"] = np.nan
    df = df[~((df.method == "block") & (df.budget == 14))]
    s = analyze(df).get("task", "gsm8k", "accuracy")
    assert s.values["last"][-1] is None and s.values["block"][BUDGETS.index(14)] is None
    assert s.budget_stats[-1].methods == 6 and s.budget_stats[BUDGETS.index(14)].best_contiguous == "last"
    assert s.k3 == 12
    json.dumps(analyze(df).to_dict(), allow_nan=False)


def test_bad_tables_name_the_fix():
    with pytest.raises(LayercutError, match="lacks column"):
        analyze(frame(ACC).drop(columns=["domain"]))
    with pytest.raises(LayercutError, match="budget 0"):
        analyze(frame(ACC)[lambda d: d.budget > 0])


# ---- hybrid ---------------------------------------------------------------------------------------


def test_hybrid_threshold_is_the_earliest_structure_start_over_domains():
    a = analyze(sweep_frame())
    assert hybrid_threshold(a) == 12  # math reaches regime 3 at 12; general never does
    assert hybrid_threshold(a, domain="general") is None
    assert hybrid_threshold(a, metric="nll") == 12
    with pytest.raises(LayercutError, match="no domain 'code'"):
        hybrid_threshold(a, domain="code")


def test_hybrid_against_its_parents():
    table = dict(ACC)
    table["hybrid"] = ACC["math"][:6] + ACC["spacing"][6:]  # ranks below 12, spaces from 12
    a = analyze(frame(table))
    s = a.get("task", "gsm8k")
    assert (s.k2, s.k3) == (6, 12)  # hybrid's ranking half (= math, leading at k <= 4) starts no regime 3
    assert s.regime(3).leaders == ["spacing", "hybrid"]
    rows = [r for r in compare_hybrid(a) if r.series == s.key]
    assert [r.budget for r in rows] == BUDGETS
    r4, r14 = rows[2], rows[7]
    assert r4.best_parent == "math" and r4.delta == pytest.approx(0.0) and r4.within_noise
    assert r14.best_parent == "spacing" and r14.hybrid == ACC["spacing"][7]
    assert r14.parents == {"math": ACC["math"][7], "spacing": ACC["spacing"][7]}
    assert compare_hybrid(analyze(frame(ACC))) == []


def test_hybrid_delta_is_oriented_for_lower_is_better():
    table = {"math": [2.0, 3.0], "spacing": [2.0, 4.0], "hybrid": [2.0, 2.5], "block": [2.0, 5.0]}
    rows = compare_hybrid(analyze(frame(table, [0, 1], metric="nll", higher=False, n=None)))
    assert rows[1].best_parent == "math" and rows[1].delta == pytest.approx(0.5)  # 0.5 nats better


# ---- Kendall tau-b and the noise quantile ---------------------------------------------------------


@pytest.mark.parametrize(
    "x, y, tau",
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3], [1, 3, 2], 1 / 3),
        ([1, 2, 3, 4, 5], [3, 1, 2, 5, 4], 0.4),  # 7 concordant, 3 discordant of 10
        ([1, 2, 2, 3], [1, 2, 3, 3], 0.8),  # 4 - 0 over sqrt(5 * 5)
        ([1, 1, 2], [1, 2, 2], 0.5),  # 1 - 0 over sqrt(2 * 2)
        ([1, 1, 1], [1, 2, 3], None),  # x all tied
        ([1], [2], None),
        ([], [], None),
    ],
)
def test_kendall_tau_b_known_values(x, y, tau):
    got = kendall_tau_b(x, y)
    assert got is None if tau is None else got == pytest.approx(tau)


def test_kendall_tau_b_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 9))
        x, y = rng.integers(0, 4, n).tolist(), rng.integers(0, 4, n).tolist()
        ours, theirs = kendall_tau_b(x, y), stats.kendalltau(x, y).statistic
        assert (ours is None) == bool(np.isnan(theirs))
        if ours is not None:
            assert ours == pytest.approx(theirs)


def test_range_quantile_matches_the_studentized_range_table():
    # q(0.95; m, inf) from the studentized range tables.
    for m, q in [(2, 2.772), (3, 3.314), (4, 3.633), (5, 3.858), (10, 4.474)]:
        assert range_quantile(m) == pytest.approx(q, abs=2e-3)
    assert range_quantile(2) == pytest.approx(1.959964 * math.sqrt(2), abs=1e-4)
    assert range_quantile(1) == 0.0


# ---- H4 and H5: the paper's own method, on sweeps where each is built true or false -----------

OURS_BUDGETS = [0, 2, 4, 6, 8, 10, 12]
# r per method (v0 = 1), three regimes by construction (ε = the 2 % floor, no sampling term):
#   k = 2, 4   ranking-sensitive: spread .50 and .47; math leads, drops .10 per step at most
#   k = 6, 8   converging: spread .03 and .02 (<= S*/2)
#   k = 10, 12 structure-dominated: spacing leads, block and last collapse
OURS = {
    "math":    [1, .90, .82, .50, .45, .40, .35],
    "general": [1, .78, .68, .49, .44, .38, .33],
    "mixed":   [1, .85, .78, .50, .45, .39, .34],
    "bi":      [1, .80, .70, .49, .44, .38, .33],
    "block":   [1, .60, .50, .49, .44, .10, .05],
    "last":    [1, .40, .35, .47, .43, .05, .02],
    "uniform": [1, .70, .60, .49, .45, .38, .36],
    "spacing": [1, .75, .65, .50, .45, .41, .36],
}


def ours(tasks: dict[str, dict[str, list[float]]], domain: str = "math") -> pd.DataFrame:
    """Several tasks of one domain, each with its own r table."""
    return pd.concat([frame(t, OURS_BUDGETS, task=name, domain=domain, n=None) for name, t in tasks.items()],
                     ignore_index=True)


def varied(table: dict[str, list[float]], **rows: list[float]) -> dict[str, list[float]]:
    return {**{m: list(v) for m, v in table.items()}, **rows}


def test_h4_and_h5_hold_where_the_domain_ranking_is_steadiest_and_keeps_up_late():
    # a second task where bi is less consistent than in the first: math wins (a) as well
    a = analyze(ours({"t1": OURS, "t2": varied(OURS, bi=[1, .70, .62, .49, .44, .38, .33])}))
    d = a.get("domain", "math", "accuracy")
    assert (d.regime(1).budgets, d.regime(2).budgets, d.regime(3).budgets) == ([2, 4], [6, 8], [10, 12])
    h4, h5 = d.claim("H4"), d.claim("H5")
    assert h4.verdict == HOLDS and h4.numbers["best_domain_aware"] == "math"
    m = h4.numbers["measures"]
    assert m["task spread"]["math"] == 0.0 and m["task spread"]["bi"] == pytest.approx(0.09)
    assert m["worst drop"]["math"] == pytest.approx(0.10) and m["mean rank"]["math"] == 1.0
    assert set(h4.numbers["baselines"]) == {"bi", "block", "last", "uniform", "spacing"}
    # H5: math .425 vs spacing .430 over k = 6..12: -.005, inside ε = .02
    assert h5.verdict == HOLDS and h5.numbers["best_structure_aware"] == "spacing"
    assert h5.numbers["gap"] == pytest.approx(-0.005)
    # on general tasks, the general ranking and mixed are the domain-aware ones
    g = analyze(ours({"t1": OURS}, domain="general")).get("domain", "general", "accuracy")
    assert g.claim("H4").numbers["domain_aware"] == ["general", "mixed"]
    assert g.claim("H4").verdict == HOLDS and g.claim("H4").numbers["best_domain_aware"] == "mixed"


def test_h4_fails_on_task_spread_alone_where_only_the_domain_mean_is_best():
    # math leads on average (.90 / .83 in the domain) but swings ±.05 between the two tasks;
    # mixed swings too; bi is the same on both tasks
    t1 = varied(OURS, math=[1, .95, .88, .50, .45, .40, .35], mixed=[1, .90, .83, .50, .45, .39, .34])
    t2 = varied(OURS, math=[1, .85, .78, .50, .45, .40, .35], mixed=[1, .80, .73, .50, .45, .39, .34])
    a = analyze(ours({"t1": t1, "t2": t2}))
    d = a.get("domain", "math", "accuracy")
    assert d.claim("H4").verdict == FAILS and "task spread" in d.claim("H4").reason
    assert d.claim("H4").numbers["measures"]["mean rank"]["math"] == 1.0
    # each task alone cannot see the spread: H4 holds there, and says (a) was not measured
    t = a.get("task", "t1", "accuracy").claim("H4")
    assert t.verdict == HOLDS and "(a) not measured" in t.reason and "task spread" not in t.numbers["measures"]


def test_h4_fails_on_a_cliff_and_h5_fails_when_the_ranking_falls_behind_late():
    cliff = varied(OURS, math=[1, .98, .72, .50, .45, .40, .35], mixed=[1, .92, .72, .50, .45, .39, .34],
                   spacing=[1, .85, .70, .50, .45, .41, .36])
    h4 = analyze(ours({"t": cliff})).get("domain", "math", "accuracy").claim("H4")
    assert h4.verdict == FAILS and "worst drop" in h4.reason
    assert h4.numbers["measures"]["worst drop"]["math"] == pytest.approx(0.26)
    late = varied(OURS, math=[1, .90, .82, .46, .41, .36, .31], mixed=[1, .85, .78, .46, .41, .35, .30])
    h5 = analyze(ours({"t": late})).get("domain", "math", "accuracy").claim("H5")
    assert h5.verdict == FAILS and h5.numbers["gap"] == pytest.approx(0.385 - 0.43)
    assert "below −ε" in h5.reason


def test_h4_and_h5_are_untestable_without_what_they_compare():
    no_ours = {m: v for m, v in OURS.items() if m not in ("math", "general", "mixed")}
    d = analyze(ours({"t": no_ours})).get("domain", "math", "accuracy")
    for h in ("H4", "H5"):
        assert d.claim(h).verdict == UNTESTABLE and "no domain-aware method (math, mixed)" in d.claim(h).reason
    no_structure = {m: v for m, v in OURS.items() if m in ("math", "bi")}
    d = analyze(ours({"t": no_structure})).get("domain", "math", "accuracy")
    assert d.claim("H5").verdict == UNTESTABLE and "no structure-aware baseline" in d.claim("H5").reason
    only_ours = {m: v for m, v in OURS.items() if m in ("math", "mixed", "general")}
    d = analyze(ours({"t": only_ours})).get("domain", "math", "accuracy")
    assert d.claim("H4").verdict == UNTESTABLE and "no baseline" in d.claim("H4").reason
