"""The tiny test models themselves: they run, they are seeded, and their quirks are really active."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests import tiny
from tests.tiny import FAMILY_IDS, SLIDING_IDS, VISION_IDS, make_tiny

_CACHE: dict[str, tiny.Tiny] = {}


def cached(family_id: str) -> tiny.Tiny:
    """A shared 6-layer model for tests that do not modify it."""
    if family_id not in _CACHE:
        _CACHE[family_id] = make_tiny(family_id)
    return _CACHE[family_id]


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, new: int = 8) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_forward_with_padding_and_image(family_id):
    t = cached(family_id)
    assert t.vision == (family_id in VISION_IDS)
    assert t.model.dtype == torch.float32 and not t.model.training
    inputs = t.inputs()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    # left padding: rows of different lengths, real tokens flush right
    lengths = mask.sum(1)
    assert lengths.unique().numel() == ids.shape[0] and (mask == 0).any()
    assert (mask[:, -1] == 1).all() and (mask.diff(dim=1) >= 0).all()
    assert (ids[mask == 0] == tiny.PAD).all()
    # text tokens avoid every special id; each row holds exactly one image's worth of image tokens
    image = ids == tiny.IMAGE
    structural = (ids == tiny.BOS) | (ids == tiny.VISION_START) | (ids == tiny.VISION_END)
    text = ids[(mask == 1) & ~image & ~structural]
    assert ((text >= tiny.TEXT_LO) & (text < tiny.TEXT_HI)).all()
    assert (image.sum(1) == t.image_tokens).all()
    assert (t.image_tokens > 0) == t.vision
    for name in ("mm_token_type_ids", "token_type_ids"):
        if name in inputs:
            assert torch.equal(inputs[name], image.long())
    out = logits(t.model, inputs)
    assert out.shape == (*ids.shape, tiny.VOCAB)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_text_only_and_unpadded_inputs(family_id):
    t = cached(family_id)
    text_only = t.inputs(batch=3, with_image=False)
    assert "pixel_values" not in text_only and not (text_only["input_ids"] == tiny.IMAGE).any()
    assert torch.isfinite(logits(t.model, text_only)).all()
    unpadded = t.inputs(batch=3, pad=False)
    assert (unpadded["attention_mask"] == 1).all()
    assert torch.isfinite(logits(t.model, unpadded)).all()


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_inputs_are_deterministic(family_id):
    t = cached(family_id)
    a, b = t.inputs(seed=3), t.inputs(seed=3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(t.inputs(seed=4)["input_ids"], a["input_ids"])
    other = t.inputs_other_image(seed=3)
    assert other.keys() == a.keys()
    for k in a:
        if k == "pixel_values":
            assert a[k].shape == other[k].shape and not torch.equal(a[k], other[k])
        else:
            assert torch.equal(a[k], other[k])


@pytest.mark.parametrize("family_id", VISION_IDS)
def test_image_changes_the_output(family_id):
    t = cached(family_id)
    inputs, other = t.inputs(), t.inputs_other_image()
    diff = (logits(t.model, inputs)[:, -1] - logits(t.model, other)[:, -1]).abs().amax(-1)
    assert (diff > 1e-2).all(), diff
    tokens, other_tokens = greedy(t.model, inputs), greedy(t.model, other)
    assert tokens.shape == other_tokens.shape == (2, 8)
    # every family, every row: the greedy continuation depends on the image
    assert all(not torch.equal(a, b) for a, b in zip(tokens, other_tokens))


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_greedy_generation_is_not_degenerate(family_id):
    t = cached(family_id)
    tokens = greedy(t.model, t.inputs())
    assert tokens.shape == (2, 8)
    assert max(len(set(row.tolist())) for row in tokens) >= 3, tokens
    suppressed = set(t.model.generation_config.suppress_tokens)
    assert {tiny.PAD, tiny.IMAGE}.issubset(suppressed)
    assert not set(tokens.flatten().tolist()) & suppressed


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_seeded(family_id):
    a = make_tiny(family_id, seed=0).model.state_dict()
    b = cached(family_id).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = make_tiny(family_id, seed=1).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_layer_count_and_auto_class(family_id, tmp_path):
    t = make_tiny(family_id, num_layers=10)
    text = t.model.config.get_text_config(decoder=True)
    assert len(t.model.get_decoder().layers) == text.num_hidden_layers == 10
    if getattr(text, "layer_types", None) is not None:
        assert len(text.layer_types) == 10
    inputs = t.inputs()
    expected = logits(t.model, inputs)
    assert torch.isfinite(expected).all()
    # what from_pretrained picks is the class make_tiny built, and the reload is exact
    t.model.save_pretrained(tmp_path)
    auto = transformers.AutoModelForImageTextToText if t.vision else transformers.AutoModelForCausalLM
    reloaded, info = auto.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
    assert type(reloaded) is type(t.model)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(logits(reloaded.eval(), inputs), expected)


@pytest.mark.parametrize("family_id", SLIDING_IDS)
def test_sliding_window_is_active(family_id):
    t = cached(family_id)
    text = t.model.config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    if family_id != "mistral":  # Mistral slides on every layer and has no layer_types
        assert {"sliding_attention", "full_attention"} <= set(layer_types)
    inputs = t.inputs()
    assert inputs["attention_mask"].sum(1).min() > 2 * text.sliding_window
    # same weights, window wider than any sequence: the output must change
    wide = tiny.build_tiny(family_id, tiny.tiny_config(family_id, window=1000), seed=0)
    real = inputs["attention_mask"] == 1
    diff = (logits(t.model, inputs) - logits(wide.model, inputs))[real].abs().max()
    assert diff > 1e-2


def test_qwen3_vl_deepstack_is_active():
    t = make_tiny("qwen3_vl")
    vision = t.model.config.vision_config
    assert len(vision.deepstack_visual_indexes) == 3
    assert len(set(vision.deepstack_visual_indexes)) == 3  # three distinct vision layers feed it
    assert max(vision.deepstack_visual_indexes) < vision.depth
    inputs = t.inputs()
    before = logits(t.model, inputs)
    mergers = t.model.model.visual.deepstack_merger_list
    assert len(mergers) == 3
    with torch.no_grad():  # deepstack features become zero: injection adds nothing
        for merger in mergers:
            merger.linear_fc2.weight.zero_()
            merger.linear_fc2.bias.zero_()
    assert (logits(t.model, inputs) - before).abs().max() > 1e-2


def test_gemma3_token_type_ids_matter():
    # image tokens attend to each other bidirectionally only when token_type_ids are given
    t = cached("gemma3")
    inputs = t.inputs()
    without = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    assert (logits(t.model, inputs) - logits(t.model, without)).abs().max() > 1e-3


@pytest.mark.parametrize("family_id", [f for f in VISION_IDS if f.startswith("qwen")])
def test_qwen_vl_mm_token_type_ids_matter(family_id):
    t = cached(family_id)
    inputs = t.inputs()
    wrong = dict(inputs, mm_token_type_ids=torch.zeros_like(inputs["mm_token_type_ids"]))
    assert (logits(t.model, inputs) - logits(t.model, wrong)).abs().max() > 1e-2
