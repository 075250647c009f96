"""What is special in the families of issue 14 (built by tests/tiny_vlm.py; the generic surgery,
scoring, engine and evaluation tests run on them too): Mllama's cross-attention layers, renumbered
when layers go, protected unless the user allows dropping them (a choice made at selection time),
left out on text batches (scoring and the engine follow), and its per-token cross-attention mask
through evaluation; Qwen3-VL-MoE's deepstack layers and MoE layers dropped whole, with any sparse
step; the anyres families' image tokens over many tiles; finite scores for the text and image
scopes of every new family."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open

from layercut import models, selection, surgery
from layercut.data.encode import Batch
from layercut.errors import LayercutError
from layercut.models import Adapter, auto_class
from layercut.scoring import LayerScores, score
from tests.tiny import MORE_VLM_IDS, build_tiny, make_tiny, tiny_config
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


def test_text_batches_leave_the_cross_attention_layers_unobserved_and_blocks_see_them_pass_through():
    """Mllama skips its cross-attention layers without an image: a text batch adds nothing to their
    sums (the image batches of the same domain still do), a text-only domain reports them, and
    the block distances treat a skipped layer as what it was, the identity."""
    tiny, adapter, inputs = mllama()
    text = tiny.inputs(batch=2, with_image=False)
    batches = [Batch("general", text, 2), Batch("image", inputs, 2), Batch("mixed", text, 2),
               Batch("mixed", inputs, 2)]
    scores = score(adapter, batches, scope="last")
    general, image, mixed = (scores.domains[d] for d in ("general", "image", "mixed"))
    assert general.tokens == [2, 2, 0, 2, 0, 2, 2] and image.tokens == [2] * 7
    assert mixed.tokens == [4, 4, 2, 4, 2, 4, 4]
    assert general.cosine[2] == general.cosine[4] == 0.0 and 0 < image.cosine[2] < 1
    assert scores.meta["unobserved"] == {"general": [2, 4]}
    (line,) = scores.unobserved_report()
    assert "domain 'general': layer(s) 2, 4 never ran" in line and "\n" not in line
    d = general.block_distance  # d[l][n-1]: layer 2 passes its input on, so d(2, 1) = 0 and d(1, 2) = d(1, 1)
    same = pytest.approx(0.0, abs=1e-3)  # arccos near 1 in float32
    assert d[2][0] == same and d[1][1] == pytest.approx(d[1][0]) and d[1][0] == pytest.approx(general.angular[1])
    assert d[4][0] == same and d[3][1] == pytest.approx(d[3][0]) and image.block_distance[2][0] > 0.01
    assert all(math.isfinite(v) for dom in scores.domains.values() for row in dom.block_distance for v in row)


def test_a_skip_the_family_does_not_declare_is_still_an_error():
    tiny, adapter, _ = mllama()
    undeclared = Adapter(model=tiny.model, family=dataclasses.replace(adapter.family, skipped=lambda c, i: set()))
    with pytest.raises(LayercutError, match="decoder layer 2 was skipped") as err:
        score(undeclared, [Batch("d", tiny.inputs(batch=2, with_image=False), 2)])
    assert "\n" not in str(err.value)


def test_the_guard_is_chosen_at_selection_time_from_scores_made_without_it(tmp_path):
    """Scores record the guarded layers by guard name: the same file selects with and without
    them; a file from before guards were recorded selects as it did and cannot lift one."""
    from layercut import api

    _, adapter, inputs = mllama()
    scores = score(adapter, [Batch("d", inputs, 2)])
    assert scores.meta["family_protected"] == [] and scores.meta["family_guards"] == {"cross-attention": [2, 4]}
    with pytest.raises(LayercutError, match="budget 6 >= 5 droppable"):
        api.select(scores, "d", 6, protect="none")
    kept = api.select(scores, "d", 4, protect="none")
    assert not set(kept.drop) & {2, 4} and kept.protect == [2, 4]
    lifted = api.select(scores, "d", 6, protect="none", allow="cross-attention")
    assert set(lifted.drop) & {2, 4} and lifted.protect == []
    top = sorted(range(7), key=lambda i: -scores.domains["d"].cosine[i])[:4]
    assert sorted(api.select(scores, "d", 4, protect="none", allow=["cross-attention"]).drop) == sorted(top)
    with pytest.raises(LayercutError, match=r"Mllama\) has no guarded layers called 'vision'"):
        api.select(scores, "d", 1, allow="vision")
    # a model given alongside lifts its own guard
    assert api.select(scores, "d", 6, protect="none", model=Adapter.wrap(adapter.model, allow="cross-attention")).drop
    old = LayerScores.from_dict(scores.to_dict())
    del old.meta["family_guards"]
    old.meta["family_protected"] = [2, 4]  # what older versions wrote: guards merged in
    assert api.select(old, "d", 4, protect="none").drop == kept.drop
    with pytest.raises(LayercutError, match="records no guarded layers.*re-run `layercut score`"):
        api.select(old, "d", 4, protect="none", allow="cross-attention")


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


# --- Mllama through evaluation: its per-token cross_attention_mask ---------------------------


def mllama_tasks(adapter) -> dict:
    from layercut.evaluation import TASKS, prepare

    return {name: prepare(dataclasses.replace(TASKS[name], limit=4), adapter)
            for name in ("math-vision", "math-vision-nll", "nll-math")}


def test_mllama_image_tasks_pad_and_extend_the_cross_attention_mask(tiny_mllama_dir):
    """The processor's [1, T, images, tiles] mask is kept per token: padded with zeros in a batch,
    its last row repeated over a continuation. Batch size 1 and 3, candidates sharing the
    context's cache or not, all equal one plain forward of context + candidate per row."""
    from layercut.evaluation import evaluate
    from layercut.evaluation.teacher import score_continuations, teacher_rows

    adapter = models.load(tiny_mllama_dir)
    tasks = mllama_tasks(adapter)
    choice = tasks["math-vision"]
    ctx = choice.items[0].context
    assert ctx.tokens["cross_attention_mask"].shape == (len(ctx.ids), 1, 2) and choice.shared_prefix
    image_id = adapter.image_token_id
    for name, prepared in tasks.items():
        one, three = evaluate(adapter, prepared, batch_size=1), evaluate(adapter, prepared, batch_size=3)
        assert all(math.isfinite(v) for v in one.values()), name
        assert one == pytest.approx(three, rel=1e-6), name
    plain = dataclasses.replace(choice, shared_prefix=False)
    assert evaluate(adapter, plain, batch_size=3) == evaluate(adapter, choice, batch_size=1)
    rows = teacher_rows(choice)[:4]
    with torch.no_grad():
        got = [lp for lp, _ in score_continuations(adapter, rows, batch_size=4)]
    for (c, cont), lp in zip(rows, got):
        ids = torch.cat([c.ids, cont])[None]
        # every token from the image on sees the image's real tiles (the processor's rule)
        seen = ((ids == image_id).cumsum(1) > 0).long()[:, :, None, None] * c.extras["aspect_ratio_mask"][:, None]
        with torch.no_grad():
            out = adapter.model(input_ids=ids, cross_attention_mask=seen, **c.extras).logits[0]
        logp = torch.log_softmax(out.float(), -1)
        T = len(c.ids)
        assert lp == pytest.approx(sum(float(logp[T - 1 + j, cont[j]]) for j in range(len(cont))), abs=1e-4)


def test_the_engine_runs_mllama_text_rows_without_the_cross_attention_layers(tiny_mllama_dir):
    """On text rows Mllama leaves its cross-attention layers out; the shared-work engine does too,
    and every drop set (a cross-attention layer among them) gets the plain view's numbers."""
    from layercut import engine
    from layercut.evaluation import evaluate

    adapter = models.load(tiny_mllama_dir, allow="cross-attention")
    for name, prepared in mllama_tasks(adapter).items():
        work = engine.SharedWork.for_task(adapter, prepared, batch_size=2)
        drops = [(), (1,), (2,), (3, 4)]
        for drop, metrics, _ in work.run(drops):
            with surgery.skipped(adapter, drop):
                assert metrics == pytest.approx(evaluate(adapter, prepared, batch_size=2), rel=1e-5), (name, drop)


def test_qwen3_vl_moe_with_a_sparse_step_keeps_each_layer_kind_through_a_prune(tmp_path):
    """decoder_sparse_step 2 makes layers 1, 3, 5 sparse by index: renumbered, they would change
    kind. The adapter lists the dense layers instead (step 1), the same model, and the list is
    renumbered, so the reload equals the pruned model."""
    config = tiny_config("qwen3_vl_moe", num_layers=7)
    config.text_config.decoder_sparse_step = 2
    tiny = build_tiny("qwen3_vl_moe", config)
    layers = tiny.model.get_decoder().layers
    assert [is_sparse(layer) for layer in layers] == [i in (1, 3, 5) for i in range(7)]
    adapter = Adapter.wrap(tiny.model)
    assert adapter.text_config.decoder_sparse_step == 1 and adapter.text_config.mlp_only_layers == [0, 2, 4, 6]
    rebuilt = auto_class(adapter.family).from_config(adapter.model.config)  # the rewritten config: same model
    assert [is_sparse(layer) for layer in rebuilt.get_decoder().layers] == [i in (1, 3, 5) for i in range(7)]
    rebuilt.load_state_dict(tiny.model.state_dict())  # strict: the same parameters
    inputs = adapter.complete_inputs(tiny.inputs(batch=2))
    recipe = surgery.prune(adapter, [3], tmp_path / "o", inputs=inputs)
    assert recipe.verify["max_abs_logit_diff"] == 0.0
    assert adapter.text_config.mlp_only_layers == [0, 2, 3, 5]  # old 0, 2, 4, 6
    reloaded = auto_class(adapter.family).from_pretrained(tmp_path / "o").eval()
    assert [is_sparse(layer) for layer in reloaded.get_decoder().layers] == [i in (1, 4) for i in range(6)]
    assert torch.equal(logits(reloaded, inputs), logits(tiny.model, inputs))
