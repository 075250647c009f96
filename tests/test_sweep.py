"""Sweeps: layer-skip views equal pruned checkpoints, kills resume exactly, Ray equals local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from layercut import api, models, surgery
from layercut.errors import LayercutError
from layercut.evaluation import evaluate, prepare
from layercut.sweep import LOG_FILE, SweepSpec, parse_budgets, run_sweep

METHODS = ["math", "bi", "block", "last", "uniform", "spacing"]
TASKS = ["nll-math", "nll-general"]


def spec_for(model: Path, scores: Path, **kw) -> SweepSpec:
    base = dict(model=str(model), methods=METHODS, budgets=[0, 1, 2, 3], tasks=TASKS,
                scores=str(scores), limit=6)
    base.update(kw)
    return SweepSpec(**base)


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["method", "budget", "task", "metric", "value", "drop", "n", "shared"]
    return df[cols].sort_values(["method", "budget", "task", "metric"]).reset_index(drop=True)


def test_skip_view_equals_pruned_and_reloaded_checkpoint(tiny_llava_dir, tmp_path):
    """Same drop set: the in-place view and a real pruned copy give equal logits and metrics."""
    adapter = models.load(str(tiny_llava_dir))
    inputs = surgery.probe_inputs(adapter)
    drop = [2, 4]
    prepared = prepare("nll-math", adapter, limit=4)
    with surgery.skipped(adapter, drop):
        with torch.no_grad():
            view = adapter.model(**inputs, use_cache=False).logits
        view_metrics = evaluate(adapter, prepared)
        view_tokens = adapter.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    api.prune(str(tiny_llava_dir), drop=drop, out=tmp_path / "p")
    pruned = models.load(str(tmp_path / "p"))
    with torch.no_grad():
        real = pruned.model(**inputs, use_cache=False).logits
    assert torch.equal(view, real)
    assert evaluate(pruned, prepare("nll-math", pruned, limit=4)) == view_metrics
    assert torch.equal(view_tokens, pruned.model.generate(**inputs, max_new_tokens=6, do_sample=False))
    with torch.no_grad():
        full = adapter.model(**inputs, use_cache=False).logits
    assert not torch.equal(full, view), "the view is undone on exit"


def test_sweep_table_shares_repeated_drop_sets(tiny_text_dir, scores_path, tmp_path):
    df = run_sweep(spec_for(tiny_text_dir, scores_path), tmp_path / "s")
    cells = df.drop_duplicates(["method", "budget", "task"])
    assert len(cells) == len(METHODS) * 4 * len(TASKS)
    # budget 0 is one evaluation shared by every method
    zero = cells[cells.budget == 0]
    assert zero["shared"].sum() == len(zero) - len(TASKS)
    assert zero.groupby("task")["value"].nunique().eq(1).all()
    units = {(r.task, tuple(sorted(r.drop.split(",")))) for r in cells.itertuples()}
    log = [json.loads(line) for line in (tmp_path / "s" / LOG_FILE).read_text().splitlines()]
    assert len(log) == len(units), "each distinct (drop set, task) evaluated exactly once"
    assert (tmp_path / "s" / "results.csv").is_file() and (tmp_path / "s" / "sweep.json").is_file()
    with pytest.raises(LayercutError, match="--resume"):
        run_sweep(spec_for(tiny_text_dir, scores_path), tmp_path / "s")


def kill_and_resume(args: list[str], out: Path, lines: int, env: dict | None = None) -> int:
    """Start `args --out OUT`, SIGKILL it once `lines` units are logged, resume it to the end;
    returns how many units were logged at the kill."""
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = out / LOG_FILE
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(log.read_text().splitlines())
    resumed = subprocess.run(args + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return before


def test_killed_sweep_resumes_to_the_same_table(tiny_text_dir, scores_path, tmp_path):
    exe = Path(sys.executable).parent / "layercut"
    args = [str(exe), "sweep", "--model", str(tiny_text_dir), "--scores", str(scores_path),
            "--methods", ",".join(METHODS + ["random"]), "--budgets", "0:3", "--tasks", ",".join(TASKS),
            "--limit", "6", "--no-report"]
    killed = tmp_path / "killed"
    log = killed / LOG_FILE
    before = kill_and_resume(args, killed, lines=3)
    whole = tmp_path / "whole"
    clean = subprocess.run(args + ["--out", str(whole)], capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    a = pd.read_parquet(killed / "results.parquet")
    b = pd.read_parquet(whole / "results.parquet")
    pd.testing.assert_frame_equal(comparable(a), comparable(b))
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) > before, "no lost or duplicated evaluation"


@pytest.mark.parametrize("adaptive", [None, {"first": 2, "alpha": 0.5}], ids=["full", "adaptive"])
def test_ray_executor_gives_the_local_table(adaptive, tiny_text_dir, scores_path, tmp_path, ray_cluster):
    """The same table from Ray actors as locally; an adaptive sweep's rounds (one actor pool for
    all of them) also take the same decisions."""
    spec = dict(methods=["math", "uniform", "last"], budgets=[0, 2, 3], adaptive=adaptive)
    local = run_sweep(spec_for(tiny_text_dir, scores_path, **spec), tmp_path / "local")
    remote = run_sweep(spec_for(tiny_text_dir, scores_path, **spec), tmp_path / "ray", executor="ray", workers=2)
    pd.testing.assert_frame_equal(comparable(local), comparable(remote))
    if adaptive:
        decisions = [json.loads((tmp_path / d / "adaptive.json").read_text()) for d in ("local", "ray")]
        assert decisions[0] == decisions[1] and decisions[0]["cells"]


def test_hybrid_gets_its_threshold_from_the_other_methods(tiny_text_dir, scores_path, tmp_path):
    df = run_sweep(spec_for(tiny_text_dir, scores_path, methods=["math", "spacing", "block", "hybrid"]), tmp_path / "h")
    spec = json.loads((tmp_path / "h" / "sweep.json").read_text())
    assert "hybrid_threshold" in spec["options"]
    t = spec["options"]["hybrid_threshold"]
    hyb = df[(df.method == "hybrid") & (df.task == "nll-math")].set_index("budget")["drop"]
    ref = {m: df[(df.method == m) & (df.task == "nll-math")].set_index("budget")["drop"] for m in ("math", "spacing")}
    for k, drop in hyb.items():
        parent = "math" if k < t else "spacing"
        assert sorted(drop.split(",")) == sorted(ref[parent][k].split(",")), (k, t)


def test_parse_budgets():
    assert parse_budgets("0:16:4") == [0, 4, 8, 12, 16]
    assert parse_budgets("0,2,5") == [0, 2, 5]
    with pytest.raises(LayercutError, match="budgets"):
        parse_budgets("0:x")


def test_heal_steps_add_healed_series_that_equal_healing_by_hand(tiny_text_dir, scores_path, tmp_path):
    from layercut.heal import healed

    spec = spec_for(tiny_text_dir, scores_path, methods=["math", "uniform"], budgets=[0, 2], tasks=["nll-math"],
                    limit=3, calib="builtin:text:2", heal_steps=3)
    df = run_sweep(spec, tmp_path / "h")
    assert set(df.task) == {"nll-math", "nll-math+heal3"} and set(df.domain) == {"math", "math+heal3"}
    nll = df[df.metric == "nll"].set_index(["task", "method", "budget"])["value"]
    adapter = models.load(str(tiny_text_dir))
    prepared = prepare("nll-math", adapter, limit=3)
    drop = [int(i) for i in df[(df.method == "math") & (df.budget == 2)]["drop"].iloc[0].split(",")]
    with surgery.skipped(adapter, drop), healed(adapter, api.calibration("builtin:text:2"), steps=3, seed=0,
                                                  measure=False):
        by_hand = evaluate(adapter, prepared)["nll"]
    assert nll[("nll-math+heal3", "math", 2)] == pytest.approx(by_hand, rel=1e-5)
    assert nll[("nll-math+heal3", "math", 2)] != nll[("nll-math", "math", 2)]
    with pytest.raises(LayercutError, match="--calib"):
        run_sweep(spec_for(tiny_text_dir, scores_path, heal_steps=2), tmp_path / "bad")
    from layercut.report import write_report

    md = (write_report(tmp_path / "h") / "report.md").read_text()
    assert "Before and after healing" in md and "nll-math+heal3" in md


def test_heal_interleaved_trains_each_picks_own_layers_and_equals_healing_by_hand(tiny_text_dir, scores_path,
                                                                                   tmp_path):
    """--heal interleaved: each healed cell fine-tunes its pick's layers in full (INTERLACE's own,
    `train_next`'s for the others), as `healed(train_layers=...)` does by hand; the unpruned pick
    has none to train and equals its unhealed cell; resume changes nothing; pick prints them."""
    from layercut import selection
    from layercut.heal import healed
    from layercut.interlace import train_next
    from layercut.report.frontier import prune_commands, trained_layers
    from layercut.report.sweep_folder import read_sweep
    from layercut.regimes.pick import pick
    from layercut.scoring import LayerScores

    kw = dict(methods=["interlace", "math"], budgets=[0, 1, 2], tasks=["nll-math"], limit=3, calib="builtin:text:2",
              heal_steps=2, heal="interleaved", heal_lr=1e-3)
    df = run_sweep(spec_for(tiny_text_dir, scores_path, **kw), tmp_path / "il")
    scores = LayerScores.load(scores_path)
    il = selection.select(scores, "interlace", 1, num_layers=6, protect={0, 5})
    math = selection.select(scores, "math", 1, num_layers=6, protect={0, 5})
    want = {"interlace": il.train, "math": train_next(math.drop, 6, {0, 5})}
    assert want["interlace"] and want["math"]
    healed_rows = df[(df.task == "nll-math+heal2") & (df.metric == "nll")].set_index(["method", "budget"])
    for m, train in want.items():
        assert healed_rows.loc[(m, 1), "train"] == ",".join(map(str, train))
    assert set(df[df.task == "nll-math"]["train"]) == {""} and healed_rows.loc[("math", 0), "train"] == ""
    plain = df[(df.task == "nll-math") & (df.metric == "nll")].set_index(["method", "budget"])["value"]
    assert healed_rows.loc[("math", 0), "value"] == plain[("math", 0)]  # nothing to train: the model as is
    adapter = models.load(str(tiny_text_dir))
    prepared = prepare("nll-math", adapter, limit=3)
    data = api.calibration("builtin:text:2")
    for m, sel in (("interlace", il), ("math", math)):
        kept = [i for i in range(6) if i not in sel.drop]
        with surgery.skipped(adapter, sel.drop), healed(adapter, data, steps=2, seed=0, lr=1e-3, measure=False,
                                                          train_layers=want[m], kept=kept):
            by_hand = evaluate(adapter, prepared)["nll"]
        assert healed_rows.loc[(m, 1), "value"] == pytest.approx(by_hand, rel=1e-5)
        assert healed_rows.loc[(m, 1), "value"] != plain[(m, 1)]
    before = (tmp_path / "il" / LOG_FILE).read_text()
    again = run_sweep(spec_for(tiny_text_dir, scores_path, **kw), tmp_path / "il", resume=True)
    assert (tmp_path / "il" / LOG_FILE).read_text() == before and comparable(again).equals(comparable(df))
    with pytest.raises(LayercutError, match="--heal-lr 0.0005 differs .*rerun with --heal-lr 0.001"):
        run_sweep(spec_for(tiny_text_dir, scores_path, **{**kw, "heal_lr": 5e-4}), tmp_path / "il", resume=True)
    s = read_sweep(tmp_path / "il")  # the bootstrap finds each healed cell's per-document values
    assert ("interlace", 1, "nll-math+heal2", "nll") in s.docs
    assert all((m, 2, "nll-math+heal2", "nll") in s.docs for m in ("interlace", "math"))  # two trained layers each
    chosen = pick(s.results, s.docs, {"math+heal2": 0.01}, replicates=20).chosen
    commands = prune_commands(s.spec, chosen, tmp_path / "out", {"math+heal2": 0.01}, trained_layers(s.results, chosen))
    trained = healed_rows.loc[(chosen.method, chosen.budget), "train"]
    assert "," in trained and f"--train-layers {trained}" in commands[1] and "--lr 0.001" in commands[1]


@pytest.mark.parametrize("kw, match", [({"heal": "full", "heal_steps": 2, "calib": "builtin:text:2"}, "--heal full"),
                                       ({"heal": "interleaved"}, "add --heal-steps"),
                                       ({"heal_lr": 0.0, "heal_steps": 2, "calib": "builtin:text:2"}, "--heal-lr")])
def test_heal_options_refused_in_one_line(tiny_text_dir, scores_path, tmp_path, kw, match):
    with pytest.raises(LayercutError, match=match):
        run_sweep(spec_for(tiny_text_dir, scores_path, **kw), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_resume_reads_a_missing_option_as_its_default(tmp_path):
    """`demo` saves no --alpha; `sweep --resume` passes the default 0.5: the same sweep. Another
    value is refused, naming the value a rerun needs (0.5, not "(none)")."""
    from layercut.sweep.spec import resume_spec

    saved = SweepSpec(model="m", methods=["mixed"], budgets=[0, 1], tasks=["nll-math"])
    spec, added = resume_spec(saved, SweepSpec(**{**saved.__dict__, "options": {"alpha": 0.5}}), tmp_path)
    assert added == [] and spec.options == {}
    with pytest.raises(LayercutError, match=r"--alpha 0.7 differs .*rerun with --alpha 0.5,"):
        resume_spec(saved, SweepSpec(**{**saved.__dict__, "options": {"alpha": 0.7}}), tmp_path)
