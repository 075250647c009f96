"""The command line end to end on tiny saved models, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercut import cli


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `layercut ARGV` in-process through the real entry point."""
    old = sys.argv
    sys.argv = ["layercut", *map(str, argv)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def image_calib(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    rows = [{"domain": "math", "text": f"How many bars? {i}", "image": f"im{i}.png"} for i in range(3)]
    rows += [{"domain": "general", "text": "What is in the picture? A cat.", "image": "im0.png"}]
    rows += [{"domain": "general", "text": "A line of plain text."}]
    return write_jsonl(tmp_path / "vcalib.jsonl", rows)


def test_score_select_prune_text_model(tiny_text_dir, text_calib, tmp_path, capsys):
    scores = tmp_path / "runs" / "scores.json"
    code, out, err = run(["score", "--model", tiny_text_dir, "--calib", text_calib, "--out", scores], capsys)
    assert code == 0, err
    data = json.loads(scores.read_text())
    assert data["num_layers"] == 6 and set(data["domains"]) == {"math", "general"}
    assert len(data["domains"]["math"]["cosine"]) == 6
    assert scores.with_suffix(".csv").is_file()
    code, out, err = run(["select", "--scores", scores, "--method", "math", "--budget", "2"], capsys)
    assert code == 0, err
    drop = [int(x) for x in out.strip().split(",")]
    assert len(drop) == 2 and 0 not in drop and 5 not in drop
    pruned = tmp_path / "pruned"
    code, out, err = run(["prune", "--model", tiny_text_dir, "--scores", scores, "--method", "math",
                          "--budget", "2", "--out", pruned, "--mergekit"], capsys)
    assert code == 0, err
    recipe = json.loads((pruned / "layercut_recipe.json").read_text())
    assert recipe["drop"] == drop and recipe["verify"]["max_abs_logit_diff"] == 0.0
    assert recipe["scores_sha256"]
    assert (pruned / "tokenizer.json").is_file() and (pruned / "mergekit.yaml").is_file()
    assert json.loads((pruned / "config.json").read_text())["num_hidden_layers"] == 4


def test_iterative_needs_and_uses_the_model(tiny_text_dir, text_calib, capsys):
    code, out, err = run(["select", "--model", tiny_text_dir, "--calib", text_calib,
                          "--method", "iterative", "--budget", "2"], capsys)
    assert code == 0, err
    assert len(out.strip().split(",")) == 2


def test_vlm_scoring_through_the_processor(tiny_llava_dir, image_calib, tmp_path, capsys):
    scores = tmp_path / "s.json"
    code, out, err = run(["score", "--model", tiny_llava_dir, "--calib", image_calib, "--out", scores,
                          "--scope", "image"], capsys)
    assert code == 0, err
    data = json.loads(scores.read_text())
    # 16 image tokens per image (32 px / patch 8); the text-only sample has none
    assert data["domains"]["math"]["tokens"][0] == 3 * 16
    assert data["domains"]["general"]["tokens"][0] == 16
    pruned = tmp_path / "p"
    code, out, err = run(["prune", "--model", tiny_llava_dir, "--drop", "2,3", "--out", pruned], capsys)
    assert code == 0, err
    recipe = json.loads((pruned / "layercut_recipe.json").read_text())
    assert recipe["verify"]["probe_has_image"] is True
    assert (pruned / "processor_config.json").is_file() or (pruned / "preprocessor_config.json").is_file()


def bad_calib_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = {"domain": "math", "text": "1 plus 1 is 2."}
    return {
        "empty": (write_jsonl(tmp_path / "empty.jsonl", []), "empty"),
        "corrupt": (write_jsonl(tmp_path / "corrupt.jsonl", [good, "{not json"]), "line 2"),
        "missing image": (
            write_jsonl(tmp_path / "missing.jsonl", [good, {"domain": "math", "text": "x", "image": "nope.png"}]),
            "line 2",
        ),
        "corrupt image": (
            write_jsonl(tmp_path / "bad.jsonl", [{"domain": "math", "text": "x", "image": "broken.png"}]),
            "line 1",
        ),
        "no domain": (write_jsonl(tmp_path / "nodomain.jsonl", [{"text": "x"}]), "line 1"),
        "no file": (tmp_path / "absent.jsonl", "not found"),
    }


@pytest.mark.parametrize("case", ["empty", "corrupt", "missing image", "corrupt image", "no domain", "no file"])
def test_bad_calibration_files(case, tiny_text_dir, tmp_path, capsys):
    calib, needle = bad_calib_cases(tmp_path)[case]
    out = tmp_path / "o" / "scores.json"
    code, _, err = run(["score", "--model", tiny_text_dir, "--calib", calib, "--out", out], capsys)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not out.with_suffix(".csv").exists()


@pytest.fixture
def scores_file(tiny_text_dir, text_calib, tmp_path, capsys) -> Path:
    path = tmp_path / "s.json"
    assert run(["score", "--model", tiny_text_dir, "--calib", text_calib, "--out", path], capsys)[0] == 0
    return path


def test_bad_arguments(tiny_text_dir, scores_file, text_calib, tmp_path, capsys):
    bert = tmp_path / "bert"
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32).save_pretrained(bert)
    existing = tmp_path / "exists"
    existing.mkdir()
    out = tmp_path / "new"
    cases = [
        (["prune", "--model", bert, "--drop", "1", "--out", out], "unsupported architecture 'bert'"),
        (["select", "--scores", scores_file, "--method", "math", "--budget", "4"], "budget"),
        (["select", "--scores", scores_file, "--method", "math", "--budget", "6"], "budget"),
        (["prune", "--model", tiny_text_dir, "--scores", scores_file, "--method", "math", "--budget", "9",
          "--out", out], "budget"),
        (["prune", "--model", tiny_text_dir, "--drop", "0,2", "--out", out], "protected"),
        (["prune", "--model", tiny_text_dir, "--drop", "2", "--out", existing], "already exists"),
        (["prune", "--model", tiny_text_dir, "--drop", "2,x", "--out", out], "--drop"),
        (["score", "--model", tiny_text_dir, "--calib", text_calib, "--out", out / "s.json", "--scope", "pixels"],
         "unknown scope"),
        (["select", "--scores", scores_file, "--method", "nonsense", "--budget", "1"], "unknown method"),
        (["select", "--scores", tmp_path / "nope.json", "--method", "math", "--budget", "1"], "not found"),
        (["prune", "--model", tmp_path / "no-model", "--drop", "1", "--out", out], "cannot read a model config"),
        (["calib", "build", "--out", text_calib], "already exists"),
    ]
    for argv, needle in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert needle in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists(), argv
        assert list(existing.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_entry_point_exit_code(tmp_path):
    """The installed console script turns a LayercutError into one stderr line and exit 2."""
    exe = Path(sys.executable).parent / "layercut"
    proc = subprocess.run([str(exe), "select", "--scores", str(tmp_path / "x.json"), "--method", "math",
                           "--budget", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_iterative_reports_progress_and_takes_the_guard(tiny_text_dir, text_calib):
    """`select(progress=)` counts every candidate evaluation of the greedy rounds; the guarded
    form of `iterative` gets its loss too and never drops a guarded layer."""
    from layercut import api

    seen = []
    sel = api.select(None, "iterative", 3, model=str(tiny_text_dir), calib=str(text_calib), protect="none",
                     progress=lambda done, total: seen.append((done, total)))
    assert seen == [(6, 15), (11, 15), (15, 15)]  # 6 layers: 6 + 5 + 4 candidates
    from layercut.probe import DamageProfile

    profile = DamageProfile(model="m", num_layers=6, baseline={"all": 1.0},
                            nll={"all": [1.0] * 6}, protected=[], flagged=[sel.drop[0]])
    guarded = api.select(None, "iterative+guard", 2, model=str(tiny_text_dir), calib=str(text_calib),
                         protect="none", probe=profile)
    assert sel.drop[0] not in guarded.drop and len(guarded.drop) == 2


def writing_commands(tiny_text_dir: Path, text_calib: Path, scores: Path, sweep_dir: Path) -> dict[str, list]:
    """Every command that writes, with its output path left as OUT."""
    model = ["--model", tiny_text_dir]
    return {
        "score": ["score", *model, "--calib", text_calib, "--out", "OUT"],
        "probe": ["probe", *model, "--calib", text_calib, "--out", "OUT"],
        "select": ["select", "--scores", scores, "--method", "math", "--budget", "1", "--out", "OUT"],
        "prune": ["prune", *model, "--drop", "2", "--out", "OUT"],
        "heal": ["heal", *model, "--data", text_calib, "--steps", "1", "--out", "OUT"],
        "sweep": ["sweep", *model, "--methods", "last", "--budgets", "0,1", "--tasks", "nll-math", "--limit", "1",
                  "--out", "OUT"],
        "report": ["report", sweep_dir, "--out", "OUT"],
        "eval": ["eval", *model, "--tasks", "nll-math", "--limit", "1", "--out", "OUT"],
        "calib build": ["calib", "build", "--out", "OUT"],
        "demo": ["demo", "--out", "OUT"],
        "zoo train": ["zoo", "train", "tiny-llava", "--out", "OUT"],
        "zoo eval": ["zoo", "eval", "tiny-llava", "--out", "OUT"],
    }


@pytest.mark.parametrize("where", ["under /proc", "under a file"])
def test_an_out_that_cannot_be_written_is_one_line_for_every_writing_command(
        where, tiny_text_dir, text_calib, scores_file, tmp_path, capsys):
    """A read-only place (here /proc, which takes no new files even for root, or a path through a
    regular file) fails before any work: one line naming the fix, exit 2, nothing left behind."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    parent = Path("/proc/layercut-no-such-folder") if where == "under /proc" else blocker
    sweep_dir = tmp_path / "a-sweep"
    sweep_dir.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, argv in writing_commands(tiny_text_dir, text_calib, scores_file, sweep_dir).items():
        argv = [parent / "out" if a == "OUT" else a for a in argv]
        code, _, err = run(argv, capsys)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "cannot write" in lines[0] and "choose an --out" in lines[0], (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(sweep_dir.iterdir()) == []


# --- --allow: lifting a family guard (Mllama's cross-attention layers) -----------------------


def test_allow_lifts_the_cross_attention_guard_in_prune_select_and_eval(tiny_mllama_dir, tmp_path, capsys):
    """Without --allow the cross-attention layers (2, 4 of 7) stay; with it they may go. The
    scores (text and image samples) are made without it: the choice is the selection's."""
    model = ["--model", tiny_mllama_dir]
    code, _, err = run(["prune", *model, "--drop", "2", "--out", tmp_path / "no"], capsys)
    assert code == 2 and "layer 2 is protected" in err and not (tmp_path / "no").exists()
    code, _, err = run(["prune", *model, "--drop", "2,3", "--allow", "cross-attention", "--out", tmp_path / "o"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "config.json").read_text())["text_config"]["cross_attention_layers"] == [2]
    assert json.loads((tmp_path / "o" / "layercut_recipe.json").read_text())["allowed"] == ["cross-attention"]

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "im.png")
    calib = write_jsonl(tmp_path / "calib.jsonl", [{"domain": "text", "text": f"The cat number {i} sat."} for i in range(2)]
                        + [{"domain": "image", "text": "What is it?", "image": "im.png"}] * 2)
    scores = tmp_path / "scores.json"
    code, out, err = run(["score", *model, "--calib", calib, "--out", scores], capsys)
    assert code == 0, err
    assert "guarded (--allow)" in out and "cross-attention" in out  # the table says which layers they are
    assert "note: domain 'text': layer(s) 2, 4 never ran" in err
    select = ["select", "--scores", scores, "--method", "uniform", "--budget", "6", "--protect", "none"]
    code, _, err = run(select, capsys)
    assert code == 2 and "budget 6 >= 5 droppable" in err
    code, out, err = run([*select, "--allow", "cross-attention"], capsys)
    assert code == 0, err
    assert {2, 4} & {int(i) for i in out.strip().split(",")}

    sweep = ["sweep", *model, "--methods", "uniform", "--budgets", "5", "--protect", "none", "--tasks", "nll-math",
             "--limit", "1", "--no-report"]
    code, _, err = run([*sweep, "--out", tmp_path / "sweep-no"], capsys)
    assert code == 2 and "budget 5 >= 5 droppable" in err
    code, _, err = run([*sweep, "--allow", "cross-attention", "--out", tmp_path / "sweep"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["allow"] == ["cross-attention"]
    import pandas as pd

    (drop,) = set(pd.read_csv(tmp_path / "sweep" / "results.csv")["drop"])
    assert {2, 4} & {int(i) for i in str(drop).split(",")}

    evaluate = ["eval", *model, "--tasks", "nll-math", "--limit", "2", "--drop", "4"]
    code, _, err = run(evaluate, capsys)
    assert code == 2 and "layer 4 is protected" in err
    code, out, err = run([*evaluate, "--allow", "cross-attention"], capsys)
    # the table's title wraps where the model's path is long (a pytest-xdist worker's tmp folder)
    assert code == 0 and "without layers [4]" in " ".join(out.split()), err


@pytest.mark.parametrize("command", ["probe", "select", "prune", "sweep", "eval"])
def test_an_unknown_guard_name_is_one_line_before_any_weight_loads(command, tmp_path, capsys):
    """The folder holds a config and no weights: the guard names are checked first."""
    from tests.tiny import tiny_config

    tiny_config("mllama").save_pretrained(tmp_path / "m")
    model, out = ["--model", tmp_path / "m"], tmp_path / "out"
    argv = {
        "probe": ["probe", *model, "--calib", "builtin:text:1", "--out", out],
        "select": ["select", *model, "--method", "uniform", "--budget", "1"],
        "prune": ["prune", *model, "--drop", "1", "--out", out],
        "sweep": ["sweep", *model, "--methods", "last", "--budgets", "0,1", "--tasks", "nll-math", "--out", out],
        "eval": ["eval", *model, "--tasks", "nll-math"],
    }[command]
    code, _, err = run([*argv, "--allow", "cross-attention,vision"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "has no guarded layers called 'vision' (its guards: cross-attention)" in lines[0]
    assert not out.exists()
