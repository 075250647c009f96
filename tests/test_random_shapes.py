"""`random:NAME`: seeded random weights of a real model shape load, score and prune like any
checkpoint, and an unknown shape is one line naming the known ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layercut import api, models
from layercut.errors import LayercutError
from layercut.models import shapes

NAME = "qwen2.5-0.5b-instruct"  # the smallest text shape: ~1 GB in bf16


def test_unknown_shape_is_one_line():
    with pytest.raises(LayercutError, match="known shapes are .*qwen2.5-7b-instruct") as err:
        api.resolve_model("random:qwen-9000")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_random_shape_scores_and_prunes_at_real_size(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERCUT_CACHE", str(tmp_path / "cache"))
    folder = Path(api.resolve_model(f"random:{NAME}"))
    saved = json.loads((folder / "config.json").read_text())
    real = shapes.fields(NAME)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_window_layers"):
        assert saved[key] == real[key], key
    assert saved["dtype"] == "bfloat16"
    # what transformers 4.x and llama.cpp's converter read: the RoPE base, a tokenizer class they know
    assert saved["rope_theta"] == saved["rope_parameters"]["rope_theta"]
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    adapter = api.load_model(f"random:{NAME}", "bf16")
    assert abs(models.parameter_count(adapter.model) / shapes.parameters(NAME) - 1) < 0.02
    ids = adapter.tokenizer("Depth pruning at real size.")["input_ids"]
    assert max(ids) < real["vocab_size"] and len(ids) > 3
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"domain": d, "text": t * 4}) + "\n" for d, t in
                             [("math", "12 plus 30 is 42. "), ("general", "The river runs to the sea. ")]))
    scores = api.score(adapter, str(calib), max_length=64)
    assert scores.num_layers == 24
    assert all(torch.isfinite(torch.tensor(d.cosine)).all() for d in scores.domains.values())
    recipe = api.prune(adapter, out=tmp_path / "pruned", drop=[5, 20])
    assert recipe.verify["max_abs_logit_diff"] == 0.0 and recipe.verify["missing_keys"] == 0
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["max_window_layers"] == 21 - 2  # both dropped layers were below it
