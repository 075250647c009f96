"""What is special in the families of issue 14 (built by tests/tiny_vlm.py; the generic surgery,
scoring, engine and evaluation tests run on them too): Mllama's cross-attention layers, renumbered
when layers go and protected unless the user allows dropping them; Qwen3-VL-MoE's deepstack layers
and MoE layers dropped whole; the anyres families' image tokens over many tiles; finite scores for
the text and image scopes of every new family."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from layercut import models, selection, surgery
from layercut.data.encode import Batch
from layercut.errors import LayercutError
from layercut.models import Adapter, auto_class
from layercut.scoring import score
from tests.tiny import MORE_VLM_IDS, make_tiny
from tests.tiny_vlm import ANYRES_IDS, anyres_grid, cross_attention_mask


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def greedy(model, inputs, n: int = 6) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


# --- Mllama: cross-attention layers 2 and 4 of 7 ---------------------------------------------


def mllama(allow: str = "") -> tuple:
    tiny = make_tiny("mllama", num_layers=7)
    inputs = tiny.inputs(batch=2)
    inputs["cross_attention_mask"] = cross_attention_mask(inputs)  # as MllamaProcessor makes it
    return tiny, Adapter.wrap(tiny.model, allow=allow), inputs


def cross_layers(adapter) -> list[int]:
    """Where the decoder really has cross-attention layers (what a reload would rebuild from)."""
    return [i for i, layer in enumerate(adapter.layers) if hasattr(layer, "cross_attn")]


def test_mllama_cross_attention_layers_are_protected_by_default(tmp_path):
    _, adapter, _ = mllama()
    assert cross_layers(adapter) == adapter.text_config.cross_attention_layers == [2, 4]
    assert adapter.protected_layers() == {2, 4} and adapter.default_protect() == {0, 2, 4, 6}
    for protect in (None, set()):  # --protect none does not release them
        with pytest.raises(LayercutError, match="layer 4 is protected"):
            surgery.prune(adapter, [4], tmp_path / "o", protect=protect)
    assert not (tmp_path / "o").exists() and adapter.num_layers == 7
    never = selection.protect_set(7, "none", adapter.protected_layers())
    assert not set(selection.select(None, "uniform", 4, num_layers=7, protect=never).drop) & {2, 4}


def test_dropping_layers_before_a_cross_attention_layer_moves_its_index(tmp_path):
    tiny, adapter, inputs = mllama()
    surgery.prune(adapter, [1, 3], tmp_path / "o", inputs=inputs)
    # kept 0 2 4 5 6: the cross-attention layers 2 and 4 are now 1 and 2, in the config, in the
    # decoder's own copy (its forward reads that one) and in every layer_idx
    assert adapter.text_config.cross_attention_layers == adapter.decoder.cross_attention_layers == [1, 2]
    assert cross_layers(adapter) == [1, 2]
    assert [layer.layer_idx for layer in adapter.layers] == list(range(5))
    saved = json.loads((tmp_path / "o" / "config.json").read_text())["text_config"]
    assert saved["cross_attention_layers"] == [1, 2] and saved["num_hidden_layers"] == 5
    reloaded = auto_class(adapter.family).from_pretrained(tmp_path / "o").eval()
    assert torch.equal(logits(reloaded, inputs), logits(tiny.model, inputs))
    tokens = greedy(tiny.model, inputs)  # cached decoding: the cross-attention cache is renumbered too
    assert torch.equal(tokens, greedy(reloaded, inputs)) and len(set(tokens.flatten().tolist())) >= 3


def test_an_allowed_cross_attention_layer_leaves_the_list(tmp_path):
    tiny, adapter, inputs = mllama(allow="cross-attention")
    assert adapter.protected_layers() == set() and adapter.default_protect() == {0, 6}
    recipe = surgery.prune(adapter, [2, 3], tmp_path / "o", inputs=inputs)
    assert adapter.text_config.cross_attention_layers == adapter.decoder.cross_attention_layers == [2]
    assert cross_layers(adapter) == [2]  # the old layer 4
    assert recipe.allowed == ["cross-attention"]
    assert "cross-attention" in (tmp_path / "o" / "README.md").read_text()
    reloaded = auto_class(adapter.family).from_pretrained(tmp_path / "o").eval()
    assert torch.equal(logits(reloaded, inputs), logits(tiny.model, inputs))
    assert torch.equal(greedy(tiny.model, inputs), greedy(reloaded, inputs))
    other = dict(tiny.inputs_other_image(batch=2), cross_attention_mask=inputs["cross_attention_mask"])
    assert not torch.allclose(logits(reloaded, inputs), logits(reloaded, other)), "one cross layer still sees"


def test_without_its_cross_attention_layers_mllama_is_blind_and_the_view_restores():
    tiny, adapter, inputs = mllama(allow=["cross-attention"])
    other = dict(tiny.inputs_other_image(batch=2), cross_attention_mask=inputs["cross_attention_mask"])
    before = logits(tiny.model, inputs)
    with surgery.skipped(adapter, [2, 4]):
        assert adapter.text_config.cross_attention_layers == adapter.decoder.cross_attention_layers == []
        assert torch.equal(logits(tiny.model, inputs), logits(tiny.model, other))
    assert adapter.text_config.cross_attention_layers == adapter.decoder.cross_attention_layers == [2, 4]
    assert torch.equal(logits(tiny.model, inputs), before)


def test_guard_names_are_checked_in_one_line(tmp_path):
    tiny = make_tiny("mllama")
    with pytest.raises(LayercutError, match=r"no guarded layers called 'vision' \(its guards: cross-attention\)"):
        Adapter.wrap(tiny.model, allow="vision")
    with pytest.raises(LayercutError, match="its guards: none"):
        Adapter.wrap(make_tiny("llama").model, allow=["cross-attention"])
    tiny.model.config.save_pretrained(tmp_path)  # a config, no weights: the check comes first
    with pytest.raises(LayercutError, match="no guarded layers called 'x'"):
        models.load(tmp_path, allow="cross-attention, x")
    adapter = models.load_model(Adapter.wrap(tiny.model), allow="cross-attention")
    assert adapter.allowed == {"cross-attention"} and adapter.protected_layers() == set()


def test_mllama_scores_both_kinds_of_layer_and_its_image_scope_is_the_image_token():
    tiny, adapter, inputs = mllama()
    for scope in ("all", "text", "image", "last"):
        d = score(adapter, [Batch("d", inputs, 2)], scope=scope).domains["d"]
        assert all(math.isfinite(v) for v in d.cosine + d.angular), scope
        assert min(d.tokens) > 0 and len(set(d.tokens)) == 1, scope  # cross layers 2, 4 included
    # no image features sit in the text stream: the image scope is the one <|image|> token per row
    image = score(adapter, [Batch("d", inputs, 2)], scope="image").domains["d"]
    assert image.tokens[0] == 2 == int(adapter.image_mask(inputs["input_ids"]).sum())
    # on text alone the model skips its cross-attention layers: a one-line error, no traceback
    with pytest.raises(LayercutError, match="skipped") as err:
        score(adapter, [Batch("d", tiny.inputs(batch=2, with_image=False), 2)])
    assert "\n" not in str(err.value)


# --- Qwen3-VL-MoE: deepstack after layers 0-2; sparse MoE layers, dense layer 4 ---------------


def is_sparse(layer) -> bool:
    return hasattr(layer.mlp, "experts")


@pytest.mark.parametrize("drop, dense_after", [([3], [3]), ([4], [])])
def test_qwen3_vl_moe_layers_go_whole_and_deepstack_stays(drop, dense_after, tmp_path):
    tiny = make_tiny("qwen3_vl_moe", num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    assert adapter.protected_layers() == {0, 1, 2}
    with pytest.raises(LayercutError, match="protected"):
        surgery.prune(adapter, [1], tmp_path / "no", protect=set())
    assert [not is_sparse(layer) for layer in adapter.layers] == [i == 4 for i in range(7)]
    dropped = sum(p.numel() for p in adapter.layers[drop[0]].parameters())  # router + experts
    inputs = adapter.complete_inputs(tiny.inputs(batch=2))
    recipe = surgery.prune(adapter, drop, tmp_path / "o", inputs=inputs)
    assert recipe.parameters_before - recipe.parameters_after == dropped
    assert adapter.text_config.mlp_only_layers == dense_after
    assert [not is_sparse(layer) for layer in adapter.layers] == [i in dense_after for i in range(6)]
    with safe_open(tmp_path / "o" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not any(".layers.6." in k for k in keys)
    assert sum(k.endswith("mlp.experts.gate_up_proj") for k in keys) == 6 - len(dense_after)


# --- LLaVA-NeXT / LLaVA-OneVision: a base tile and a 2 x 2 grid of tiles per image -----------


@pytest.mark.parametrize("family", ANYRES_IDS)
def test_anyres_image_tokens_cover_every_tile(family):
    tiny = make_tiny(family)
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2)
    assert anyres_grid(tiny.model.config) == (2, 2) and inputs["pixel_values"].shape[:2] == (2, 5)
    mask = adapter.image_mask(inputs["input_ids"])
    assert mask.sum(1).tolist() == [14, 14] == [tiny.image_tokens] * 2
    with torch.no_grad():  # the model's own packing of the tiles fills exactly the masked positions
        feats = tiny.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
    assert sum(f.shape[0] for f in feats.pooler_output) == int(mask.sum())
    image = score(adapter, [Batch("d", inputs, 2)], scope="image").domains["d"]
    assert image.tokens[0] == 28
    base = logits(tiny.model, inputs)
    for tile in (0, 4):  # the base tile and the last grid tile both reach the text
        changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
        changed["pixel_values"][:, tile] = 0.0
        assert (logits(tiny.model, changed)[:, -1] - base[:, -1]).abs().max() > 1e-3, tile


# --- every new family ----------------------------------------------------------------------


@pytest.mark.parametrize("family", MORE_VLM_IDS)
def test_text_and_image_scopes_give_finite_scores(family):
    tiny = make_tiny(family)
    adapter = Adapter.wrap(tiny.model)
    inputs = adapter.complete_inputs(tiny.inputs(batch=2))
    n_image = int((adapter.image_mask(inputs["input_ids"]) & inputs["attention_mask"].bool()).sum())
    assert n_image == 2 * tiny.image_tokens > 0
    for scope, want in (("text", int(inputs["attention_mask"].sum()) - n_image), ("image", n_image)):
        d = score(adapter, [Batch("d", inputs, 2)], scope=scope).domains["d"]
        assert d.tokens == [want] * adapter.num_layers, scope
        assert all(math.isfinite(v) for v in d.cosine + d.angular + sum(d.block_distance, [])), scope
