"""Streaming scores equal a plain computation from stored hidden states, on text and VLM models."""

from __future__ import annotations

import math

import pytest
import torch

from layercut.errors import LayercutError
from layercut.models import Adapter
from layercut.data.encode import Batch
from layercut.scoring import SCOPES, LayerScores, score
from tests.tiny import FAMILY_IDS, VISION_IDS, make_tiny


def stored_hidden_states(model, layers, inputs):
    """Every layer's full input and output, kept (what the streaming pass avoids)."""
    xs, ys = {}, {}

    def hook(i):
        def f(module, args, kwargs, output):
            xs[i] = (args[0] if args else kwargs["hidden_states"]).detach().double()
            ys[i] = (output[0] if isinstance(output, tuple) else output).detach().double()

        return f

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    with torch.no_grad():
        model(**inputs, use_cache=False)
    for h in handles:
        h.remove()
    return [xs[i] for i in range(len(layers))], [ys[i] for i in range(len(layers))]


def reference(adapter, inputs, scope):
    """Cosine/angular per layer and last-token block distances, by explicit loops in float64."""
    ids = inputs["input_ids"]
    attn = inputs["attention_mask"].bool()
    image = torch.zeros_like(attn)
    if adapter.image_token_id is not None:
        image = ids == adapter.image_token_id
    B, T = ids.shape
    last = [max(t for t in range(T) if attn[b, t]) for b in range(B)]
    keep = torch.zeros_like(attn)
    for b in range(B):
        for t in range(T):
            if not attn[b, t]:
                continue
            if scope == "all" or (scope == "text" and not image[b, t]) or (
                scope == "image" and image[b, t]
            ) or (scope == "last" and t == last[b]):
                keep[b, t] = True
    xs, ys = stored_hidden_states(adapter.model, adapter.layers, inputs)
    cos, ang, n = [], [], []
    for x, y in zip(xs, ys):
        c = torch.nn.functional.cosine_similarity(x[keep], y[keep], dim=-1)
        cos.append(c.mean().item())
        ang.append((torch.arccos(c.clamp(-1, 1)) / math.pi).mean().item())
        n.append(int(keep.sum()))
    L = len(xs)
    states = xs + [ys[-1]]
    block = []
    for l in range(L):
        row = []
        for m in range(l + 1, L + 1):
            d = [
                math.acos(max(-1.0, min(1.0, torch.nn.functional.cosine_similarity(
                    states[l][b, last[b]], states[m][b, last[b]], dim=0).item()))) / math.pi
                for b in range(B)
            ]
            row.append(sum(d) / B)
        block.append(row)
    return cos, ang, n, block


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_streaming_scores_equal_stored_hidden_states(family):
    tiny = make_tiny(family)
    adapter = Adapter.wrap(tiny.model)
    inputs = adapter.complete_inputs(tiny.inputs(batch=3, with_image=tiny.vision, pad=True))
    assert not inputs["attention_mask"].bool().all(), "the batch must contain padding"
    scopes = SCOPES if tiny.vision else ("all", "text", "last")
    for scope in scopes:
        got = score(adapter, [Batch("d", inputs, 3)], scope=scope)
        cos, ang, n, block = reference(adapter, inputs, scope)
        d = got.domains["d"]
        assert d.tokens == n, scope
        assert d.zero_norm == [0] * len(n)
        assert d.cosine == pytest.approx(cos, abs=1e-5), scope
        assert d.angular == pytest.approx(ang, abs=1e-5), scope
        for row, ref_row in zip(d.block_distance, block):
            assert row == pytest.approx(ref_row, abs=1e-5)


def test_padding_is_excluded_not_just_masked():
    """Scores of a padded batch equal the token-weighted scores of its rows run alone."""
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, with_image=False, pad=True)
    together = score(adapter, [Batch("d", inputs, 2)]).domains["d"]
    rows = []
    for b in range(2):
        keep = inputs["attention_mask"][b].bool()
        one = {k: v[b : b + 1][:, keep] for k, v in inputs.items()}
        rows.append(score(adapter, [Batch("d", one, 1)]).domains["d"])
    total = [r.tokens[0] for r in rows]
    pooled = [
        sum(r.cosine[i] * r.tokens[i] for r in rows) / sum(total) for i in range(len(together.cosine))
    ]
    assert together.cosine == pytest.approx(pooled, abs=1e-5)
    assert together.tokens[0] == sum(total)


def test_domains_and_combined_pooling():
    tiny = make_tiny("qwen2")
    adapter = Adapter.wrap(tiny.model)
    a = tiny.inputs(batch=2, with_image=False, seed=1)
    b = tiny.inputs(batch=3, with_image=False, seed=2)
    scores = score(adapter, [Batch("math", a, 2), Batch("general", b, 3)])
    assert set(scores.domains) == {"math", "general"}
    assert scores.domains["math"].samples == 2 and scores.domains["general"].samples == 3
    both = score(adapter, [Batch("x", a, 2), Batch("x", b, 3)]).domains["x"]
    pooled = scores.combined()
    assert pooled.cosine == pytest.approx(both.cosine, abs=1e-6)
    assert pooled.tokens == both.tokens
    for r1, r2 in zip(pooled.block_distance, both.block_distance):
        assert r1 == pytest.approx(r2, abs=1e-6)


def test_zero_norm_tokens_are_skipped_and_counted():
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, with_image=False, pad=False)
    # Zero one token's embedding: layer 0 sees a zero-norm input there.
    emb = tiny.model.get_input_embeddings()
    tok = int(inputs["input_ids"][0, 3])
    with torch.no_grad():
        saved = emb.weight[tok].clone()
        emb.weight[tok] = 0
    try:
        s = score(adapter, [Batch("d", inputs, 2)]).domains["d"]
    finally:
        with torch.no_grad():
            emb.weight[tok] = saved
    zeros = int((inputs["input_ids"] == tok).sum())
    assert s.zero_norm[0] == zeros
    assert s.tokens[0] == inputs["input_ids"].numel() - zeros
    assert all(math.isfinite(v) for v in s.cosine + s.angular)


def test_bf16_model_accumulates_in_float():
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, with_image=False)
    fp32 = score(adapter, [Batch("d", inputs, 2)]).domains["d"]
    tiny.model.to(torch.bfloat16)
    bf16 = score(adapter, [Batch("d", inputs, 2)]).domains["d"]
    assert all(math.isfinite(v) for v in bf16.cosine)
    assert bf16.cosine == pytest.approx(fp32.cosine, abs=0.05)


def test_scores_save_load_round_trip(tmp_path):
    tiny = make_tiny("gemma3_text")
    adapter = Adapter.wrap(tiny.model)
    scores = score(adapter, [Batch("math", tiny.inputs(batch=2, with_image=False), 2)], scope="last")
    scores.meta["note"] = "x"
    scores.save(tmp_path / "s.json")
    again = LayerScores.load(tmp_path / "s.json")
    assert again == scores
    frame = scores.to_frame()
    assert len(frame) == scores.num_layers and set(frame.columns) >= {"domain", "layer", "cosine"}


def test_block_tokens_scope_and_bad_choices():
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, with_image=False)
    s = score(adapter, [Batch("d", inputs, 2)], block_tokens="scope").domains["d"]
    assert s.block_samples == int(inputs["attention_mask"].sum())
    with pytest.raises(LayercutError, match="scope"):
        score(adapter, [Batch("d", inputs, 2)], scope="pixels")
    with pytest.raises(LayercutError, match="block"):
        score(adapter, [Batch("d", inputs, 2)], block_tokens="first")
    with pytest.raises(LayercutError, match="no token fell in scope"):
        score(adapter, [Batch("d", inputs, 2)], scope="image")


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_image_scope_counts_only_image_tokens(family):
    tiny = make_tiny(family)
    adapter = Adapter.wrap(tiny.model)
    inputs = adapter.complete_inputs(tiny.inputs(batch=2))
    s = score(adapter, [Batch("d", inputs, 2)], scope="image").domains["d"]
    n_image = int(((inputs["input_ids"] == adapter.image_token_id) & inputs["attention_mask"].bool()).sum())
    assert n_image > 0 and s.tokens[0] == n_image


def test_vision_ids_cover_the_vlm_families():
    assert set(VISION_IDS) <= set(FAMILY_IDS)
