"""Healing: LoRA on the kept layers lowers calibration loss, merges into a checkpoint that reloads
logits-equal, and `healed` leaves a shared model exactly as it found it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from layercut import api, surgery
from layercut.data.encode import encode_batches
from layercut.errors import LayercutError
from layercut.heal import HEAL_FILE, HealStats, heal, healed
from layercut.models import auto_class
from tests.test_cli import run


@torch.no_grad()
def logits(model, inputs):
    return model(**inputs, use_cache=False).logits


def test_heal_lowers_loss_and_merged_checkpoint_reloads_equal(tiny_text_dir, text_calib, tmp_path):
    adapter = api.load_model(str(tiny_text_dir))
    surgery.drop_layers(adapter, [2, 3])
    samples = api.calibration(str(text_calib))
    inputs = surgery.probe_inputs(adapter)
    weights_before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    before = logits(adapter.model, inputs)

    stats = heal(adapter, samples, steps=12, rank=4, lr=3e-3, seed=0, batch_size=4)
    assert stats.merged and stats.layers == 4 and stats.steps == 12 and len(stats.losses) == 12
    assert set(stats.calib_nll_before) == {"math", "general", "all"}
    for domain, value in stats.calib_nll_before.items():
        assert stats.calib_nll_after[domain] < value, domain
    # Only the kept decoder layers' linear weights moved; no LoRA module is left behind.
    changed = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, weights_before[n])}
    assert changed and all(".layers." in n and n.endswith("proj.weight") for n in changed)
    assert set(dict(adapter.model.named_parameters())) == set(weights_before)
    assert not any("lora" in n for n, _ in adapter.model.named_modules())
    assert not torch.equal(before, logits(adapter.model, inputs))

    adapter.model.save_pretrained(tmp_path / "healed")
    with safe_open(str(tmp_path / "healed" / "model.safetensors"), "pt") as f:
        assert not any("lora" in k or "base_layer" in k for k in f.keys())  # noqa: SIM118 - safe_open is no dict
    reloaded = auto_class(adapter.family).from_pretrained(tmp_path / "healed").eval()
    assert torch.equal(logits(adapter.model, inputs), logits(reloaded, inputs))


def test_healed_view_is_undone_bit_for_bit(tiny_text_dir, text_calib):
    adapter = api.load_model(str(tiny_text_dir))
    samples = api.calibration(str(text_calib))
    inputs = surgery.probe_inputs(adapter)
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in adapter.model.named_parameters()}
    full = logits(adapter.model, inputs)
    with surgery.skipped(adapter, [3]):
        plain = logits(adapter.model, inputs)
        batches = list(encode_batches(adapter, samples, batch_size=3))  # pre-encoded, as a sweep would
        with healed(adapter, batches, steps=4, rank=2, lr=3e-3, measure=False) as stats:
            assert not stats.merged and stats.layers == 5 and not stats.calib_nll_after
            assert not torch.equal(plain, logits(adapter.model, inputs))
        assert torch.equal(plain, logits(adapter.model, inputs))
    assert torch.equal(full, logits(adapter.model, inputs))
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in state.items())
    assert {n: p.requires_grad for n, p in adapter.model.named_parameters()} == grads
    assert not hasattr(adapter.model, "peft_config")


def test_heal_is_seeded(tiny_text_dir, text_calib):
    samples = api.calibration(str(text_calib))
    runs = []
    for _ in range(2):
        adapter = api.load_model(str(tiny_text_dir))
        runs.append(heal(adapter, samples, steps=3, rank=2, seed=5, measure=False).losses)
    assert runs[0] == runs[1]


def test_heal_command_uses_the_recorded_calibration(tiny_text_dir, text_calib, tmp_path, capsys):
    pruned, healed_dir = tmp_path / "pruned", tmp_path / "healed"
    code, _, err = run(["prune", "--model", tiny_text_dir, "--calib", text_calib, "--method", "math",
                        "--budget", "2", "--out", pruned], capsys)
    assert code == 0, err
    assert json.loads((pruned / "layercut_recipe.json").read_text())["calibration"] == str(text_calib)
    code, out, err = run(["heal", "--model", pruned, "--out", healed_dir, "--steps", "8",
                          "--rank", "4", "--lr", "3e-3"], capsys)
    assert code == 0, err
    assert "reload verified" in out
    stats = HealStats.load(healed_dir / HEAL_FILE)
    assert stats.data == str(text_calib) and stats.steps == 8 and stats.layers == 4
    assert stats.calib_nll_after["all"] < stats.calib_nll_before["all"]
    recipe = json.loads((healed_dir / "layercut_recipe.json").read_text())
    assert recipe["heal"]["verify"]["max_abs_logit_diff"] == 0.0
    assert recipe["heal"]["source"] == str(pruned) and len(recipe["drop"]) == 2
    card = (healed_dir / "README.md").read_text()
    assert "## Healing" in card and str(text_calib) in card and "8 steps" in card
    assert json.loads((healed_dir / "config.json").read_text())["num_hidden_layers"] == 4
    assert (healed_dir / "tokenizer.json").is_file()


def test_heal_errors(tiny_text_dir, text_calib, tmp_path, capsys):
    code, _, err = run(["heal", "--model", tiny_text_dir, "--out", tmp_path / "h"], capsys)
    assert code == 2 and "--data" in err and not (tmp_path / "h").exists()
    adapter = api.load_model(str(tiny_text_dir))
    with pytest.raises(LayercutError, match="learning rate"):
        heal(adapter, api.calibration(str(text_calib)), steps=1, lr=0.0)
    with pytest.raises(LayercutError, match="lower --lr"):
        heal(adapter, api.calibration(str(text_calib)), steps=2, lr=1e30, measure=False)


# ---- interleaved healing (INTERLACE): exactly the named layers, in full --------------------------


def test_interleaved_heal_changes_only_the_named_layers(tiny_text_dir, text_calib):
    adapter = api.load_model(str(tiny_text_dir))
    kept = surgery.drop_layers(adapter, [2, 3])  # original 1 and 4 are now layers 1 and 2
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in adapter.model.named_parameters()}
    stats = heal(adapter, api.calibration(str(text_calib)), steps=12, lr=3e-3, seed=0, batch_size=4,
                 train_layers=[1, 4], kept=kept)
    assert stats.mode == "interleaved" and stats.train_layers == [1, 4] and stats.layers == 2
    assert stats.rank == 0 and stats.merged and stats.target_modules == 2
    assert stats.trainable_parameters == sum(p.numel() for i in (1, 2) for p in adapter.layers[i].parameters())
    assert stats.calib_nll_after["all"] < stats.calib_nll_before["all"]
    after = adapter.model.state_dict()
    named = tuple(f"model.layers.{i}." for i in (1, 2))
    inside = [k for k in state if k.startswith(named)]
    assert inside and set(after) == set(state)
    assert all(not torch.equal(after[k], state[k]) for k in inside)  # every tensor of them trained
    assert all(torch.equal(after[k], state[k]) for k in state if k not in inside)  # the rest bit-identical
    assert {n: p.requires_grad for n, p in adapter.model.named_parameters()} == grads


def test_interleaved_healed_view_is_undone_bit_for_bit(tiny_text_dir, text_calib):
    adapter = api.load_model(str(tiny_text_dir))
    samples = api.calibration(str(text_calib))
    inputs = surgery.probe_inputs(adapter)
    state = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    originals = list(adapter.layers)  # inside the view, state_dict keys follow the new numbering

    def moved() -> list[int]:
        return [i for i, layer in enumerate(originals) for k, v in layer.state_dict().items()
                if not torch.equal(v, state[f"model.layers.{i}.{k}"])]

    with surgery.skipped(adapter, [3]) as kept:
        plain = logits(adapter.model, inputs)
        with healed(adapter, samples, steps=4, lr=3e-3, measure=False, train_layers=[4], kept=kept) as stats:
            assert not stats.merged and stats.train_layers == [4]
            assert not torch.equal(plain, logits(adapter.model, inputs))
            assert set(moved()) == {4}
        assert torch.equal(plain, logits(adapter.model, inputs)) and not moved()
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in state.items())


def test_interleaved_heal_command_reads_the_interlace_recipe(tiny_text_dir, text_calib, tmp_path):
    from layercut.heal import heal_checkpoint

    pruned = tmp_path / "pruned"
    recipe = api.prune(str(tiny_text_dir), str(text_calib), out=pruned, method="interlace", budget=1)
    train = recipe.params["train"]
    assert len(train) == 1 and train[0] in recipe.kept
    stats = heal_checkpoint(str(pruned), tmp_path / "healed", interleaved=True, steps=4, lr=3e-3)
    assert stats.mode == "interleaved" and stats.train_layers == train and stats.data == str(text_calib)
    saved = json.loads((tmp_path / "healed" / "layercut_recipe.json").read_text())
    assert saved["heal"]["verify"]["max_abs_logit_diff"] == 0.0
    now = f"model.layers.{recipe.kept.index(train[0])}."
    with safe_open(str(pruned / "model.safetensors"), "pt") as a, \
            safe_open(str(tmp_path / "healed" / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())  # noqa: SIM118 - safe_open is no dict
        changed = {k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))}  # noqa: SIM118
    assert changed and all(k.startswith(now) for k in changed)


def test_heal_command_interleaved_trains_the_recipes_layers_and_says_so(tiny_text_dir, text_calib, tmp_path,
                                                                         capsys):
    pruned, healed_dir = tmp_path / "pruned", tmp_path / "healed"
    code, _, err = run(["prune", "--model", tiny_text_dir, "--calib", text_calib, "--method", "interlace",
                        "--budget", "1", "--out", pruned], capsys)
    assert code == 0, err
    train = json.loads((pruned / "layercut_recipe.json").read_text())["params"]["train"]
    code, out, err = run(["heal", "--model", pruned, "--out", healed_dir, "--steps", "2", "--lr", "1e-3",
                          "--interleaved"], capsys)
    assert code == 0, err
    assert f"healed layers {train} in full (" in " ".join(out.split()) and "reload verified" in out
    card = " ".join((healed_dir / "README.md").read_text().split())
    assert f"layers {train} (original indices) were fine-tuned in full" in card and "LoRA" not in card


def test_interleaved_errors(tiny_text_dir, text_calib, tmp_path):
    from layercut.heal import heal_checkpoint

    adapter = api.load_model(str(tiny_text_dir))
    kept = surgery.drop_layers(adapter, [2, 3])
    samples = api.calibration(str(text_calib))
    for bad in ([2], [], [1, 1]):
        with pytest.raises(LayercutError, match=r"must be distinct kept layers .*original index$"):
            heal(adapter, samples, steps=1, train_layers=bad, kept=kept)
    with pytest.raises(LayercutError, match="kept names 6 layers but the model has 4"):
        heal(adapter, samples, steps=1, train_layers=[1], kept=range(6))
    pruned = tmp_path / "pruned"
    api.prune(str(tiny_text_dir), str(text_calib), out=pruned, method="math", budget=1)
    with pytest.raises(LayercutError, match="not pruned by an INTERLACE method"):
        heal_checkpoint(str(pruned), tmp_path / "h", interleaved=True, steps=1)
    with pytest.raises(LayercutError, match="use one"):
        heal_checkpoint(str(pruned), tmp_path / "h", interleaved=True, train_layers=[1], steps=1)
    assert not (tmp_path / "h").exists()
