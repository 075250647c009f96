"""The paired bootstrap of the regime analysis, on synthetic sweeps whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from layercut.errors import LayercutError
from layercut.regimes import analyze
from layercut.regimes.bootstrap import Uncertainty, bootstrap, cell_key
from tests.test_regimes import ACC, BUDGETS, frame


def sampled(table: dict[str, list[float]], n: int, seed: int, budgets: list[int] = BUDGETS,
            task: str = "gsm8k") -> tuple[pd.DataFrame, dict]:
    """A sweep measured on n documents: each cell's per-document correctness is drawn from the
    true accuracy in `table`, and the cell's value is their mean."""
    rng = np.random.default_rng(seed)
    docs, observed = {}, {}
    for method, accs in table.items():
        for k, p in zip(budgets, accs):
            values = (rng.random(n) < p).astype(float)
            docs[(method, k, task, "accuracy")] = (values, np.ones(n))
            observed.setdefault(method, []).append(float(values.mean()))
    return frame(observed, budgets=budgets, task=task, n=n), docs


def test_the_bootstrap_recovers_the_true_boundaries():
    truth = analyze(frame(ACC)).get("task", "gsm8k", "accuracy")
    df, docs = sampled(ACC, 2000, seed=1)
    u = bootstrap(df, docs, replicates=200, seed=0)
    key = "task:gsm8k/accuracy"
    assert max(u.boundaries[key]["k3"], key=u.boundaries[key]["k3"].get) == str(truth.k3)
    assert max(u.boundaries[key]["k2"], key=u.boundaries[key]["k2"].get) == str(truth.k2)
    assert u.verdicts[key]["H1"] > 0.9 and u.verdicts[key]["H3"] > 0.5
    assert u.fixed == []
    # the leader at k = 4 (math, .55) beats block (.30) far beyond noise; at k = 8 the methods
    # truly tied at the top (.30) are never told apart from the leader
    assert {"block", "last", "nonmath"} <= set(u.significant(key, 4))
    top = {m for m in ACC if ACC[m][BUDGETS.index(8)] == max(v[BUDGETS.index(8)] for v in ACC.values())}
    assert not set(u.significant(key, 8)) & top


def test_h4_and_h5_shares_follow_the_truth():
    """On ACC math is steadiest at k = 2, 4 and keeps within ε of spacing later (H4, H5 true);
    with a cliff at k = 4 (bi steadier) and .06 lost at every later budget both are false. 2000 documents per
    cell make each truth clear: the shares are high and near 0."""
    key = "task:gsm8k/accuracy"
    df, docs = sampled(ACC, 2000, seed=1)
    true = bootstrap(df, docs, replicates=100, seed=0).verdicts[key]
    false_table = {**ACC, "math": [.60, .59, .44] + [v - .06 for v in ACC["math"][3:]],
                   "bi": [.60, .54, .53] + ACC["bi"][3:]}  # bi falls .06 at most, math .15
    truth = analyze(frame(false_table)).get("task", "gsm8k", "accuracy")
    assert (truth.claim("H4").verdict, truth.claim("H5").verdict) == ("does not hold", "does not hold")
    df, docs = sampled(false_table, 2000, seed=2)
    false = bootstrap(df, docs, replicates=100, seed=0).verdicts[key]
    # H4 is judged over regime 1: in the resamples where regime 1 runs on to k = 6 (those where H2
    # fails), math's fall into k = 6 (.19) is steeper than spacing's (.12), so H4 fails with them
    assert true["H4"] > 0.7 and true["H4"] >= true["H2"] - 0.1 and true["H5"] > 0.9, true
    assert false["H4"] < 0.1 and false["H5"] < 0.1, false
    a = analyze(df)
    u = bootstrap(df, docs, replicates=20, seed=0)
    u.annotate(a)  # analysis.json then carries each verdict's share
    assert all(c.numbers["share"] == u.verdicts[s.key][c.id] for s in a.series for c in s.claims)


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    """Percentile intervals of a mean of Bernoulli documents: over many independent sweeps, the
    95 % interval of each cell contains its true accuracy close to 95 % of the time."""
    budgets = BUDGETS[:4]
    table = {m: ACC[m][:4] for m in ("math", "block", "spacing")}
    hits = total = 0
    for seed in range(20):
        df, docs = sampled(table, 300, seed=100 + seed, budgets=budgets)
        u = bootstrap(df, docs, replicates=100, seed=seed)
        for method, accs in table.items():
            for k, p in zip(budgets, accs):
                if p in (0.0, 1.0):
                    continue
                low, high = u.intervals[cell_key(method, k, "gsm8k", "accuracy")]
                hits += low <= p <= high
                total += 1
    assert 0.88 <= hits / total <= 0.99, hits / total


def test_resampling_is_paired_across_methods_and_budgets():
    """Two methods with the same per-document values stay equal in every replicate (the same
    documents are drawn for both), so their difference has a zero-width interval."""
    n = 50
    values = (np.random.default_rng(0).random(n) < 0.5).astype(float)
    docs = {}
    rows = {"a": [], "b": [], "c": []}
    for k in (0, 2):
        for m in rows:
            v = values if m != "c" else 0.0 * values  # c clearly worst: a and b tie for the lead
            docs[(m, k, "t", "accuracy")] = (v, np.ones(n))
            rows[m].append(float(v.mean()))
    df = frame(rows, budgets=[0, 2], task="t", n=n)
    u = bootstrap(df, docs, replicates=100, seed=3)
    a, b = u.intervals[cell_key("a", 2, "t", "accuracy")], u.intervals[cell_key("b", 2, "t", "accuracy")]
    assert a == b and a[0] < a[1]
    diff = u.differences["task:t/accuracy"]["2"]["methods"]
    assert u.differences["task:t/accuracy"]["2"]["leader"] == "a" and diff["b"] == [0.0, 0.0]
    assert diff["c"][0] > 0


def test_token_weighted_nll_and_cells_without_documents():
    n = 20
    rng = np.random.default_rng(0)
    docs = {}
    rows = {"a": [], "b": []}
    for m in rows:
        for k in (0, 2):
            nll, tokens = rng.random(n) + 1 + k * (m == "b"), rng.integers(1, 30, n).astype(float)
            docs[(m, k, "t", "nll")] = (nll, tokens)
            rows[m].append(float((nll * tokens).sum() / tokens.sum()))
    df = pd.concat([frame(rows, budgets=[0, 2], task="t", metric="nll", higher=False, n=n),
                    frame({"a": [.5, .4], "b": [.5, .3]}, budgets=[0, 2], task="u", n=n)], ignore_index=True)
    u = bootstrap(df, docs, replicates=50, seed=0)
    assert u.fixed == ["u|accuracy"]
    assert u.intervals[cell_key("a", 2, "u", "accuracy")] == [0.4, 0.4]  # held at its value
    low, high = u.intervals[cell_key("b", 2, "t", "nll")]
    assert low < rows["b"][1] < high
    assert Uncertainty.from_dict(u.to_dict()) == u
    with pytest.raises(LayercutError, match="replicates"):
        bootstrap(df, docs, replicates=0)


@pytest.mark.parametrize("engine", ["trie", "plain"])
def test_sweep_cells_store_per_document_values_that_make_their_metrics(tiny_text_dir, tmp_path, engine):
    import json

    from layercut.sweep import LOG_FILE, SweepSpec, run_sweep

    spec = SweepSpec(model=str(tiny_text_dir), methods=["last", "uniform"], budgets=[0, 1, 2],
                     tasks=["nll-math", "mmlu-math"], limit=5, engine=engine)
    run_sweep(spec, tmp_path / "s")
    records = [json.loads(line) for line in (tmp_path / "s" / LOG_FILE).read_text().splitlines()]
    assert records and all(rec["docs"] for rec in records)
    for rec in records:
        for metric, (values, weights) in rec["docs"].items():
            assert len(values) == len(weights) == 5
            mean = sum(v * w for v, w in zip(values, weights)) / sum(weights)
            assert mean == pytest.approx(rec["metrics"][metric], rel=1e-9, abs=1e-12), (rec["key"], metric)


def test_reports_carry_intervals_and_old_sweeps_still_report(tiny_text_dir, tmp_path):
    import json

    from layercut.report import write_report
    from layercut.sweep import LOG_FILE, SweepSpec, run_sweep

    spec = SweepSpec(model=str(tiny_text_dir), methods=["last", "uniform", "random"], budgets=[0, 1, 2, 3],
                     tasks=["nll-math", "mmlu-math"], limit=6, scores=None)
    run_sweep(spec, tmp_path / "s")
    folder = write_report(tmp_path / "s", replicates=50)
    u = Uncertainty.load(folder / "uncertainty.json")
    assert u.replicates == 50 and u.fixed == []
    md = (folder / "report.md").read_text()
    assert "A paired bootstrap over the evaluation documents: 50 resamples" in md
    assert "Which differences are significant" in md and "k3 over resamples" in md and "resamples)" in md
    # H4 and H5 have shares too; without a domain-aware method in the sweep they are not testable
    assert all(set(v) == {"H1", "H2", "H3", "H4", "H5"} for v in u.verdicts.values())
    assert "| H4 ours most stable in regime 1 (P: the share of the 50 resamples in which it holds) |" in md
    assert "| `domain:math/nll` | not testable (P 0.00) | not testable (P 0.00) |" in md
    # the same folder as an older layercut wrote it: no per-document values, a report all the same
    log = tmp_path / "s" / LOG_FILE
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in rec.items() if k != "docs"}) + "\n" for rec in lines))
    old = write_report(tmp_path / "s", tmp_path / "old-report", replicates=50)
    md = (old / "report.md").read_text()
    assert "**No intervals:**" in md and not (old / "uncertainty.json").exists()
    assert "Which differences are significant" not in md


def test_side_by_side_puts_each_models_regimes_and_verdict_probabilities_in_one_table():
    from layercut.demo import side_by_side

    worse = {m: [v * 0.8 if k else v for k, v in zip(BUDGETS, accs)] for m, accs in ACC.items()}
    runs = {}
    for name, table, seed in (("with", ACC, 1), ("without", worse, 2)):
        df, docs = sampled(table, 400, seed=seed)
        runs[name] = (analyze(df), bootstrap(df, docs, replicates=50, seed=0))
    rows = side_by_side(runs)
    keys = [s.key for s in runs["with"][0].series]
    assert [(r["series"], r["model"]) for r in rows] == [(k, m) for k in keys for m in runs]
    row = next(r for r in rows if r["series"] == "task:gsm8k/accuracy" and r["model"] == "with")
    share = runs["with"][1].verdicts["task:gsm8k/accuracy"]["H1"]
    assert row["H1"].endswith(f"(P {share:.2f})")
    assert row["H4"] == f"holds (P {runs['with'][1].verdicts['task:gsm8k/accuracy']['H4']:.2f})"
    s = runs["without"][0].get("task", "gsm8k", "accuracy")
    other = next(r for r in rows if r["series"] == s.key and r["model"] == "without")
    i = s.budgets.index(2)
    assert other["mean r, k = 2 / 4 / 8"].split(" / ")[0] == f"{np.mean([v[i] for v in s.scores.values()]):.2f}"
    assert "P " not in side_by_side({"plain": (runs["with"][0], None)})[0]["H1"]


def test_drawing_fewer_documents_widens_the_intervals_as_one_over_root_n():
    """The m-out-of-n bootstrap asks how a sweep of m documents would fare: a quarter of the
    documents doubles the interval widths (1/sqrt(m)) and leaves the centres where they were."""
    table = {m: ACC[m][:4] for m in ("math", "block", "spacing")}
    df, docs = sampled(table, 800, seed=5, budgets=BUDGETS[:4])
    full = bootstrap(df, docs, replicates=400, seed=0)
    quarter = bootstrap(df, docs, replicates=400, seed=0, draw=200)
    ratios = [(quarter.intervals[k][1] - quarter.intervals[k][0]) / (hi - lo)
              for k, (lo, hi) in full.intervals.items() if hi > lo]
    assert 1.7 < float(np.median(ratios)) < 2.3, ratios
    with pytest.raises(LayercutError, match="at least 1 document"):
        bootstrap(df, docs, replicates=2, draw=0)
