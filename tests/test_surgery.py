"""Pruned checkpoints reload equal, generate the same tokens, and still see the image."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from layercut import card, models, surgery
from layercut.errors import LayercutError
from layercut.models import Adapter, auto_class
from tests.tiny import FAMILY_IDS, make_tiny


def drop_set(adapter: Adapter) -> list[int]:
    """First unprotected, a middle and the second-to-last layer (the issue's three positions)."""
    L = adapter.num_layers
    protect = adapter.default_protect()
    free = [i for i in range(L) if i not in protect]
    middle = free[len(free) // 2]
    drop = sorted({free[0], middle, L - 2})
    assert not set(drop) & protect
    return drop


def greedy(model, inputs, n=8):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[:, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_prune_reload_equal_generate_same(family, tmp_path):
    tiny = make_tiny(family, num_layers=7)
    adapter = Adapter.wrap(tiny.model, source=family)
    inputs = adapter.complete_inputs(tiny.inputs(batch=2, with_image=tiny.vision))
    with torch.no_grad():
        before = tiny.model(**inputs, use_cache=False).logits
    drop = drop_set(adapter)
    recipe = surgery.prune(adapter, drop, tmp_path / "out", inputs=inputs, mergekit=True)
    assert recipe.drop == drop and adapter.num_layers == 7 - len(drop)
    assert recipe.verify["max_abs_logit_diff"] == 0.0
    assert adapter.text_config.num_hidden_layers == 7 - len(drop)

    reloaded, info = auto_class(adapter.family).from_pretrained(tmp_path / "out", output_loading_info=True)
    reloaded.eval()
    assert info["missing_keys"] == [] or not info["missing_keys"]
    with torch.no_grad():
        a = tiny.model(**inputs, use_cache=False).logits
        b = reloaded(**inputs, use_cache=False).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, before), "dropping layers must change the output"

    tokens = greedy(tiny.model, inputs)
    assert torch.equal(tokens, greedy(reloaded, inputs))
    assert len(set(tokens.flatten().tolist())) >= 3, "degenerate tiny model: tokens would match by luck"
    if tiny.vision:
        other = adapter.complete_inputs(tiny.inputs_other_image(batch=2, with_image=True))
        with torch.no_grad():
            c = reloaded(**other, use_cache=False).logits
        assert not torch.allclose(b, c), "the image must still change the pruned model's output"

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    text = saved.get("text_config", saved)
    assert text["num_hidden_layers"] == 7 - len(drop)
    for key in ("layer_types",):
        if key in text and text[key] is not None:
            assert len(text[key]) == 7 - len(drop)
    card = (tmp_path / "out" / "README.md").read_text()
    assert ", ".join(map(str, drop)) in card
    assert "passthrough" in (tmp_path / "out" / "mergekit.yaml").read_text()


@pytest.mark.parametrize("family", ["qwen3", "llava"])  # tied embeddings; a VLM
def test_reload_check_holds_one_copy_and_leaves_the_model_usable(family, tmp_path, monkeypatch):
    tiny = make_tiny(family, num_layers=6)
    adapter = Adapter.wrap(tiny.model, source=family)
    inputs = adapter.complete_inputs(tiny.inputs(batch=2, with_image=tiny.vision))
    cls = auto_class(adapter.family)
    real, held = cls.from_pretrained, []

    def spy(klass, *args, **kwargs):  # what the in-memory model holds while the copy loads
        held.append(sum(p.untyped_storage().nbytes() for p in tiny.model.parameters()))
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    tied = tiny.model.get_output_embeddings().weight is tiny.model.get_input_embeddings().weight
    surgery.prune(adapter, [2, 3], tmp_path / "out", inputs=inputs)
    assert held == [0], "the reload check must not hold two copies of the weights"
    monkeypatch.undo()

    assert (tiny.model.get_output_embeddings().weight is tiny.model.get_input_embeddings().weight) == tied
    reloaded = cls.from_pretrained(tmp_path / "out").eval()
    mine, theirs = tiny.model.state_dict(), reloaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        assert torch.equal(tiny.model(**inputs, use_cache=False).logits, reloaded(**inputs, use_cache=False).logits)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "mistral", "qwen3"])
def test_kv_cache_generation_equals_full_recompute(family):
    """With renumbered layer_idx, cached decoding equals recomputing the whole prefix each step."""
    tiny = make_tiny(family, num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    surgery.drop_layers(adapter, [1, 3, 5])
    inputs = tiny.inputs(batch=1, with_image=False, pad=False)
    cached = greedy(tiny.model, inputs, n=10)
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(10):
            nxt = tiny.model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(cached, ids[:, inputs["input_ids"].shape[1]:])


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_naive_deletion_is_wrong_where_layer_types_differ(family):
    """Why the config must change too: deleting modules alone shifts sliding/full attention."""
    tiny = make_tiny(family, num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    types = adapter.text_config.layer_types
    drop = next([i] for i in range(1, 6) if types[i] != types[i + 1])
    inputs = tiny.inputs(batch=2, with_image=False)
    with surgery.skipped(adapter, drop):
        with torch.no_grad():
            right = tiny.model(**inputs, use_cache=False).logits
    layers = adapter.layers
    adapter.decoder.layers = torch.nn.ModuleList([layers[i] for i in range(7) if i not in drop])
    adapter.text_config.num_hidden_layers = 6  # lists left alone: the naive way
    with torch.no_grad():
        naive = tiny.model(**inputs, use_cache=False).logits
    assert not torch.allclose(right, naive)


def test_skipped_view_restores_the_model_exactly():
    tiny = make_tiny("qwen2", num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, with_image=False)
    cfg = adapter.text_config
    snapshot = (list(cfg.layer_types), cfg.max_window_layers, cfg.num_hidden_layers)
    with torch.no_grad():
        before = tiny.model(**inputs).logits
        with surgery.skipped(adapter, [2, 4]):
            assert adapter.num_layers == 5
            assert [l.self_attn.layer_idx for l in adapter.layers] == list(range(5))
        after = tiny.model(**inputs).logits
    assert torch.equal(before, after)
    assert (list(cfg.layer_types), cfg.max_window_layers, cfg.num_hidden_layers) == snapshot
    assert [l.self_attn.layer_idx for l in adapter.layers] == list(range(7))


def test_qwen3_vl_deepstack_layers_are_protected(tmp_path):
    tiny = make_tiny("qwen3_vl", num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    assert adapter.protected_layers() == {0, 1, 2}
    with pytest.raises(LayercutError, match="protected"):
        surgery.prune(adapter, [1], tmp_path / "o", protect=set())
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "drop, message",
    [([0], "protected"), ([6], "protected"), ([9], "does not exist"), ([2, 2], "twice"),
     ([1, 2, 3, 4, 5, 6, 0], "leave none")],
)
def test_bad_drop_lists(drop, message, tmp_path):
    tiny = make_tiny("llama", num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    protect = None if message == "protected" else set()
    with pytest.raises(LayercutError, match=message):
        surgery.prune(adapter, drop, tmp_path / "o", protect=protect)
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []
    assert adapter.num_layers == 7


def test_existing_output_is_refused(tmp_path):
    tiny = make_tiny("llama", num_layers=7)
    adapter = Adapter.wrap(tiny.model)
    (tmp_path / "o").mkdir()
    with pytest.raises(LayercutError, match="already exists"):
        surgery.prune(adapter, [3], tmp_path / "o")
    assert adapter.num_layers == 7


def test_recipe_round_trip_and_mergekit_ranges(tmp_path):
    r = surgery.Recipe(source="m", drop=[3, 5], kept=[0, 1, 2, 4, 6], num_layers_before=7,
                       parameters_before=10, parameters_after=8, params={"alpha": 0.5})
    r.save(tmp_path / "r.json")
    assert surgery.Recipe.load(tmp_path / "r.json") == r
    assert card.kept_ranges(r.kept) == [(0, 3), (4, 5), (6, 7)]
    assert "layer_range: [4, 5]" in card.mergekit_yaml(r)


def test_tokenizer_files_are_copied_verbatim(tiny_text_dir, tmp_path):
    """Re-saving would rewrite them in the running transformers' dialect; the source's bytes
    (whatever class its release names) are what clients of the pruned model expect."""
    src = tmp_path / "src"
    shutil.copytree(tiny_text_dir, src)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # a class 5.x would not write back
    (src / "tokenizer_config.json").write_text(json.dumps(config, indent=3) + "\n")
    adapter = models.load(str(src))
    surgery.prune(adapter, [2], tmp_path / "out")
    names = sorted(p.name for p in src.iterdir() if p.name in surgery.PROCESSOR_FILES)
    assert "tokenizer_config.json" in names and "tokenizer.json" in names
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes(), name


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_the_pruned_config_is_the_sources_file_with_only_depth_edited(family, tmp_path):
    """Every key and value of the source's config.json is kept but the depth fields (edited as the
    in-memory config was) and the RoPE keys transformers 4.x reads, added beside `rope_parameters`."""
    tiny = make_tiny(family, num_layers=7)
    src = tmp_path / "src"
    tiny.model.save_pretrained(src)
    source = json.loads((src / "config.json").read_text())
    source["layercut_test_marker"] = {"kept": [1, 2]}  # a key no transformers version writes
    (src / "config.json").write_text(json.dumps(source, indent=2))
    adapter = models.load(str(src))
    drop = drop_set(adapter)
    inputs = adapter.complete_inputs(tiny.inputs(batch=2, with_image=tiny.vision))  # the folder has no tokenizer
    recipe = surgery.prune(adapter, drop, tmp_path / "out", inputs=inputs)
    assert recipe.verify["max_abs_logit_diff"] == 0.0 and recipe.verify["missing_keys"] == 0
    pruned = json.loads((tmp_path / "out" / "config.json").read_text())
    assert list(pruned)[: len(source)] == list(source), "the source's keys, in its order"
    nested = "text_config" in source
    sections = [(source, pruned)] + ([(source["text_config"], pruned["text_config"])] if nested else [])
    kept = [i for i in range(7) if i not in drop]
    for before, after in sections:
        added = set(after) - set(before)
        assert added <= {"rope_theta", "rope_scaling", "rope_local_base_freq"}, added
        for key, value in before.items():
            if key in surgery.depth_fields(adapter) or (nested and before is source and key == "text_config"):
                continue  # the text config is compared as its own section
            assert after[key] == value, (key, value, after[key])
        rope = before.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in before:
            assert after["rope_theta"] == rope["rope_theta"]
    text_before, text_after = sections[-1]
    assert text_after["num_hidden_layers"] == 7 - len(drop)
    if isinstance(text_before.get("layer_types"), list):
        assert text_after["layer_types"] == [text_before["layer_types"][i] for i in kept]
    assert pruned["layercut_test_marker"] == {"kept": [1, 2]}


def test_transformers4_keys_for_each_rope_layout():
    from layercut.models.compat import transformers4_keys

    assert transformers4_keys({"rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}}) == {
        "rope_parameters": {"rope_theta": 1e5, "rope_type": "default"}, "rope_theta": 1e5}
    llama3 = {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}
    got = transformers4_keys({"rope_parameters": dict(llama3)})
    assert got["rope_theta"] == 5e5 and got["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0,
                                                                "low_freq_factor": 1.0}
    mrope = transformers4_keys({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default",
                                                    "mrope_section": [16, 24, 24]}})
    assert mrope["rope_scaling"] == {"rope_type": "default", "mrope_section": [16, 24, 24]}
    gemma = transformers4_keys({"rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                                    "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}})
    assert (gemma["rope_theta"], gemma["rope_local_base_freq"]) == (1e6, 1e4) and "rope_scaling" not in gemma
    kept = transformers4_keys({"rope_theta": 7.0, "rope_parameters": {"rope_theta": 1e5}})
    assert kept["rope_theta"] == 7.0, "a key the file already has is left alone"
    assert transformers4_keys({"hidden_size": 8}) == {"hidden_size": 8}


def test_a_folder_without_tokenizer_files_has_no_tokenizer_and_still_prunes(tmp_path):
    """transformers 5 builds a Qwen2 tokenizer of one special token from a folder without tokenizer
    files; taken as the model's, it encodes the reload check's text to nothing (a torch error)."""
    tiny = make_tiny("qwen2", num_layers=7)
    tiny.model.save_pretrained(tmp_path / "src")
    adapter = models.load(str(tmp_path / "src"))
    assert adapter.tokenizer is None
    recipe = surgery.prune(adapter, [3], tmp_path / "out")  # the check runs on fixed token ids
    assert recipe.verify["max_abs_logit_diff"] == 0.0 and recipe.verify["missing_keys"] == 0

