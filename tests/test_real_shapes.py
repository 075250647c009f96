"""Every family's real configuration, pruned at full size on the meta device (no weights allocated).

For each shape under layercut/models/shapes/: build the model from its config on "meta", check the
parameter count against the published one and the family's protected layers, drop a mix of layer
kinds (sliding / full attention, below / above Qwen's max_window_layers, a Mllama cross-attention
layer once allowed, MoE layers), then check the surgery exactly: layer list, per-layer lists,
index lists, max_window_layers, every layer_idx, the config's save/reload, a fresh model built from
the reloaded config (same weights, same shapes: what a reload of the checkpoint needs), and the
model card and mergekit recipe of the Recipe.
"""

from __future__ import annotations

import json
import re
import tomllib
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig

from layercut.errors import LayercutError
from layercut.models import (
    FAMILIES,
    Adapter,
    auto_class,
    family_for,
    parameter_count,
    shapes,
)
from layercut.surgery import Recipe, check_drop, drop_layers, mergekit_yaml, model_card

NAMES = shapes.names()
PER_LAYER = ("layer_types", "mlp_layer_types")


def meta_adapter(name: str) -> Adapter:
    """The model of a real shape on the meta device: every parameter has a shape, none has memory."""
    cfg = shapes.config(name)
    with torch.device("meta"):
        model = auto_class(family_for(cfg)).from_config(cfg)
    return Adapter.wrap(model, source=shapes.shape(name)["source"])


def layer_param_counts(adapter: Adapter) -> list[int]:
    return [sum(p.numel() for p in layer.parameters()) for layer in adapter.layers]


def choose_drop(adapter: Adapter) -> list[int]:
    """A few droppable layers that mix the kinds this shape has."""
    tc, n = adapter.text_config, adapter.num_layers
    free = [i for i in range(n) if i not in adapter.default_protect()]
    picks = [free[0], free[len(free) // 2], free[-1]]
    kinds = getattr(tc, "layer_types", None) or []
    for kind in sorted(set(kinds)) if len(set(kinds)) > 1 else ():
        picks.append(next(i for i in free[len(free) // 3 :] if kinds[i] == kind))
    mwl = getattr(tc, "max_window_layers", None)
    if isinstance(mwl, int) and mwl < n:  # one layer each side of the window boundary
        picks += [max(i for i in free if i < mwl), min(i for i in free if i >= mwl)]
    cross = getattr(tc, "cross_attention_layers", None) or []
    picks += [i for i in cross if i in free][1:2]
    return sorted(set(picks))


# --- the shapes themselves ---------------------------------------------------------------------


def test_every_family_has_a_real_shape():
    families = {shapes.config(n).model_type for n in NAMES}
    missing = [f.name for f in FAMILIES if not families & set(f.model_types)]
    assert not missing, f"no real shape under layercut/models/shapes/ for: {missing}"


def test_unknown_shape_is_a_one_line_error_naming_the_known_ones():
    with pytest.raises(LayercutError) as err:
        shapes.shape("llama-9000")
    message = str(err.value)
    assert "\n" not in message and "llama-9000" in message
    assert all(n in message for n in NAMES)


def test_shape_files_have_source_params_and_provenance():
    for name in NAMES:
        s = shapes.shape(name)
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", s["source"]), name
        assert s["params"] > 1e8 and s["provenance"], name
        assert isinstance(s["unverified"], list), name
        assert "model_type" in s and "architectures" in s, name


def test_shape_files_ship_in_the_wheel():
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["layercut"]
    assert "**/*.json" in patterns
    assert shapes.SHAPES_DIR.is_relative_to(root / "layercut")


def test_shape_is_a_copy():
    name = NAMES[0]
    shapes.shape(name)["num_hidden_layers"] = -1
    assert shapes.shape(name).get("num_hidden_layers") != -1


# --- one real shape, pruned --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_real_shape_pruned_on_meta(name, tmp_path):
    published = shapes.parameters(name)
    allow = ("cross-attention",) if shapes.fields(name)["model_type"] == "mllama" else ()
    adapter = meta_adapter(name)
    model, fam = adapter.model, adapter.family
    assert all(p.device.type == "meta" for p in model.parameters())
    before = parameter_count(model)
    assert abs(before / published - 1) < 0.02, f"{name}: {before:,} parameters, published {published:,.0f}"

    # Protected layers: Qwen3-VL deepstack injection points, Mllama cross-attention until allowed.
    tc = adapter.text_config
    n = adapter.num_layers
    assert n == tc.num_hidden_layers == shapes.config(name).get_text_config(decoder=True).num_hidden_layers
    cross = list(getattr(tc, "cross_attention_layers", None) or [])
    if model.config.model_type in ("qwen3_vl", "qwen3_vl_moe"):
        k = len(model.config.vision_config.deepstack_visual_indexes)
        assert k == 3 and adapter.protected_layers() == set(range(k))
        with pytest.raises(LayercutError, match="protected"):
            check_drop([k - 1], n, adapter.default_protect())
    elif cross:
        assert adapter.protected_layers() == set(cross)
        with pytest.raises(LayercutError, match="protected"):
            check_drop([cross[0]], n, adapter.default_protect())
        adapter.allow(allow)
        assert adapter.protected_layers() == set()
    else:
        assert adapter.protected_layers() == set(), f"{name}: unexpected protected layers"

    drop = choose_drop(adapter)
    check_drop(drop, n, adapter.default_protect())
    kinds = getattr(tc, "layer_types", None) or []
    if len(set(kinds)) > 1:
        assert len({kinds[i] for i in drop}) > 1, f"{name}: drop {drop} does not mix layer kinds"
    if cross:
        assert set(drop) & set(cross) and set(drop) - set(cross), f"{name}: drop {drop} must mix kinds"

    old_layers = list(adapter.layers)
    old_lists = {a: list(getattr(tc, a)) for a in PER_LAYER if isinstance(getattr(tc, a, None), list)}
    old_index = {a: list(getattr(tc, a)) for a in fam.index_lists}
    old_mwl = getattr(tc, "max_window_layers", None)
    old_mlp = [type(getattr(layer, "mlp", None)).__name__ for layer in old_layers]
    per_layer = layer_param_counts(adapter)

    kept = drop_layers(adapter, drop)

    expected = [i for i in range(n) if i not in drop]
    assert kept == expected
    assert adapter.num_layers == len(kept) == tc.num_hidden_layers == n - len(drop)
    assert all(adapter.layers[j] is old_layers[i] for j, i in enumerate(kept)), "layers out of order"
    for attr, values in old_lists.items():
        assert getattr(tc, attr) == [values[i] for i in kept], f"{name}: {attr} not subset in order"
    for attr, values in old_index.items():
        renumbered = [kept.index(i) for i in values if i in kept]
        assert list(getattr(tc, attr)) == renumbered, f"{name}: {attr} not renumbered"
        if hasattr(adapter.decoder, attr):
            assert list(getattr(adapter.decoder, attr)) == renumbered, f"{name}: decoder.{attr} stale"
    if isinstance(old_mwl, int):
        assert tc.max_window_layers == sum(1 for i in kept if i < old_mwl), f"{name}: max_window_layers"
    for j, layer in enumerate(adapter.layers):
        stale = {m.layer_idx for m in layer.modules() if hasattr(m, "layer_idx")} - {j}
        assert not stale, f"{name}: layer {j} (was {kept[j]}) keeps layer_idx {stale}"
        assert type(getattr(layer, "mlp", None)).__name__ == old_mlp[kept[j]], f"{name}: MLP kind moved"
        # The attention module's window (fixed when it was built) agrees with the config's kind.
        attn, sliding = getattr(layer, "self_attn", None), tc.layer_types[j] == "sliding_attention" if kinds else None
        if kinds and hasattr(attn, "is_sliding"):
            assert attn.is_sliding == sliding, f"{name}: layer {j} window disagrees with layer_types"
        elif kinds and hasattr(attn, "sliding_window"):
            assert (attn.sliding_window is not None) == sliding, f"{name}: layer {j} window disagrees"

    # The saved config reloads with the same fields, and builds the same structure: every weight
    # of the pruned model exists with the same shape in a model made from the reloaded config
    # (a sparse layer stays sparse, a cross-attention layer stays one, and so on).
    model.config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    ignore = ("_name_or_path",)  # where it was loaded from
    saved = {k: v for k, v in model.config.to_dict().items() if k not in ignore}
    assert {k: v for k, v in reloaded.to_dict().items() if k not in ignore} == saved
    rtc = reloaded.get_text_config(decoder=True)
    assert rtc.num_hidden_layers == len(kept)
    for attr in (*old_lists, *old_index, "max_window_layers"):
        if hasattr(tc, attr):
            assert getattr(rtc, attr) == getattr(tc, attr), f"{name}: {attr} changed on reload"
    with torch.device("meta"):
        fresh = auto_class(fam).from_config(reloaded)
    shapes_now = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes_fresh = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    missing = sorted(set(shapes_now) ^ set(shapes_fresh))
    assert not missing, f"{name}: weights differ between the pruned model and its reloaded config: {missing[:4]}"
    assert shapes_now == shapes_fresh, f"{name}: a weight changed shape through save/reload"

    # Recipe, model card and mergekit recipe at full size.
    after = parameter_count(model)
    assert after == before - sum(per_layer[i] for i in drop)
    assert abs(after / (published - sum(per_layer[i] for i in drop)) - 1) < 0.05
    recipe = Recipe(source=shapes.shape(name)["source"], drop=drop, kept=kept, num_layers_before=n,
                    parameters_before=before, parameters_after=after, budget=len(drop),
                    allowed=sorted(adapter.allowed))
    card = model_card(recipe)
    assert f"| decoder layers | {n} → {len(kept)} |" in card
    assert f"| dropped layers (original indices) | {', '.join(map(str, drop))} |" in card
    assert f"| parameters | {before:,} → {after:,} (−{100 * (1 - after / before):.1f}%) |" in card
    assert "Kept layers, in order (original indices): " + ", ".join(map(str, kept)) in card
    assert f"base_model: {recipe.source}" in card
    if allow:
        assert "| guards lifted (droppable on request) | cross-attention |" in card
    slices = yaml.safe_load(mergekit_yaml(recipe))["slices"]
    ranges = [tuple(s["sources"][0]["layer_range"]) for s in slices]
    assert [i for a, b in ranges for i in range(a, b)] == kept  # every kept layer once, in order
    assert len(ranges) == 1 + sum(1 for x, y in pairwise(kept) if y != x + 1)  # maximal runs
    assert {s["sources"][0]["model"] for s in slices} == {recipe.source}


WINDOW_PATTERN_SHAPES = [n for n in NAMES if (shapes.fields(n).get("text_config") or shapes.fields(n))
                         .get("sliding_window_pattern")]


@pytest.mark.parametrize("name", WINDOW_PATTERN_SHAPES)
def test_pruned_config_has_no_stale_window_pattern(name, tmp_path):
    """Gemma 3 says its window layout twice: layer_types and sliding_window_pattern (full attention
    on every p-th layer). After a drop, layer_types is subset but a saved pattern would describe
    another model. transformers reads layer_types, but a reader that rebuilds the layout from the
    pattern (converters and serving stacks that take `sliding_window_pattern`) would give layers
    after the first dropped one the wrong window. The saved config must not carry a pattern its
    layer_types contradict."""
    adapter = meta_adapter(name)
    drop = choose_drop(adapter)
    drop_layers(adapter, drop)
    adapter.model.config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    text = saved.get("text_config", saved)
    kinds = text["layer_types"]
    for key in ("sliding_window_pattern", "_sliding_window_pattern"):
        p = text.get(key)
        if p:
            implied = ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(len(kinds))]
            assert kinds == implied, (
                f"{name}: after dropping {drop}, the saved config.json keeps {key}={p} but its "
                f"layer_types put full attention at {[i for i, k in enumerate(kinds) if k == 'full_attention']}, "
                f"not at every {p}th layer: surgery should clear (or drop) {key} when the pruned layer_types "
                "no longer follow it"
            )
