"""The command line under faults, as a user meets it: `layercut` in a process of its own (never
in-process), with the exit code, the stderr lines and the file system after. Most calls run the
console script's code in a child forked with the libraries already imported (tests/forkcli.py);
usage errors, Ctrl-C and SIGKILL run the installed executable itself.

Ctrl-C is SIGINT sent to the child's own process group (as a terminal does); the child is started
with SIGINT at its default action, since a child of a background job inherits it ignored.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import forkcli

EXE = Path(sys.executable).parent / "layercut"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", "OMP_NUM_THREADS": "1"}


def layercut(*argv, timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The console script's code in a child process forked with the libraries imported (forkcli)."""
    return forkcli.run(argv, env=ENV, cwd=cwd, timeout=timeout)


def start(*argv) -> subprocess.Popen:
    """The console script in a process group of its own, SIGINT at its default action."""
    return subprocess.Popen([str(EXE), *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def ctrl_c(proc: subprocess.Popen) -> tuple[int, str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def lines(text: str) -> list[str]:
    """Every line, blank ones included: "one line" means exactly one."""
    return text.splitlines()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def wait_for(check, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"finished before the event (exit {proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def mapped(proc: subprocess.Popen, name: str) -> bool:
    """Whether the process has `name` memory-mapped (the model's weights: it is loaded)."""
    try:
        return name in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


@pytest.fixture
def big_calib(tmp_path) -> Path:
    """Enough samples that scoring the tiny model one by one takes many seconds."""
    rows = [{"domain": "math" if i % 2 else "general",
             "text": f"Question {i}: what is {i} plus {i}? The cat sat on the warm mat. Answer: {2 * i}." * 4}
            for i in range(6000)]
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- 1. Ctrl-C: exit 130, one line, nothing half-written ---------------------------------------


def test_ctrl_c_during_scoring_exits_130_with_one_line_and_writes_nothing(tiny_text_dir, big_calib, tmp_path):
    out = tmp_path / "runs" / "scores.json"
    proc = start("score", "--model", tiny_text_dir, "--calib", big_calib, "--out", out, "--batch-size", "1")
    wait_for(lambda: mapped(proc, "model.safetensors"), proc=proc)  # loaded: scoring is under way
    time.sleep(1.0)
    code, stdout, stderr = ctrl_c(proc)
    assert code == 130, stderr
    assert lines(stderr) == [f"interrupted: nothing was written to {out} or {out.with_suffix('.csv')}"], stderr
    assert stdout == ""
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_ctrl_c_during_a_sweep_keeps_the_finished_cells_and_says_how_many(tiny_text_dir, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", tiny_text_dir, "--methods", "last,uniform,random", "--budgets", "0:3:1",
            "--tasks", "nll-math,nll-general", "--limit", "4", "--engine", "plain", "--batch-size", "1",
            "--no-report", "--out", out]
    proc = start(*argv)
    log = out / "cells.jsonl"
    wait_for(lambda: log.is_file() and log.read_text().count("\n") >= 2, proc=proc)
    code, _, stderr = ctrl_c(proc)
    assert code == 130, stderr
    kept = [json.loads(line) for line in log.read_text().splitlines()]  # whole lines only
    (line,) = lines(stderr)  # the progress bar goes with Ctrl-C
    assert line == f"interrupted: {len(kept)} cells kept in {out}: rerun with --resume to continue", stderr
    assert "Traceback" not in stderr
    assert hidden(out) == []
    # --resume evaluates only what is missing and ends where an uninterrupted sweep ends
    done = layercut(*argv, "--resume")
    assert done.returncode == 0, done.stderr
    again = [json.loads(line) for line in log.read_text().splitlines()]
    assert again[: len(kept)] == kept and len({r["key"] for r in again}) == len(again)


def test_ctrl_c_before_a_new_sweeps_first_cell_leaves_no_folder(tiny_text_dir, big_calib, tmp_path):
    """`iterative` plans on the calibration set before any cell: stopped there, nothing is kept."""
    out = tmp_path / "sweep"
    proc = start("sweep", "--model", tiny_text_dir, "--methods", "iterative", "--calib", big_calib,
                 "--budgets", "0,4", "--tasks", "nll-math", "--limit", "1", "--out", out)
    wait_for(lambda: mapped(proc, "model.safetensors"), proc=proc)
    time.sleep(1.0)
    code, _, stderr = ctrl_c(proc)
    assert code == 130, stderr
    assert lines(stderr) == [f"interrupted: nothing was written to {out}"], stderr
    assert "Traceback" not in stderr and not out.exists() and hidden(tmp_path) == []


# --- 2. option ranges: exit 2 and one line, never a traceback ----------------------------------


@pytest.mark.parametrize("argv, option, allowed", [
    (["score", "--model", "m", "--calib", "c", "--out", "o", "--batch-size", "0"], "--batch-size", "1 or more"),
    (["score", "--model", "m", "--calib", "c", "--out", "o", "--max-length", "4"], "--max-length", "8 or more"),
    (["heal", "--model", "m", "--out", "o", "--steps", "0"], "--steps", "1 or more"),
    (["sweep", "--model", "m", "--out", "o", "--limit", "0"], "--limit", "1 or more"),
    (["eval", "--model", "m", "--tasks", "nll-math", "--batch-size", "-3"], "--batch-size", "1 or more"),
    (["report", "somewhere", "--replicates", "-1"], "--replicates", "0 or more"),
])
def test_an_option_out_of_range_is_one_line_and_exit_2(argv, option, allowed, tmp_path):
    proc = layercut(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = lines(proc.stderr)
    assert line.startswith("error:") and option in line and f"(allowed: {allowed})" in line, line
    assert "--help" in line and list(tmp_path.iterdir()) == []


def test_usage_errors_are_one_line_too(tmp_path):
    for argv, needle in ((["score", "--model", "m"], "Missing option"), (["score", "--bogus"], "No such option"),
                         (["heal", "--model", "m", "--out", "o", "--steps", "x"], "--steps"),
                         (["no-such-command"], "No such command")):
        proc = subprocess.run([str(EXE), *argv], capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        (line,) = lines(proc.stderr)
        assert line.startswith("error:") and needle in line, (argv, line)


# --- 3. a refused sweep leaves no folder ---------------------------------------------------------


@pytest.fixture(scope="module")
def scores_file(tiny_text_dir, tmp_path_factory) -> Path:
    """Scored once for the module (read only by the tests)."""
    tmp_path = tmp_path_factory.mktemp("scores")
    calib = tmp_path / "c.jsonl"
    calib.write_text("".join(json.dumps({"domain": d, "text": f"The cat {i} sat on the mat. {d}"}) + "\n"
                             for i in range(3) for d in ("math", "general")))
    path = tmp_path / "s.json"
    proc = layercut("score", "--model", tiny_text_dir, "--calib", calib, "--out", path)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.mark.parametrize("change, needle", [
    (["--methods", "math,magic"], "unknown method 'magic'"),
    (["--budgets", "0,-2"], "--budgets '0,-2'"),
    (["--budgets", "0,9"], "budget 9"),
    (["--tasks", "nll-math,nll-klingon"], "unknown task 'nll-klingon'"),
    (["--methods", "math+guard"], "need a probe"),
    (["--methods", "iterative"], "pass --calib"),
    (["--methods", "math,nonmath", "--protect", "0,1,2,3,5"], "budget 2 >= 1 droppable"),
])
def test_a_refused_sweep_leaves_no_folder(change, needle, tiny_text_dir, scores_file, tmp_path):
    out = tmp_path / "runs" / "sweep"
    argv = {"--methods": "math", "--budgets": "0,2", "--tasks": "nll-math"}
    argv.update(dict(zip(change[::2], change[1::2])))
    proc = layercut("sweep", "--model", tiny_text_dir, "--scores", scores_file, "--limit", "1",
                    *[x for kv in argv.items() for x in kv], "--out", out)
    assert proc.returncode == 2, proc.stderr
    (line,) = lines(proc.stderr)
    assert line.startswith("error:") and needle in line, line
    assert not (tmp_path / "runs").exists() and hidden(tmp_path) == []


# --- 4. --resume with changed options ------------------------------------------------------------


def test_resume_refuses_a_changed_option_and_extends_budgets_and_methods(tiny_text_dir, scores_file, tmp_path):
    out = tmp_path / "sweep"
    base = ["sweep", "--model", tiny_text_dir, "--scores", scores_file, "--tasks", "nll-math", "--limit", "2",
            "--no-report", "--out", out]
    proc = layercut(*base, "--methods", "math,last", "--budgets", "0,1")
    assert proc.returncode == 0, proc.stderr
    log = (out / "cells.jsonl").read_text()
    spec = (out / "sweep.json").read_text()
    for change, needle in (
        (["--limit", "3"], "--limit 3 differs from the sweep in"),
        (["--seed", "5"], "--seed 5 differs"),
        (["--alpha", "0.9"], "--alpha 0.9 differs"),
        (["--protect", "none"], "--protect none differs"),
        (["--heal-steps", "1", "--calib", "builtin:text:1"], "differs"),
    ):
        argv = [*base, "--methods", "math,last", "--budgets", "0,1", "--resume"]
        for flag, value in zip(change[::2], change[1::2]):
            i = argv.index(flag) if flag in argv else None
            if i is None:
                argv += [flag, value]
            else:
                argv[i + 1] = value
        proc = layercut(*argv)
        assert proc.returncode == 2, (change, proc.stderr)
        (line,) = lines(proc.stderr)
        assert needle in line and "rerun with" in line, line
        old = {"--limit": "--limit 2", "--seed": "--seed 0", "--alpha": "--alpha 0.5", "--protect": "--protect default"}
        assert old.get(change[0], "") in line, line
    proc = layercut(*base, "--methods", "last", "--budgets", "0,1", "--resume")
    assert proc.returncode == 2 and "leaves out math" in proc.stderr, proc.stderr
    assert (out / "cells.jsonl").read_text() == log and (out / "sweep.json").read_text() == spec

    proc = layercut(*base, "--methods", "math,last,uniform", "--budgets", "0,1,2", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "adding methods uniform; budgets 2 (only their cells run)" in proc.stderr
    new = (out / "cells.jsonl").read_text()
    assert new.startswith(log) and len(new) > len(log)
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["methods"] == ["math", "last", "uniform"] and saved["budgets"] == [0, 1, 2]
    import pandas as pd

    table = pd.read_csv(out / "results.csv")
    assert sorted(set(table["budget"])) == [0, 1, 2] and set(table["method"]) == {"math", "last", "uniform"}


# --- 5. a non-finite score is refused when the file loads ----------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_scores_file_with_nan_is_refused_at_load(bad, scores_file, tmp_path):
    data = json.loads(scores_file.read_text())
    data["domains"]["math"]["cosine"][3] = bad
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))  # json writes NaN / Infinity
    proc = layercut("select", "--scores", broken, "--method", "math", "--budget", "2")
    assert proc.returncode == 2, proc.stderr
    (line,) = lines(proc.stderr)
    assert f"domain 'math' layer 3 has cosine {bad!r}, not a finite number: re-run `layercut score`" in line, line
    assert proc.stdout == ""
    assert not math.isfinite(bad)


# --- 7. temporaries of killed runs ---------------------------------------------------------------


def test_a_killed_prunes_temporary_is_removed_by_the_next_run(tiny_text_dir, tmp_path):
    parent = tmp_path / "models"
    out = parent / "pruned"
    proc = start("prune", "--model", tiny_text_dir, "--drop", "2", "--out", out)
    wait_for(lambda: parent.is_dir() and any(p.name.startswith(".pruned.tmp-") for p in parent.iterdir()),
             proc=proc)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait()
    (left,) = [p for p in parent.iterdir() if p.name.startswith(".pruned.tmp-")]
    assert not out.exists()
    # a live run's temporary (this name, owned by a live process), another output's temporary and
    # one without an owner (an older layercut's) are never removed
    from layercut.io import _host

    dead_pid = left.name[len(".pruned.tmp-"):].split("@")[0]
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        live = parent / f".pruned.tmp-{sleeper.pid}@{_host()}-abcd1234"
        other = parent / f".other.tmp-{dead_pid}@{_host()}-abcd1234"
        old_style = parent / ".pruned.tmp-k2j3h4"
        for path in (live, other, old_style):
            path.mkdir()
        done = layercut("prune", "--model", tiny_text_dir, "--drop", "2", "--out", out)
        assert done.returncode == 0, done.stderr
        notes = [x for x in lines(done.stderr) if x.startswith("note:")]
        assert len(notes) == 2, done.stderr
        assert any(f"removed '{left}'" in n and f"process {dead_pid} is gone" in n for n in notes), notes
        assert any(str(old_style) in n and "not removed" in n for n in notes), notes
        assert not left.exists() and live.is_dir() and other.is_dir() and old_style.is_dir()
        assert (out / "config.json").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()


# --- 9. answers cut at max_new_tokens ------------------------------------------------------------


def test_the_cut_rule_counts_only_answers_that_used_every_token_without_an_end(tiny_text_dir, monkeypatch):
    """An answer is cut when it used all max_new_tokens with no end token and no stop string;
    one that ended (EOS, or padding after it), stopped at a stop string, or was shorter, is not."""
    import torch

    from layercut import models
    from layercut.evaluation import generate as gen
    from layercut.evaluation.batching import Context

    adapter = models.load(str(tiny_text_dir))
    tok = adapter.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    word = tok("cat", add_special_tokens=False)["input_ids"][0]
    stop_ids = tok("\n\n", add_special_tokens=False)["input_ids"]
    rows = [[word, word, word],  # all 3 used, no end: cut
            [word, eos, pad],  # ended
            [word, *stop_ids][:3] + [word] * max(0, 2 - len(stop_ids)),  # reached the stop string
            [word, word, eos]]  # ended on the last token
    prompt = torch.tensor([[word, word]] * 4)

    def fake(adapter, ctxs, prefix_len, prefix_cache, **kwargs):
        assert kwargs["max_new_tokens"] == 3
        return 2, torch.cat([prompt[: len(ctxs)], torch.tensor(rows[: len(ctxs)])], dim=1)

    monkeypatch.setattr(gen, "_generate_batch", fake)
    contexts = [Context(ids=torch.tensor([word, word]))] * 4
    cut: list[bool] = []
    gen.generate(adapter, contexts, 3, ["\n\n"], batch_size=4, truncated=cut)
    assert cut == [True, False, False, False]
    monkeypatch.setattr(gen, "_generate_batch", lambda *a, **k: (2, torch.cat(
        [prompt, torch.tensor([[word, word]] * 4)], dim=1)))  # the batch stopped early: none cut
    gen.generate(adapter, contexts, 3, [], batch_size=4, truncated=cut)
    assert cut == [False] * 4


@pytest.fixture
def short_task(tmp_path) -> Path:
    """A generation task whose answers cannot fit: 2 new tokens, no stop string."""
    docs = [{"id": f"q{i}", "q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(6)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    path = tmp_path / "short.yaml"
    path.write_text("name: short\ndomain: math\nkind: generate\nsource: data.jsonl\n"
                    "prompt: 'Question: {q}\\nAnswer:'\ntarget: '{a}'\nextractor: number\n"
                    "metric: math_equiv\nuntil: []\nmax_new_tokens: 2\nlimit: 6\n")
    return path


def test_eval_and_the_report_show_the_cut_share_and_warn(tiny_text_dir, short_task, tmp_path):
    from layercut import models
    from layercut.evaluation import evaluate, prepare

    adapter = models.load(str(tiny_text_dir))
    details: list = []
    metrics = evaluate(adapter, prepare(str(short_task), adapter), details=details)
    expected = sum(d["truncated"] for d in details) / len(details)
    assert metrics["truncated"] == expected > 0.05  # this seeded model never ends within 2 tokens

    out = tmp_path / "metrics.json"
    proc = layercut("eval", "--model", tiny_text_dir, "--tasks", short_task, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "truncated" in proc.stdout
    (warning,) = [x for x in lines(proc.stderr) if x.startswith("warning:")]
    assert f"{expected:.0%} of the answers stopped at max_new_tokens" in warning
    assert json.loads(out.read_text())[str(short_task)]["truncated"] == expected

    sweep = tmp_path / "sweep"
    proc = layercut("sweep", "--model", tiny_text_dir, "--methods", "last", "--budgets", "0,1",
                    "--tasks", short_task, "--out", sweep)
    assert proc.returncode == 0, proc.stderr
    cells = [json.loads(x) for x in (sweep / "cells.jsonl").read_text().splitlines()]
    assert all("truncated" in c["metrics"] for c in cells)
    report = (sweep / "report" / "report.md").read_text()
    assert "## Answers cut at max_new_tokens" in report and "generation cells cut more than 5%" in report
    assert any(x.startswith("warning:") and "max_new_tokens" in x for x in lines(proc.stderr)), proc.stderr


# --- 6. harness chatter goes to OUT/harness.log --------------------------------------------------


@pytest.mark.parametrize("verbose", [False, True])
def test_harness_output_goes_to_the_sweeps_log_unless_verbose(verbose, tiny_text_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from tests.test_bridges import write_lm_tasks

    tasks = write_lm_tasks(tmp_path / "tasks")
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", tiny_text_dir, "--methods", "last", "--budgets", "0,1", "--tasks",
            "lm-eval:layercut_cloze", "--include-path", tasks, "--limit", "2", "--no-report", "--out", out]
    proc = layercut(*argv, *(["--verbose"] if verbose else []), timeout=600, cwd=tmp_path)  # cwd: not a git repository
    assert proc.returncode == 0, proc.stderr
    err = lines(proc.stderr)
    if verbose:
        assert "Running loglikelihood requests" in proc.stderr and "fatal: not a git repository" in proc.stderr
        assert not (out / "harness.log").exists()
        return
    # layercut's own lines only: the note saying where the rest went, and the progress bar's last state
    assert err[0] == f"note: lm-eval's and lmms-eval's own output goes to {out / 'harness.log'} (--verbose shows it here)"
    assert len(err) == 2 and err[1].startswith("sweep ") and "2/2 evaluations" in err[1], err
    log = (out / "harness.log").read_text()
    assert "Running loglikelihood requests" in log and "fatal: not a git repository" in log
    assert (out / "results.csv").is_file()


def test_eval_harness_output_goes_to_a_log_and_cut_answers_are_counted(tiny_text_dir, tmp_path):
    """`eval --harness lm-eval`: the harness's chatter goes beside --out, the console keeps
    layercut's lines, and a generation task records the share of answers cut at max_gen_toks."""
    pytest.importorskip("lm_eval")
    from tests.test_bridges import write_lm_tasks

    tasks = write_lm_tasks(tmp_path / "tasks")
    gen = (tasks / "cloze.yaml").read_text().replace("layercut_cloze", "layercut_cloze_gen")
    gen = gen.replace("output_type: multiple_choice", "output_type: generate_until")
    gen = gen.replace('doc_to_choice: "{{choices}}"\ndoc_to_target: label',
                      'doc_to_target: "{{choices[label]}}"\ngeneration_kwargs:\n  max_gen_toks: 3\n  until: ["<never>"]')
    gen = gen.replace("metric: acc", "metric: exact_match")
    (tasks / "cloze_gen.yaml").write_text(gen)
    out = tmp_path / "metrics.json"
    proc = layercut("eval", "--model", tiny_text_dir, "--harness", "lm-eval", "--tasks",
                    "layercut_cloze_gen,layercut_cloze", "--include-path", tasks, "--limit", "4",
                    "--out", out, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = out.with_name("metrics.json.harness.log")
    err = lines(proc.stderr)
    assert f"note: lm-eval's own output goes to {log} (--verbose shows it here)" in err
    assert not any("Running" in line or "fatal:" in line for line in err), err
    assert "fatal: not a git repository" in log.read_text() and "Running generate_until requests" in log.read_text()
    metrics = json.loads(out.read_text())
    # a random tiny model never meets "<never>" within 3 tokens (EOS aside): every answer is cut
    assert metrics["layercut_cloze_gen"]["truncated"] == 1.0
    assert "truncated" not in metrics["layercut_cloze"]  # a loglikelihood task generates nothing
    assert "stopped at max_new_tokens" in proc.stderr  # the > 5 % warning


# --- 8. help and tables at 80 columns ------------------------------------------------------------

COMMANDS = ["score", "probe", "select", "prune", "heal", "sweep", "report", "eval", "tasks", "models", "methods",
            "demo", "calib build", "zoo list", "zoo build", "zoo train", "zoo eval"]


def test_every_commands_help_reads_at_80_columns():
    """No name or value cut to '…', every option named in full, no line wider than 80; the
    sweep's options in panels."""
    from layercut.cli.app import app

    import typer

    click_app = typer.main.get_command(app)
    for name in COMMANDS:
        proc = layercut(*name.split(), "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        text = proc.stdout
        assert "…" not in text, (name, text)
        assert max(len(line) for line in text.splitlines()) <= 80, name
        command = click_app
        for part in name.split():
            command = command.commands[part]
        for param in command.params:
            for opt in param.opts:
                assert opt in text, (name, opt)
    sweep_help = layercut("sweep", "--help").stdout
    for panel in ("What to sweep", "How methods choose", "How it runs", "Output"):
        assert f"─ {panel} ─" in sweep_help


def test_the_vlm_demos_comparison_reads_at_80_columns():
    """The side-by-side comparison of `demo --vlm`: every value whole (folded, never '…'), no
    line wider than 80."""
    import io

    from rich.console import Console

    from layercut.demo import comparison_tables

    rows = [{"series": f"{task}:accuracy", "model": model,
             "regime 1": "k = 0–4: bi, block, general, iterative, last, math, mixed, random, spacing",
             "regime 2": "k = 6–8: angular, math-guard, uniform", "regime 3": "not found",
             "H1": "supported (P 0.97)", "H2": "not supported (P 0.12)", "H3": "supported (P 0.88)",
             "mean r, k = 2 / 4 / 8": "0.98 / 0.91 / 0.55"}
            for task in ("math-vision", "general-vision") for model in ("tiny-llava", "tiny-llava-nodrop")]
    console = Console(width=80, file=io.StringIO(), record=True)
    tables = comparison_tables(rows)
    assert len(tables) == 2
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for row in rows:
        for word in " ".join(row.values()).split():  # a wrapped cell breaks between words only
            assert word in text, word


def test_the_demos_budget_tables_are_split_to_fit_80_columns():
    import io

    import pandas as pd
    from rich.console import Console

    from layercut.demo import VLM_METHODS, _budget_grids

    df = pd.DataFrame([{"budget": k, "method": m, "value": 0.4412} for k in range(0, 15, 2) for m in VLM_METHODS])
    console = Console(width=80, file=io.StringIO(), record=True)
    grids = _budget_grids(df, "math-vision choice accuracy (40 held-out questions; higher is better)", 80)
    for grid in grids:
        console.print(grid)
    text = console.export_text()
    assert len(grids) == 2 and "…" not in text and text.count("0.44") == 8 * len(VLM_METHODS)
    assert all(m in text for m in VLM_METHODS)
    assert len(_budget_grids(df, "t", 200)) == 1


# --- the README as the user's page ---------------------------------------------------------------


def test_the_readme_is_short_and_every_page_and_image_it_links_exists():
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert len(readme.splitlines()) <= 400  # a page, not a manual: the rest is in docs/
    assert "## Reliability: what each fault gives" in readme
    for page in ("install", "scale", "models", "regimes", "vlm", "engine", "probe", "harnesses", "devices",
                 "healing", "benchmarks", "layout"):
        assert f"(docs/{page}.md)" in readme, page
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith("http"):
                continue
            assert (doc.parent / target).exists(), (doc.name, target)


def test_a_rambling_answers_huge_number_is_just_wrong():
    """Longer answers bring longer numbers: exact comparison, no float overflow."""
    from layercut.evaluation.extract import is_equiv

    assert is_equiv("1" + "0" * 400, "12") is False
    assert is_equiv("12.0000001", "12") and is_equiv("1/2", "0.5") and not is_equiv("12.1", "12")
