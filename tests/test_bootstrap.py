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
    # the same folder as an older layercut wrote it: no per-document values, a report all the same
    log = tmp_path / "s" / LOG_FILE
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in rec.items() if k != "docs"}) + "\n" for rec in lines))
    old = write_report(tmp_path / "s", tmp_path / "old-report", replicates=50)
    md = (old / "report.md").read_text()
    assert "**No intervals:**" in md and not (old / "uncertainty.json").exists()
    assert "Which differences are significant" not in md
