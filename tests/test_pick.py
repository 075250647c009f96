"""`layercut pick` on synthetic sweeps whose answer is built in: the deepest cut that keeps the
asked share of the unpruned score with confidence, its runner-up and the next budget's cost;
the lower bound's pairing and its effect; every refusal as one line; the report's frontier."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layercut.errors import LayercutError
from layercut.regimes.pick import domain_r, parse_keep, pick, retention
from layercut.regimes.series import domain_raw, task_raw, validated_table
from layercut.sweep.log import ResultsLog
from layercut.sweep.spec import SweepSpec, Unit
from tests.test_cli import run

N = 20  # documents per task
TASKS = {"nll-math": "math", "nll-general": "general"}
# r (unpruned nll / pruned nll) of each method at each budget on (math, general). Each pruned
# document's nll is its unpruned nll divided by r, so every resample gives exactly this r.
# Keeping 0.90 on both: k = 2 a and b meet; k = 4 b (margin .02) and a (.01) meet; k = 6 none
# (a misses math only, b both). The answer: k = 4 with b, runner-up a, next k = 6 b.
DESIGN = {
    "a": {2: (0.97, 0.95), 4: (0.93, 0.91), 6: (0.85, 0.93)},
    "b": {2: (0.96, 0.96), 4: (0.95, 0.92), 6: (0.88, 0.89)},
    "c": {2: (0.80, 0.99), 4: (0.85, 0.97), 6: (0.70, 0.95)},
}


def write_sweep(folder: Path, design: dict = DESIGN, *, docs: bool = True, heal: int = 0) -> Path:
    """A sweep folder through the sweep's own writers (cells.jsonl, results tables, sweep.json).
    Every method drops its own layers (so no cell shares another's unit); with `heal`, every
    cell is also logged healed, with r a bit higher (healing recovers some)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = {t: (rng.random(N) + 1.0, rng.integers(5, 40, N).astype(float)) for t in TASKS}
    log = ResultsLog(folder, dict(TASKS))
    picks: dict[tuple[str, int], list[int]] = {}
    for i, (method, by_budget) in enumerate(design.items()):
        picks[(method, 0)] = []
        for k, rs in by_budget.items():
            picks[(method, k)] = list(range(10 * (i + 1) + k - 1, 10 * i + 9, -1))  # in selection order, not sorted
            for steps, lift in [(0, 0.0)] + ([(heal, 0.03)] if heal else []):
                for (task, (nll, tokens)), r in zip(base.items(), rs):
                    log_unit(log, Unit(tuple(sorted(picks[(method, k)])), task, steps), nll / (r + lift), tokens, docs)
    for task, (nll, tokens) in base.items():
        for steps in [0] + ([heal] if heal else []):
            log_unit(log, Unit((), task, steps), nll, tokens, docs)
    log.write_tables(picks, list(TASKS), heal)
    SweepSpec(model="smollm2-135m", methods=list(design), budgets=[0, 2, 4, 6], tasks=list(TASKS),
              calib="builtin:text:8" if heal else None, heal_steps=heal, seed=3).save(folder / "sweep.json")
    return folder


def log_unit(log: ResultsLog, unit: Unit, nll: np.ndarray, tokens: np.ndarray, docs: bool) -> None:
    value = float((nll * tokens).sum() / tokens.sum())
    log.add(unit, {"nll": value, "n": N}, 0.1, {"docs": {"nll": (nll.tolist(), tokens.tolist())}} if docs else None)


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return write_sweep(tmp_path / "sweep")


def test_the_pick_is_the_deepest_cut_meeting_every_share(sweep_dir):
    from layercut.report import read_sweep

    s = read_sweep(sweep_dir)
    p = pick(s.results, s.docs, {"math": 0.90, "general": 0.90}, replicates=200, seed=1)
    assert (p.chosen.budget, p.chosen.method, p.metric) == (4, "b", "nll")
    assert p.chosen.drop == list(range(20, 24)) and p.chosen.misses == []
    for d, want in zip(("math", "general"), DESIGN["b"][4]):
        assert p.chosen.r[d] == pytest.approx(want) and p.chosen.low[d] == pytest.approx(want)
    assert (p.runner_up.budget, p.runner_up.method, p.runner_up.misses) == (4, "a", [])
    assert (p.next.budget, p.next.method, sorted(p.next.misses)) == (6, "b", ["general", "math"])
    # a stricter share on math alone moves the cut up to k = 2, where a and b both keep 0.95
    strict = pick(s.results, s.docs, {"math": 0.955}, replicates=50)
    assert (strict.chosen.budget, strict.chosen.method, strict.runner_up.method) == (2, "a", "b")
    assert strict.next.budget == 4 and strict.next.misses == ["math"]


def test_a_cell_whose_point_meets_the_share_but_not_its_lower_bound_is_not_picked():
    """One accuracy task, 40 documents: the pruned cell answers 18 of the unpruned model's 20
    right answers (r = 0.9). Its point meets keep 0.88; its 5 % lower bound does not. A cell that
    answers the very same documents as the unpruned model has r = 1 in every paired resample."""
    n = 40
    v0 = np.r_[np.ones(20), np.zeros(20)]
    worse = np.r_[np.ones(18), np.zeros(22)]
    rows, docs = [], {}
    for method, k, v in [("x", 0, v0), ("x", 2, worse), ("y", 0, v0), ("y", 2, v0)]:
        docs[(method, k, "t", "accuracy")] = (v, np.ones(n))
        rows.append({"method": method, "budget": k, "task": "t", "domain": "math", "metric": "accuracy",
                     "value": v.mean(), "higher_is_better": True, "drop": "" if k == 0 else f"{k},{k + 1}", "n": n})
    df = pd.DataFrame(rows)
    ret = retention(df, docs, replicates=400, seed=0)
    j = ret.budgets.index(2)
    assert ret.r["math"]["x"][j] == pytest.approx(0.9)
    assert ret.low["math"]["x"][j] < 0.88 < 0.9 < ret.high["math"]["x"][j]
    assert ret.low["math"]["y"][j] == ret.high["math"]["y"][j] == 1.0  # paired: same documents, same draw
    assert pick(df, docs, {"math": 0.88}, replicates=400).chosen.method == "y"
    df = df[df.method == "x"]
    with pytest.raises(LayercutError, match=r"best reachable is k = 2 with x \(lower bounds math 0\.[0-7]"):
        pick(df, docs, {"math": 0.88}, replicates=400)
    assert pick(df, docs, {"math": 0.88}, point=True).chosen.method == "x"


@pytest.mark.parametrize("higher,shift", [(False, 1.0), (True, 0.2), (True, -0.5)])
def test_the_resampled_r_is_the_regime_analysis_r(higher, shift):
    """`domain_r` (vectorised over resamples) equals series.task_raw / domain_raw on the same
    values, in the ratio and in the difference form (a higher-is-better score below 0)."""
    rng = np.random.default_rng(1)
    rows = [{"method": m, "budget": k, "task": t, "domain": "d", "metric": "s", "value": 0.0,
             "higher_is_better": higher, "drop": ""} for t in ("t1", "t2") for m in ("a", "b") for k in (0, 2, 4)
            if not (t == "t2" and m == "b" and k == 4)]  # a cell one task lacks
    df = validated_table(pd.DataFrame(rows))
    methods, budgets = ["a", "b"], [0, 2, 4]
    tasks = {t: g.index.to_numpy() for t, g in df.groupby("task", sort=False)}
    values = rng.random((5, len(df))) + shift
    got = domain_r(values, df, tasks, ["d"], methods, budgets)
    for rep in range(len(values)):
        table = df.assign(value=values[rep])
        raw = domain_raw("d", "s", [task_raw(table.loc[rows], t, "s", methods) for t, rows in tasks.items()])
        want = np.array([[np.nan if x is None else x for x in raw.scores[m]] for m in methods])
        np.testing.assert_allclose(got[rep, 0], want, rtol=1e-12)


@pytest.mark.parametrize("text", ["math", "math=", "=0.9", "math=abc", "", "math=0.9,", "math=0.9,math=0.8"])
def test_a_malformed_keep_is_one_line(text):
    with pytest.raises(LayercutError, match="--keep"):
        parse_keep(text)


@pytest.mark.parametrize("share", ["0", "-0.1", "1.5", "nan"])
def test_a_share_outside_zero_one_is_refused(share):
    with pytest.raises(LayercutError, match=r"--keep .*(in \(0, 1\]|DOMAIN=SHARE)"):
        parse_keep(f"math={share}")
    assert parse_keep("math=1,general=0.5") == {"math": 1.0, "general": 0.5}


def test_cli_pick_prints_the_pick_and_the_command(sweep_dir, capsys):
    code, out, err = run(["pick", "--sweep", sweep_dir, "--keep", "math=0.9,general=0.9", "--replicates", "100"],
                         capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "pick: k = 4 with b, dropping layers 20,21,22,23" in lines
    assert max(len(line) for line in lines if not line.startswith("  layercut ")) <= 80  # commands: one line
    assert any("runner-up: k=4 a" in line for line in lines) and any("next: k=6 b" in line for line in lines)
    assert "next budget k = 6 (b) misses math (0.880 < 0.9), general (0.890 < 0.9)" in lines
    assert f"  layercut prune --model smollm2-135m --drop 20,21,22,23 --out {sweep_dir.parent / 'pruned-b-k4'}" \
        in lines


def test_cli_pick_json_is_one_object_on_stdout(sweep_dir, tmp_path, capsys):
    code, out, err = run(["pick", "--sweep", sweep_dir, "--keep", "math=0.9,general=0.9", "--replicates", "50",
                          "--json", "--out", tmp_path / "m"], capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["chosen"]["budget"], answer["chosen"]["method"]) == (4, "b")
    assert answer["runner_up"]["method"] == "a" and answer["next"]["misses"] == ["math", "general"]
    assert answer["replicates"] == 50 and answer["keep"] == {"math": 0.9, "general": 0.9}
    assert answer["commands"] == [f"layercut prune --model smollm2-135m --drop 20,21,22,23 --out {tmp_path / 'm'}"]


@pytest.mark.parametrize("argv,message", [
    (["--keep", "maths=0.9"], r"no domain 'maths' in the sweep for nll \(have: math, general\)"),
    (["--keep", "math=1.2"], r"--keep math=1.2: a share is in \(0, 1\]"),
    (["--keep", "math=0.99,general=0.99"],
     r"no pruned cell keeps math ≥ 0.99 and general ≥ 0.99 of the unpruned nll with 95 % confidence: the best "
     r"reachable is k = 2 with b \(lower bounds math 0.960, general 0.960\)"),
    (["--keep", "math=0.9", "--metric", "accuracy"], r"no metric 'accuracy' in the sweep \(have: nll\)"),
    (["--keep", "math=0.9,math+heal5=0.9"], "mixes healed"),
])
def test_cli_pick_refusals_are_one_line(sweep_dir, capsys, argv, message):
    code, out, err = run(["pick", "--sweep", sweep_dir, "--replicates", "20", *argv], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err


def test_cli_pick_refuses_a_missing_or_foreign_folder(tmp_path, capsys):
    code, _, err = run(["pick", "--sweep", tmp_path / "nope", "--keep", "math=0.9"], capsys)
    assert code == 2 and "sweep folder" in err and "not found" in err
    code, _, err = run(["pick", "--sweep", tmp_path, "--keep", "math=0.9"], capsys)
    assert code == 2 and "no results.parquet or results.csv" in err


def test_a_sweep_without_per_document_values_needs_point_estimates(tmp_path, capsys):
    folder = write_sweep(tmp_path / "old", docs=False)
    code, _, err = run(["pick", "--sweep", folder, "--keep", "math=0.9,general=0.9"], capsys)
    assert code == 2 and "no per-document values" in err and "--point-estimates" in err
    code, out, err = run(["pick", "--sweep", folder, "--keep", "math=0.9,general=0.9", "--point-estimates"], capsys)
    assert code == 0, err
    assert "r alone: point estimates, no lower bound" in out and "pick: k = 4 with b" in out
    row = next(line for line in out.splitlines() if line.startswith("│ pick: k=4 b"))
    assert [c.strip() for c in row.split("│")[2:4]] == ["0.950", "0.920"]  # r alone, no interval


def test_healed_domains_pick_a_healed_checkpoint(tmp_path, capsys):
    folder = write_sweep(tmp_path / "healed", heal=5)
    code, out, err = run(["pick", "--sweep", folder, "--keep", "math+heal5=0.9,general+heal5=0.9", "--json",
                          "--replicates", "20"], capsys)
    assert code == 0, err
    answer = json.loads(out)
    # healing lifts every r by 0.03: a at k = 6 now keeps math 0.88 and general 0.96, b 0.91 / 0.92
    assert (answer["chosen"]["budget"], answer["chosen"]["method"]) == (6, "b")
    out_dir = tmp_path / "pruned-b-k6"
    assert answer["commands"] == [
        f"layercut prune --model smollm2-135m --drop 20,21,22,23,24,25 --out {out_dir}",
        f"layercut heal --model {out_dir} --out {out_dir}-heal5 --steps 5 --seed 3 --data builtin:text:8"]


def test_the_installed_command_refuses_a_bad_keep_in_one_line(sweep_dir):
    exe = Path(sys.executable).parent / "layercut"
    proc = subprocess.run([str(exe), "pick", "--sweep", str(sweep_dir), "--keep", "math=2"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: --keep math=2: a share is in (0, 1], e.g. 0.90 keeps 90 % "
                                                "of the unpruned score"]


def test_the_report_frontier_section_and_figure(sweep_dir, tmp_path):
    from layercut.report import read_sweep
    from layercut.report.document import render_markdown
    from layercut.report.frontier import frontier_blocks

    blocks = frontier_blocks(read_sweep(sweep_dir), tmp_path, replicates=50)
    kinds = [b[0] for b in blocks]
    assert kinds[:2] == ["h", "p"] and "table" in kinds and kinds[-1] == "fig"
    table = next(b for b in blocks if b[0] == "table")
    assert [row[0] for row in table[2]] == ["0", "2", "4", "6"]
    assert table[2][2][1].startswith("b 0.950 [0.950, 0.950]")  # k = 4, math: b leads
    assert (tmp_path / blocks[-1][1].file).stat().st_size > 10_000
    md = render_markdown(blocks)
    assert "**k = 4 with `b`**" in md and "`layercut prune --model smollm2-135m --drop 20,21,22,23" in md
    assert "The next budget, k = 6, would cost" in md


def test_the_frontier_says_when_it_has_point_estimates_only(tmp_path):
    from layercut.report import read_sweep
    from layercut.report.frontier import frontier_blocks

    old = read_sweep(write_sweep(tmp_path / "old", docs=False))
    blocks = frontier_blocks(old, tmp_path, replicates=50)
    assert "point estimates only: no cell of cells.jsonl holds per-document values" in blocks[1][1]
    assert "**k = 4 with `b`**" in next(b[1] for b in blocks if b[0] == "p" and b[1].startswith("**Pick"))
    s = read_sweep(write_sweep(tmp_path / "new"))
    assert "point estimates only: the report was written with 0" in frontier_blocks(s, tmp_path, replicates=0)[1][1]
    s.docs = {k: v for k, v in s.docs.items() if k[2] != "nll-general"}  # one task without documents
    assert "point estimates only: the cells of task 'nll-general' hold no per-document values" in \
        frontier_blocks(s, tmp_path, replicates=50)[1][1]


def test_cells_on_different_documents_are_not_paired(sweep_dir):
    from layercut.report import read_sweep

    s = read_sweep(sweep_dir)
    key = ("a", 2, "nll-math", "nll")
    s.docs[key] = (s.docs[key][0][:10], s.docs[key][1][:10])
    with pytest.raises(LayercutError, match=r"different numbers of documents \(10, 20\)"):
        pick(s.results, s.docs, {"math": 0.9}, replicates=10)
    general = pick(s.results, s.docs, {"general": 0.9}, replicates=10).chosen  # math is not read
    assert (general.budget, general.method) == (6, "c")  # c keeps .95 of general at k = 6, a .93


def test_a_runner_up_with_the_same_layers_says_so(tmp_path, capsys):
    """Two methods that chose the same layers are one checkpoint: d copies b's r, and its k = 4
    cell is given b's layers (as a sweep does when two methods agree)."""
    folder = write_sweep(tmp_path / "shared", {**DESIGN, "d": DESIGN["b"]})
    table = pd.read_parquet(folder / "results.parquet")
    at = lambda m: (table.method == m) & (table.budget == 4)
    table.loc[at("d"), "drop"] = table.loc[at("b"), "drop"].iloc[0]
    table.to_parquet(folder / "results.parquet", index=False)
    code, out, err = run(["pick", "--sweep", folder, "--keep", "math=0.9,general=0.9", "--replicates", "20"], capsys)
    assert code == 0, err
    assert "pick: k = 4 with b, dropping layers 20,21,22,23" in out and "runner-up: k=4 d" in out
    assert "runner-up d drops the same layers as b" in out.splitlines()


def test_a_sweep_of_the_unpruned_model_alone_has_no_cut(sweep_dir):
    from layercut.report import read_sweep

    s = read_sweep(sweep_dir)
    base = s.results[s.results.budget == 0]
    with pytest.raises(LayercutError, match="no pruned cell of the sweep has nll on math: sweep a budget above 0"):
        pick(base, s.docs, {"math": 0.5}, replicates=10)
