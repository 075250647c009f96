"""Models split over devices (here cpu + disk offload), token-budget batches, fp16 overflow.

A model dispatched by an accelerate device map must give the same scores and the same pruned
checkpoint as the model loaded whole; calibration packed by a token budget must score like fixed
batches; inf/NaN activations must be counted per layer and domain, never averaged in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layercut import api, models, surgery
from layercut.data.encode import encode_batches, sample_length
from layercut.errors import LayercutError
from tests.test_cli import run


def split_map(model_dir: Path, disk_from: int, prefix: str = "model.layers") -> dict[str, str]:
    """Every top-level module on cpu, decoder layers >= disk_from offloaded to disk."""
    cfg = json.loads((model_dir / "config.json").read_text())
    n = cfg.get("text_config", cfg)["num_hidden_layers"]
    root = prefix.rsplit(".", 1)[0]
    dm = {f"{root}.embed_tokens": "cpu", f"{root}.rotary_emb": "cpu", f"{root}.norm": "cpu", "lm_head": "cpu"}
    dm.update({f"{prefix}.{i}": ("disk" if i >= disk_from else "cpu") for i in range(n)})
    return dm


@pytest.fixture
def map_file(tiny_text_dir, tmp_path) -> Path:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(split_map(tiny_text_dir, disk_from=3)))
    return path


def test_split_model_scores_like_the_whole_one(tiny_text_dir, text_calib, map_file, tmp_path):
    whole = api.score(str(tiny_text_dir), str(text_calib))
    adapter = api.load_model(str(tiny_text_dir), device_map=str(map_file), offload_folder=tmp_path / "off")
    assert adapter.dispatched and adapter.device_map["model.layers.5"] == "disk"
    assert adapter.layers[5].mlp.up_proj.weight.device.type == "meta"  # really offloaded
    split = api.score(adapter, str(text_calib))
    for name, d in whole.domains.items():
        s = split.domains[name]
        assert s.tokens == d.tokens and s.cosine == d.cosine and s.angular == d.angular
        assert s.block_distance == d.block_distance
    assert split.meta["device_map"]["model.layers.3"] == "disk"
    before = dict(adapter.device_map)
    with surgery.skipped(adapter, [1, 4]):  # the map follows the renumbering, then comes back
        expected = {k: v for k, v in before.items() if not k.startswith("model.layers.")}
        expected.update({f"model.layers.{j}": before[f"model.layers.{i}"] for j, i in enumerate([0, 2, 3, 5])})
        assert adapter.device_map == expected
    assert adapter.device_map == before


def test_split_model_prunes_to_the_same_checkpoint(tiny_text_dir, text_calib, map_file, tmp_path, capsys):
    outs = {}
    for name, extra in (("whole", []), ("split", ["--device-map", map_file])):
        outs[name] = tmp_path / name
        code, out, err = run(["prune", "--model", tiny_text_dir, "--drop", "2,4", "--out", outs[name],
                              *extra], capsys)
        assert code == 0, err
        assert "reload verified" in out
    files = {n: sorted(p.name for p in o.iterdir() if p.name != "layercut_recipe.json" and p.name != "README.md")
             for n, o in outs.items()}
    assert files["whole"] == files["split"]  # no offload index, no stray files
    a, b = (load_file(outs[n] / "model.safetensors") for n in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("layers.4." in k or "layers.5." in k for k in a)  # 6 - 2 = 4 layers left
    ca, cb = (json.loads((outs[n] / "config.json").read_text()) for n in ("whole", "split"))
    assert ca == cb and ca["num_hidden_layers"] == 4
    recipe = json.loads((outs["split"] / "layercut_recipe.json").read_text())
    assert recipe["verify"]["device_map"] is True and recipe["verify"]["max_abs_logit_diff"] == 0.0


def test_split_vlm_prunes_like_the_whole_one(tiny_llava_dir, tmp_path):
    dm = split_map(tiny_llava_dir, disk_from=2, prefix="model.language_model.layers")
    dm.update({"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu"})
    recipes = {}
    for name, device_map in (("whole", None), ("split", dm)):
        recipes[name] = api.prune(str(tiny_llava_dir), out=tmp_path / name, drop=[1, 3], device_map=device_map)
    assert recipes["split"].verify["device_map"] and recipes["split"].verify["probe_has_image"]
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_device_map_errors(tiny_text_dir, tmp_path):
    with pytest.raises(LayercutError, match="auto"):
        models.parse_device_map("nowhere.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model.layers.0": "moon"}')
    with pytest.raises(LayercutError, match="not a device"):
        models.parse_device_map(str(bad))
    bad.write_text("{not json")
    with pytest.raises(LayercutError, match="not JSON"):
        models.parse_device_map(str(bad))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"model.embed_tokens": "cpu", "model.layers.0": "disk"}))
    with pytest.raises(LayercutError, match="does not fit"):
        api.load_model(str(tiny_text_dir), device_map=str(partial))
    auto = api.load_model(str(tiny_text_dir), device_map="auto")  # CPU only here: all on cpu
    assert not auto.dispatched and auto.input_device == torch.device("cpu")


def test_token_budget_batches_are_bounded_sorted_and_score_the_same(tiny_text_dir, tmp_path):
    from layercut.data import Sample

    adapter = api.load_model(str(tiny_text_dir))
    samples = [Sample(domain="d" if i % 3 else "e", text=" ".join(["the cat"] * (1 + 3 * (i % 7)) + [str(i)]))
               for i in range(21)]
    lengths = [sample_length(adapter, s) for s in samples]
    budget = 2 * max(lengths) + 3  # the longest rows go two to a batch, the shortest many more
    batches = list(encode_batches(adapter, samples, max_tokens=budget))
    for domain in ("d", "e"):
        mine = [b for b in batches if b.domain == domain]
        assert sum(b.samples for b in mine) == sum(s.domain == domain for s in samples)
        widths = [b.inputs["input_ids"].shape[1] for b in mine]
        assert widths == sorted(widths, reverse=True)
    for b in batches:
        rows, width = b.inputs["input_ids"].shape
        assert rows * width <= budget or rows == 1
    assert len(batches) > len(list(encode_batches(adapter, samples, batch_size=8)))
    assert max(b.samples for b in batches) > 2 and len(set(lengths)) > 3
    packed = api.score(adapter, samples, max_tokens_per_batch=budget)
    fixed = api.score(adapter, samples, batch_size=8)
    for name, d in fixed.domains.items():
        assert packed.domains[name].tokens == d.tokens
        assert packed.domains[name].cosine == pytest.approx(d.cosine, abs=1e-6)
    with pytest.raises(LayercutError, match="positive"):
        list(encode_batches(adapter, samples, max_tokens=0))


@pytest.fixture
def overflow_dir(tiny_text_dir, tmp_path) -> Path:
    """The tiny model with layer 3's MLP output scaled up: finite in fp32, beyond fp16's 65504."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_text_dir)
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight.mul_(2e4)  # outputs ~1e5..4e5 per token
    path = tmp_path / "overflow"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_text_dir).save_pretrained(path)
    return path


def test_fp16_overflow_is_counted_per_layer_and_domain_never_averaged(overflow_dir, text_calib, tmp_path, capsys):
    fp32 = api.score(str(overflow_dir), str(text_calib))
    assert all(not any(d.nonfinite) for d in fp32.domains.values())
    fp16 = api.score(str(overflow_dir), str(text_calib), dtype="fp16")
    for name, d in fp16.domains.items():
        total = fp32.domains[name].tokens[0]
        assert d.nonfinite[:3] == [0, 0, 0] and d.tokens[:3] == [total] * 3
        assert d.nonfinite[3] > 0, name  # the layer that overflows ...
        assert all(t + n + z == total for t, n, z in zip(d.tokens, d.nonfinite, d.zero_norm))
        assert all(math.isfinite(v) for v in d.cosine + d.angular)  # ... never averaged in
        assert all(math.isfinite(v) for row in d.block_distance for v in row)
    assert any("first at layer 3 " in line for line in fp16.nonfinite_report())
    assert fp16.combined().nonfinite[3] == sum(d.nonfinite[3] for d in fp16.domains.values())

    code, _, err = run(["score", "--model", overflow_dir, "--calib", text_calib, "--dtype", "fp16",
                        "--out", tmp_path / "s16.json"], capsys)
    assert code == 0, err
    assert "inf/NaN" in err and "layer 3" in err and "--dtype" in err
    saved = json.loads((tmp_path / "s16.json").read_text())
    assert saved["domains"]["math"]["nonfinite"][3] > 0
    code, _, err = run(["score", "--model", overflow_dir, "--calib", text_calib,
                        "--out", tmp_path / "s32.json"], capsys)
    assert code == 0 and "inf/NaN" not in err


def test_split_model_probes_and_sweeps_like_the_whole_one(tiny_text_dir, map_file, tmp_path):
    """The shared-work engine calls layers one by one: offloaded layers still load their weights."""
    from layercut.sweep import SweepSpec, run_sweep

    whole = api.probe(str(tiny_text_dir), "builtin:text:2", max_length=32)
    split = api.probe(str(tiny_text_dir), "builtin:text:2", max_length=32, device_map=str(map_file))
    for d, values in whole.nll.items():
        assert split.nll[d] == pytest.approx(values, rel=1e-6)
    tables = []
    for name, dm in (("whole", None), ("split", str(map_file))):
        spec = SweepSpec(model=str(tiny_text_dir), methods=["last", "uniform"], budgets=[0, 2], tasks=["nll-math"],
                         limit=2, device_map=dm)
        tables.append(run_sweep(spec, tmp_path / name).sort_values(["method", "budget", "metric"]))
    assert list(tables[0].value) == pytest.approx(list(tables[1].value), rel=1e-6)


def test_split_model_reload_check_holds_one_copy(tiny_text_dir, tmp_path, monkeypatch):
    """A dispatched model's check releases what its devices hold (offloaded weights are on 'meta'),
    reloads with the renumbered map, and stays usable with the reloaded weights."""
    dm = split_map(tiny_text_dir, disk_from=3)
    adapter = models.load(str(tiny_text_dir), device_map=dm)
    assert adapter.dispatched
    cls = models.auto_class(adapter.family)
    real, held = cls.from_pretrained, []

    def spy(klass, *args, **kwargs):
        held.append(sum(p.untyped_storage().nbytes() for p in adapter.model.parameters() if p.device.type != "meta"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    inputs = surgery.probe_inputs(adapter)
    recipe = surgery.prune(adapter, [1, 4], tmp_path / "out", inputs=inputs)
    monkeypatch.undo()
    assert held == [0] and recipe.verify["device_map"] and recipe.verify["max_abs_logit_diff"] == 0.0
    reloaded = cls.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(adapter.model(**inputs, use_cache=False).logits, reloaded(**inputs, use_cache=False).logits)
