"""Adaptive sweeps: the stopping rule on synthetic cells with a known truth, and real sweeps that
evaluate each round's documents once, resume exactly, and agree with the full sweep where every
cell ran to the end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layercut.sweep import LOG_FILE, SweepSpec, run_sweep
from layercut.sweep.adaptive import ADAPTIVE_FILE, Cell, Rule, cp_upper, decide, schedule, sign_p, task_order
from tests import forkcli

METHODS = ["math", "bi", "block", "last", "uniform", "spacing"]
TASKS = ["nll-math", "mmlu-science"]


# --- the rule --------------------------------------------------------------------------------


def test_schedule_sign_test_and_clopper_pearson():
    assert schedule(64) == [8, 16, 32, 64] and schedule(40) == [8, 16, 32, 40] and schedule(5) == [5]
    assert schedule(8) == [8] and schedule(20, first=4) == [4, 8, 16, 20]
    assert sign_p(8, 0) == 1 / 256 and sign_p(0, 0) == 1.0
    assert math.isclose(sign_p(10, 1), 12 / 2048)
    # the CP bound solves P(Bin(n, u) <= k) = delta
    u = cp_upper(0, 64, 0.0125)
    assert math.isclose((1 - u) ** 64, 0.0125, rel_tol=1e-6)
    u = cp_upper(3, 20, 0.05)
    cdf = sum(math.comb(20, i) * u ** i * (1 - u) ** (20 - i) for i in range(4))
    assert math.isclose(cdf, 0.05, rel_tol=1e-6)


def test_an_obviously_broken_cell_stops_after_the_first_round():
    """nll 3x the unpruned model's on every one of the first 8 documents: broken at once; a
    cell as good as the reference keeps going."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(2.0, 3.0, 64)
    cells = {"ok": Cell(ref[:8] + rng.normal(0, 0.05, 8)), "broken": Cell(3 * ref[:8])}
    decide(cells, ref, higher=False, binary=False, rule=Rule(), n=64)
    assert cells["broken"].stopped in ("broken", "behind") and cells["broken"].at == 8
    assert cells["ok"].stopped == "decided"  # the rest of its budget is decided
    # alone against an equal cell, an ok cell is not stopped
    cells = {"a": Cell(ref[:8] + 0.01), "b": Cell(ref[:8] - 0.01 * rng.choice([-1, 1], 8))}
    decide(cells, ref, higher=False, binary=False, rule=Rule(), n=64)
    assert not any(c.stopped for c in cells.values())


def test_a_tie_is_never_declared_a_win():
    """Two methods equally good (same accuracy, independent answers): over 2000 simulated
    adaptive runs, 'behind' is declared in at most alpha of them (the spending over rounds)."""
    rng = np.random.default_rng(1)
    rule, n, wins = Rule(), 64, 0
    for _ in range(2000):
        a, b = (rng.random(n) < 0.5).astype(float), (rng.random(n) < 0.5).astype(float)
        ref = np.ones(n)
        cells = {"a": Cell(np.empty(0)), "b": Cell(np.empty(0))}
        for m in schedule(n):
            for key, x in (("a", a), ("b", b)):
                if not cells[key].stopped:
                    cells[key].values = x[:m]
            decide(cells, ref, higher=True, binary=True, rule=rule, n=n)
        wins += any(c.stopped == "behind" for c in cells.values())
    assert wins / 2000 <= rule.alpha


def test_verdicts_wrong_no_more_often_than_the_full_sweep_plus_5_points():
    """Cells with a known truth (accuracies 0.7, 0.68, 0.45, 0.2 at one budget, 256 documents):
    which cells the budget's analysis calls behind the leader by more than the noise floor, from
    the full data and from what the adaptive run evaluated. Error = a truly close cell called far
    behind, or a far cell missed."""
    rng = np.random.default_rng(2)
    truth, n, eps = {"a": 0.7, "b": 0.68, "c": 0.45, "d": 0.2}, 256, 0.1
    far = {k for k, p in truth.items() if max(truth.values()) - p > eps}
    wrong_full = wrong_adaptive = 0
    used = 0
    runs = 300
    for _ in range(runs):
        x = {k: (rng.random(n) < p).astype(float) for k, p in truth.items()}
        cells = {k: Cell(np.empty(0)) for k in truth}
        for m in schedule(n):
            for k in truth:
                if not cells[k].stopped:
                    cells[k].values = x[k][:m]
            decide(cells, np.ones(n), higher=True, binary=True, rule=Rule(), n=n)
        used += sum(len(c.values) for c in cells.values())

        def called_far(means: dict[str, float]) -> set[str]:
            return {k for k, v in means.items() if max(means.values()) - v > eps}

        wrong_full += called_far({k: v.mean() for k, v in x.items()}) != far
        wrong_adaptive += called_far({k: c.values.mean() for k, c in cells.items()}) != far
    assert wrong_adaptive / runs <= wrong_full / runs + 0.05
    assert used < 0.75 * runs * n * len(truth)  # and it saved documents


def test_task_order_is_seeded_and_shared():
    assert task_order(40, 0, "nll-math") == task_order(40, 0, "nll-math")
    assert sorted(task_order(40, 0, "nll-math")) == list(range(40))
    assert task_order(40, 0, "nll-math") != task_order(40, 1, "nll-math")


# --- real sweeps -----------------------------------------------------------------------------


def spec_for(model: Path, scores: Path, **kw) -> SweepSpec:
    base = dict(model=str(model), methods=METHODS, budgets=[0, 1, 2, 3], tasks=TASKS, scores=str(scores),
                limit=20, adaptive={"first": 4, "alpha": 0.2})
    base.update(kw)
    return SweepSpec(**base)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines()]


def test_adaptive_sweep_evaluates_each_round_once_and_reports_why_cells_stopped(tiny_text_dir, scores_path,
                                                                               tmp_path):
    out = tmp_path / "adaptive"
    df = run_sweep(spec_for(tiny_text_dir, scores_path), out)
    state = json.loads((out / ADAPTIVE_FILE).read_text())
    recs = records(out)
    # every logged round is one slice of the task's shared order, never evaluated twice
    assert len({r["key"] for r in recs}) == len(recs)
    for task in TASKS:
        order = task_order(20, 0, task)
        for r in (r for r in recs if r["task"] == task and r["drop"]):
            lo, hi = ([0] + schedule(20, 4))[r["part"]], schedule(20, 4)[r["part"]]
            assert r["index"] == sorted(order[lo:hi])
        ref = next(r for r in recs if r["task"] == task and not r["drop"])
        assert ref["index"] == list(range(20))  # the reference sees every document
    # each cell's row counts the documents it used; what stopped it is said
    assert set(df["n"]) <= {4, 8, 16, 20} and (df[df.budget == 0]["n"] == 20).all()
    assert all(c["reason"] for c in state["cells"].values())
    assert state["evaluated"] == sum(len(r["index"]) for r in recs) < state["full"]
    for key, cell in state["cells"].items():
        task = key.split("|")[0]
        n_used = df[(df.task == task) & (df.drop == key.split("|")[1])]["n"]
        assert (n_used == cell["documents"]).all(), key
    # the report says it per cell, with intervals from what was evaluated
    from layercut.report import write_report

    md = (write_report(out, replicates=50) / "report.md").read_text()
    assert "## Adaptive evaluation: documents per cell" in md
    assert f"{state['evaluated']:,} document evaluations instead of {state['full']:,}" in md
    assert "behind" in md or "all" in md


def test_adaptive_resume_after_sigkill_equals_an_uninterrupted_run(tiny_text_dir, scores_path, tmp_path):
    whole = tmp_path / "whole"
    expected = run_sweep(spec_for(tiny_text_dir, scores_path), whole)
    out = tmp_path / "killed"
    script = ("import sys; from layercut.sweep import SweepSpec, run_sweep; "
              "run_sweep(SweepSpec.load(sys.argv[1]), sys.argv[2])")
    spec_file = tmp_path / "spec.json"
    spec_for(tiny_text_dir, scores_path).save(spec_file)
    proc = subprocess.Popen([sys.executable, "-c", script, str(spec_file), str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / LOG_FILE).is_file() and len((out / LOG_FILE).read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run_sweep(spec_for(tiny_text_dir, scores_path), out, resume=True)
    cols = ["method", "budget", "task", "metric", "value", "n"]
    key = ["method", "budget", "task", "metric"]
    a = expected[cols].sort_values(key).reset_index(drop=True)
    b = resumed[cols].sort_values(key).reset_index(drop=True)
    assert a.equals(b)
    assert json.loads((out / ADAPTIVE_FILE).read_text())["cells"] == \
        json.loads((whole / ADAPTIVE_FILE).read_text())["cells"]
    assert len({r["key"] for r in records(out)}) == len(records(out))  # nothing evaluated twice


def test_cells_that_run_to_the_end_equal_the_full_sweep(tiny_text_dir, scores_path, tmp_path):
    """alpha tiny: nothing can be decided, every cell gets every document, and the values are
    the full sweep's (the rounds' documents are the same documents, only in pieces)."""
    full = run_sweep(spec_for(tiny_text_dir, scores_path, adaptive=None), tmp_path / "full")
    adaptive = run_sweep(spec_for(tiny_text_dir, scores_path, adaptive={"first": 4, "alpha": 1e-9}),
                         tmp_path / "adaptive")
    cols = ["method", "budget", "task", "metric", "value", "n"]
    key = ["method", "budget", "task", "metric"]
    a = full[cols].sort_values(key).reset_index(drop=True)
    b = adaptive[cols].sort_values(key).reset_index(drop=True)
    assert np.allclose(a["value"], b["value"], rtol=1e-9, atol=1e-12) and a[key].equals(b[key])
    assert (b["n"] == 20).all()


# --- harness tasks: a round evaluates exactly its documents ---------------------------------------


def test_lm_eval_subset_evaluates_exactly_the_documents_asked_for(tiny_text_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from layercut import models
    from layercut.evaluation import harness
    from tests.test_bridges import write_lm_tasks

    tasks = write_lm_tasks(tmp_path / "tasks")
    adapter = models.load_model(str(tiny_text_dir))
    task = harness.prepare("lm-eval:layercut_cloze", str(tasks))
    assert harness.doc_count(task) == 6 and harness.doc_count(task, 4) == 4
    whole = harness.result(task, harness.run(adapter, task, batch_size=2))
    part = harness.result(task, harness.run(adapter, task, batch_size=2, docs=[1, 4]))
    assert sorted(int(s["doc_id"]) for s in part.samples) == [1, 4]
    assert [s["doc"] for s in part.samples] == [s["doc"] for s in whole.samples if int(s["doc_id"]) in (1, 4)]
    values = whole.docs["acc"][0]
    assert part.docs["acc"][0] == [values[1], values[4]]  # the same answers, in index order


def test_lmms_eval_subset_evaluates_exactly_the_documents_asked_for(tiny_llava_dir, tmp_path):
    pytest.importorskip("lmms_eval")
    from layercut import models
    from layercut.evaluation import harness
    from tests.test_bridges import write_lmms_tasks

    tasks = write_lmms_tasks(tmp_path / "tasks")
    adapter = models.load_model(str(tiny_llava_dir))
    task = harness.prepare("lmms-eval:layercut_colours_mc", str(tasks))
    n = harness.doc_count(task)
    whole = harness.result(task, harness.run(adapter, task, batch_size=1))
    part = harness.result(task, harness.run(adapter, task, batch_size=1, docs=[0, n - 1]))
    assert sorted(int(s["doc_id"]) for s in part.samples) == [0, n - 1]
    assert [s["doc"] for s in part.samples] == [s["doc"] for s in whole.samples if int(s["doc_id"]) in (0, n - 1)]
    assert part.docs["acc"][0] == [whole.docs["acc"][0][0], whole.docs["acc"][0][n - 1]]
    # and the task is whole again afterwards
    again = harness.result(task, harness.run(adapter, task, batch_size=1))
    assert len(again.samples) == n


def test_adaptive_refusals_are_one_line_before_anything_is_written(tiny_text_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    out = tmp_path / "sweep"
    base = ["sweep", "--model", str(tiny_text_dir), "--methods", "last", "--budgets", "0,1",
            "--tasks", "nll-math", "--out", str(out), "--adaptive"]
    for extra, says in ((["--heal-steps", "2", "--calib", "builtin:text:2"], "--adaptive with --heal-steps"),
                        (["--adaptive-alpha", "0.9"], "--adaptive-alpha")):
        proc = forkcli.run(base + extra, env=env)  # the console script's code in a process of its own
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and says in lines[0], proc.stderr
        assert not out.exists()



def test_the_bootstrap_keeps_a_cell_whose_documents_a_draw_missed():
    """An adaptive cell with 1 document of 64 (weight 0 elsewhere): a draw that misses it leaves
    the cell at its value instead of 0."""
    import pandas as pd

    from layercut.regimes.bootstrap import bootstrap, cell_key

    n = 64
    rows = [{"method": m, "budget": k, "task": "t", "domain": "math", "metric": "nll", "value": v,
             "higher_is_better": False, "drop": d, "n": c}
            for m, k, v, d, c in (("a", 0, 2.0, "", n), ("b", 0, 2.0, "", n), ("a", 2, 3.0, "1,2", n),
                                  ("b", 2, 5.0, "3,4", 1))]
    df = pd.DataFrame(rows)
    ones = np.ones(n)
    one = np.zeros(n)
    one[0] = 1.0
    docs = {("a", 0, "t", "nll"): (2 * ones, ones), ("b", 0, "t", "nll"): (2 * ones, ones),
            ("a", 2, "t", "nll"): (3 * ones, ones), ("b", 2, "t", "nll"): (5 * one, one)}
    u = bootstrap(df, docs, replicates=400, seed=0)
    assert u.intervals[cell_key("b", 2, "t", "nll")] == [5.0, 5.0]
