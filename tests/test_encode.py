"""Samples become model inputs the way the format promises: raw text, chat template, processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from layercut import models
from layercut.data import Sample
from layercut.data.encode import encode, encode_batches
from layercut.errors import LayercutError


def test_text_is_raw_and_messages_use_the_chat_template(tiny_text_dir):
    adapter = models.load(str(tiny_text_dir))
    tok = adapter.tokenizer
    raw = encode(adapter, [Sample("d", text="A cat sat on the mat.")])
    assert raw["input_ids"][0].tolist() == tok("A cat sat on the mat.")["input_ids"]
    msgs = [{"role": "user", "content": "A cat sat on the mat."}]
    chat = encode(adapter, [Sample("d", messages=msgs)])
    expected = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert chat["input_ids"][0].tolist() == expected
    assert tok.convert_tokens_to_ids("<|im_start|>") in expected


def test_batches_group_by_domain_and_pad(tiny_text_dir):
    adapter = models.load(str(tiny_text_dir))
    samples = [Sample("math", text="1 plus 1 is 2."), Sample("general", text="A cat."),
               Sample("math", text="What is the value of the tallest bar? The answer is 7.")]
    batches = list(encode_batches(adapter, samples, batch_size=8))
    assert [(b.domain, b.samples) for b in batches] == [("math", 2), ("general", 1)]
    mask = batches[0].inputs["attention_mask"]
    assert mask.shape[0] == 2 and not mask.bool().all()


def test_images_go_through_the_processor(tiny_llava_dir, tmp_path):
    adapter = models.load(str(tiny_llava_dir))
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(tmp_path / "a.png")
    out = encode(adapter, [Sample("d", text="What is here?", images=[tmp_path / "a.png"])])
    assert out["pixel_values"].shape[-2:] == (32, 32)
    assert int((out["input_ids"] == adapter.image_token_id).sum()) == 16
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And here?"}]}]
    out2 = encode(adapter, [Sample("d", messages=msgs, images=[tmp_path / "a.png"])])
    assert int((out2["input_ids"] == adapter.image_token_id).sum()) == 16
    with torch.no_grad():
        assert torch.isfinite(adapter.model(**out2).logits).all()


def test_images_need_a_processor(tiny_text_dir, tmp_path):
    adapter = models.load(str(tiny_text_dir))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(LayercutError, match="no image processor"):
        encode(adapter, [Sample("d", text="x", images=[tmp_path / "a.png"])])
