"""Harness tasks (lm-eval, lmms-eval) as sweep cells, on local task files, fully offline.

Each harness cell must equal `layercut eval --harness ... --drop` for the same drop set and the
harness's own CLI on the pruned, saved checkpoint; a killed harness sweep resumes to the same
table; Ray gives the local table; bad harness tasks stop the sweep before the model loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from layercut import api
from layercut.errors import LayercutError
from layercut.sweep import LOG_FILE, SweepSpec, run_sweep
from tests.test_bridges import OFFLINE_ENV, one_thread, run_lmms_cli, write_lm_tasks, write_lmms_tasks  # noqa: F401 (one_thread: autouse)
from tests.test_sweep import kill_and_resume
from tests.test_cli import run as run_cli

LM_TASKS = ["lm-eval:layercut_cloze", "lm-eval:layercut_ppl"]
LMMS_TASKS = ["lmms-eval:layercut_colours_gen", "lmms-eval:layercut_colours_mc@math"]
METHODS = ["last", "uniform"]
BUDGETS = [0, 2]


@pytest.fixture(scope="module")
def lm_tasks(tmp_path_factory) -> Path:
    pytest.importorskip("lm_eval")
    return write_lm_tasks(tmp_path_factory.mktemp("lm") / "tasks")


@pytest.fixture(scope="module")
def lmms_tasks(tmp_path_factory) -> Path:
    pytest.importorskip("lmms_eval")
    return write_lmms_tasks(tmp_path_factory.mktemp("lmms") / "tasks")


def harness_spec(model: Path, tasks: list[str], include: Path, **kw) -> SweepSpec:
    return SweepSpec(**{"model": str(model), "methods": METHODS, "budgets": BUDGETS, "tasks": tasks,
                        "include_path": str(include), **kw})


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["method", "budget", "task", "domain", "metric", "value", "higher_is_better", "drop", "n", "shared"]
    return df[cols].sort_values(["method", "budget", "task", "metric"]).reset_index(drop=True)


def cells(df: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """(task, drop, metric) -> value, one per distinct unit."""
    return {(r.task, r.drop, r.metric): r.value for r in df.itertuples()}


@pytest.fixture
def text_model(request) -> Path:
    """The tiny Llama, or (slow group) the real SmolLM2-135M-Instruct from the zoo."""
    if request.param == "smollm2":
        return Path(api.resolve_model("smollm2-135m"))
    return request.getfixturevalue("tiny_text_dir")


@pytest.fixture
def vlm(request) -> Path:
    """The tiny LLaVA, or (slow group) the zoo's trained tiny-llava."""
    if request.param == "tiny-llava":
        return Path(api.resolve_model("tiny-llava"))
    return request.getfixturevalue("tiny_llava_dir")


def lm_eval_cli(model_dir: Path, tasks_dir: Path, out: Path) -> dict:
    """lm-eval's own command line on a saved model folder: its results.json."""
    env = {**os.environ, **OFFLINE_ENV, "HF_DATASETS_CACHE": str(out / "hf-datasets")}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", "layercut_cloze,layercut_ppl", "--include_path", str(tasks_dir), "--batch_size", "8",
           "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(next(out.rglob("results_*.json")).read_text())["results"]


@pytest.mark.parametrize("text_model", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)], indirect=True)
def test_lm_eval_sweep_cells_equal_eval_and_the_harness_cli(text_model, lm_tasks, tmp_path, capsys):
    tiny_text_dir = text_model
    df = run_sweep(harness_spec(tiny_text_dir, LM_TASKS, lm_tasks), tmp_path / "s")
    got = cells(df)
    assert set(df.task) == set(LM_TASKS) and set(df.metric) == {"acc", "word_perplexity", "bits_per_byte"}
    assert df[df.metric == "acc"].higher_is_better.all() and not df[df.metric == "word_perplexity"].higher_is_better.any()
    assert (df.n == 6)[df.task == "lm-eval:layercut_cloze"].all() and (df.n == 4)[df.task == "lm-eval:layercut_ppl"].all()
    drops = sorted(set(df["drop"]), key=len)
    assert len(drops) >= 2 and drops[0] == ""
    # one evaluation per distinct (drop set, task), each with the harness's per-sample records
    log = [json.loads(line) for line in (tmp_path / "s" / LOG_FILE).read_text().splitlines()]
    assert len(log) == len(drops) * len(LM_TASKS)
    for rec in log:
        rows = (tmp_path / "s" / rec["samples"]).read_text().splitlines()
        assert len(rows) == rec["metrics"]["n"] and "doc" in json.loads(rows[0])
    # every drop set: `layercut eval --harness lm-eval --drop` gives the same numbers
    for drop in drops:
        out = tmp_path / f"eval-{drop or 'none'}.json"
        argv = ["eval", "--model", tiny_text_dir, "--harness", "lm-eval", "--tasks", "layercut_cloze,layercut_ppl",
                "--include-path", lm_tasks, "--out", out] + (["--drop", drop] if drop else [])
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        ev = json.loads(out.read_text())
        assert got[("lm-eval:layercut_cloze", drop, "acc")] == ev["layercut_cloze"]["acc,none"]
        assert got[("lm-eval:layercut_ppl", drop, "word_perplexity")] == pytest.approx(
            ev["layercut_ppl"]["word_perplexity,none"], rel=1e-9)
    # the largest drop set, pruned and saved, through lm-eval's own CLI
    drop = drops[-1]
    api.prune(str(tiny_text_dir), drop=[int(x) for x in drop.split(",")], out=tmp_path / "pruned")
    cli = lm_eval_cli(tmp_path / "pruned", lm_tasks, tmp_path / "cli")
    assert got[("lm-eval:layercut_cloze", drop, "acc")] == cli["layercut_cloze"]["acc,none"]
    assert got[("lm-eval:layercut_ppl", drop, "word_perplexity")] == pytest.approx(
        cli["layercut_ppl"]["word_perplexity,none"], rel=1e-6)


@pytest.mark.parametrize("vlm", ["tiny", pytest.param("tiny-llava", marks=pytest.mark.slow)], indirect=True)
def test_lmms_eval_sweep_cells_equal_eval_and_the_harness_cli(vlm, lmms_tasks, tmp_path, capsys):
    tiny_llava_dir = vlm
    # batch 1, as lmms-eval's CLI and `run_lmms_eval` default to
    df = run_sweep(harness_spec(tiny_llava_dir, LMMS_TASKS, lmms_tasks, batch_size=1), tmp_path / "s")
    got = cells(df)
    assert set(df.metric) == {"exact_match", "acc"}
    assert set(df[df.task == LMMS_TASKS[1]].domain) == {"math"} and set(df[df.task == LMMS_TASKS[0]].domain) == {"general"}
    drop = max(set(df["drop"]), key=len)
    drop_list = [int(x) for x in drop.split(",")]
    # `layercut eval --harness lmms-eval --drop`: a layer-skip view of the unpruned model
    names = [t.split(":", 1)[1].split("@")[0] for t in LMMS_TASKS]
    out = tmp_path / "eval.json"
    code, _, err = run_cli(["eval", "--model", tiny_llava_dir, "--harness", "lmms-eval", "--tasks", ",".join(names),
                            "--include-path", lmms_tasks, "--drop", drop, "--batch-size", "1", "--out", out], capsys)
    assert code == 0, err
    view = json.loads(out.read_text())
    assert got[(LMMS_TASKS[0], drop, "exact_match")] == view[names[0]]["exact_match,none"]
    assert got[(LMMS_TASKS[1], drop, "acc")] == view[names[1]]["acc,none"]
    # lmms-eval's own CLI on the pruned, saved checkpoint
    api.prune(str(tiny_llava_dir), drop=drop_list, out=tmp_path / "pruned")
    proc = run_lmms_cli(f"pretrained={tmp_path / 'pruned'}", lmms_tasks, tmp_path / "cli")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cli = json.loads(next((tmp_path / "cli").rglob("*_results.json")).read_text())["results"]
    assert got[(LMMS_TASKS[0], drop, "exact_match")] == pytest.approx(cli[names[0]]["exact_match,none"])
    assert got[(LMMS_TASKS[1], drop, "acc")] == pytest.approx(cli[names[1]]["acc,none"])
    samples = sorted((tmp_path / "s" / "samples").rglob("*.jsonl"))
    assert len(samples) == len(set(df["drop"])) * len(LMMS_TASKS)


def test_killed_harness_sweep_resumes_to_the_same_table(tiny_text_dir, lm_tasks, tmp_path):
    exe = Path(sys.executable).parent / "layercut"
    args = [str(exe), "sweep", "--model", str(tiny_text_dir), "--methods", "last,uniform,random",
            "--budgets", "0:3", "--tasks", ",".join(LM_TASKS), "--include-path", str(lm_tasks), "--no-report"]
    env = {**os.environ, **OFFLINE_ENV}
    killed = tmp_path / "killed"
    log = killed / LOG_FILE
    before = kill_and_resume(args, killed, lines=2, env=env)
    whole = tmp_path / "whole"
    clean = subprocess.run(args + ["--out", str(whole)], capture_output=True, text=True, timeout=600, env=env)
    assert clean.returncode == 0, clean.stderr[-2000:]
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(killed / "results.parquet")),
                                  comparable(pd.read_parquet(whole / "results.parquet")))
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) > before, "no lost or duplicated evaluation"


def test_ray_executor_gives_the_local_table_on_a_harness_sweep(tiny_text_dir, lm_tasks, tmp_path, ray_cluster):
    local = run_sweep(harness_spec(tiny_text_dir, LM_TASKS[:1], lm_tasks), tmp_path / "local")
    remote = run_sweep(harness_spec(tiny_text_dir, LM_TASKS[:1], lm_tasks), tmp_path / "ray",
                       executor="ray", workers=2)
    pd.testing.assert_frame_equal(comparable(local), comparable(remote))
    assert sorted(p.name for p in (tmp_path / "ray" / "samples").rglob("*.jsonl")) == \
        sorted(p.name for p in (tmp_path / "local" / "samples").rglob("*.jsonl"))


def write_bad_tasks(folder: Path) -> Path:
    """A task scored by an LLM judge, and one whose data lives on the hub."""
    folder.mkdir(parents=True)
    data = folder / "d.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    (folder / "judge_utils.py").write_text(textwrap.dedent('''
        import os

        API_KEY = os.getenv("OPENAI_API_KEY", "")

        def process_results(doc, results):
            return {"exact_match": float(results[0].strip() == doc["answer"])}
    '''))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "judged.yaml").write_text("task: layercut_judged\noutput_type: generate_until\n" + common + textwrap.dedent('''
        doc_to_text: "{{question}}"
        doc_to_target: "{{answer}}"
        process_results: !function judge_utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
    '''))
    (folder / "online.yaml").write_text(textwrap.dedent('''
        task: layercut_online
        dataset_path: layercut-test/no-such-dataset-on-any-hub
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{question}}"
        doc_to_choice: "{{choices}}"
        doc_to_target: label
        metric_list:
          - metric: acc
    '''))
    return folder


def test_bad_harness_tasks_stop_before_the_model_loads(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    bad = write_bad_tasks(tmp_path / "bad")
    never = tmp_path / "no-model"  # the model is never loaded: a missing folder raises nothing first

    def fails(task: str, match: str) -> None:
        with pytest.raises(LayercutError, match=match) as err:
            run_sweep(harness_spec(never, [task], bad), tmp_path / f"s{len(list(tmp_path.iterdir()))}")
        assert "\n" not in str(err.value)

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails("lm-eval:layercut_judgd", r"no task 'layercut_judgd'.*close: layercut_judged")
    fails("lm-eval:layercut_judged", "LLM judge or a network service")
    fails("lm-eval:layercut_online", "cannot be read here")
    fails("lmeval:layercut_judged", "HARNESS:TASK")
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # as if lm-eval were not installed
    fails("lm-eval:layercut_judged", r"lm-eval is not installed: run `pip install .*\[harness\]")
    assert not list(tmp_path.glob("s*")), "nothing written"


def test_each_harness_task_loads_once_per_sweep(tiny_text_dir, lm_tasks, tmp_path, monkeypatch):
    from layercut.evaluation import harness

    loads: list[list[str]] = []
    real = harness._load_objects

    def counting(name, manager, names):
        loads.append(list(names))
        return real(name, manager, names)

    monkeypatch.setattr(harness, "_load_objects", counting)
    df = run_sweep(harness_spec(tiny_text_dir, LM_TASKS, lm_tasks, methods=["last", "uniform", "random"],
                                budgets=[0, 1, 2]), tmp_path / "s")
    assert len(set(df["drop"])) >= 4, "several distinct drop sets were evaluated"
    assert sorted(map(tuple, loads)) == [("layercut_cloze",), ("layercut_ppl",)]


def test_a_lost_ray_actor_is_restarted_and_its_units_redone(tiny_text_dir, lm_tasks, tmp_path, ray_cluster):
    """SIGKILL one actor mid-sweep: Ray restarts it, its chunk goes back to the queue, and the
    table equals the local executor's, every unit logged exactly once."""
    import threading

    from ray._private.state import actors  # the GCS table: the state API needs the dashboard

    earlier = set(actors())  # the cluster is shared: other tests' actors are not this sweep's

    def workers() -> list[dict]:
        return [a for key, a in actors().items() if key not in earlier and a["ActorClassName"].endswith("Worker")]

    spec = dict(methods=["last", "uniform"], budgets=[0, 1, 2, 3])
    local = run_sweep(harness_spec(tiny_text_dir, LM_TASKS[:1], lm_tasks, **spec), tmp_path / "local")
    out, got = tmp_path / "ray", {}

    def sweep() -> None:
        try:
            got["df"] = run_sweep(harness_spec(tiny_text_dir, LM_TASKS[:1], lm_tasks, **spec), out,
                                  executor="ray", workers=2)
        except Exception as exc:  # noqa: BLE001 (shown by the assertion below)
            got["error"] = repr(exc)

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / LOG_FILE).exists() and (out / LOG_FILE).read_text().strip()):
        time.sleep(0.05)
    alive = [a for a in workers() if a["State"] == "ALIVE"]
    assert alive, "no live Worker actor to kill"
    os.kill(alive[0]["Pid"], signal.SIGKILL)
    thread.join(timeout=600)
    restarts = max(a["NumRestarts"] for a in workers())
    assert "df" in got, got.get("error", "the Ray sweep did not finish")
    assert restarts >= 1, "the killed actor was not restarted"
    pd.testing.assert_frame_equal(comparable(local), comparable(got["df"]))
    keys = [json.loads(line)["key"] for line in (out / LOG_FILE).read_text().splitlines()]
    distinct = {(r.task, tuple(sorted(r.drop.split(",")))) for r in local.itertuples()}
    assert len(keys) == len(set(keys)) == len(distinct), "every unit logged exactly once"


def test_truncated_share_counts_answers_that_ran_to_their_limit(tiny_text_dir):
    """lm-eval logs (context, gen_kwargs) per request; lmms-eval a flat list with the kwargs
    dict; an answer counts as cut when its re-tokenised length reaches its limit (within 2 %,
    at least 2 tokens); loglikelihood samples (no kwargs dict) count for nothing."""
    from transformers import AutoTokenizer

    from layercut.evaluation.harness import truncated_share

    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    words = " ".join(["apple"] * 40)
    n = len(tok(words, add_special_tokens=False)["input_ids"])
    short = " ".join(["apple"] * 3)
    lm_eval_samples = [
        {"arguments": [("Q:", {"until": ["\n"], "max_gen_toks": n})], "resps": [[words]]},  # at the limit
        {"arguments": [("Q:", {"until": ["\n"], "max_gen_toks": n + 1})], "resps": [[words]]},  # within 2 tokens
        {"arguments": [("Q:", {"until": ["\n"], "max_gen_toks": n + 10})], "resps": [[words]]},  # stopped early
        {"arguments": [("Q:", {"max_new_tokens": n})], "resps": [[short]]},  # alias, short answer
        {"arguments": [("Q:", " mat")], "resps": [[(-1.0, True)]]},  # loglikelihood
    ]
    assert truncated_share(lm_eval_samples, tok) == 0.5
    lmms_samples = [{"arguments": ["Q:", {"max_new_tokens": n}, 0, "task", "test"], "resps": [words]},
                    {"arguments": ["Q:", {}, 1, "task", "test"], "resps": [words]}]  # default limit 256
    assert truncated_share(lmms_samples, tok) == 0.5
    assert truncated_share(lmms_samples, tok, default=n) == 1.0
    assert truncated_share([lm_eval_samples[-1]], tok) is None
