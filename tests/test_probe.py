"""Single-drop damage profile, the critical-layer guard, and the `damage` method."""

from __future__ import annotations

import json

import pytest
import torch

from layercut import selection, surgery
from layercut.errors import LayercutError
from layercut.evaluation import token_nll
from layercut.models import Adapter
from layercut.probe import DamageProfile, flag, probe
from layercut.data.encode import Batch
from tests.tiny import BOS, TEXT_HI, TEXT_LO, make_tiny

CRITICAL = 3


def critical_model():
    """A tiny Llama whose layer 3 is as built and whose other
    layers write residual updates 500x smaller: the model's predictions lean on layer 3."""
    tiny = make_tiny("llama", num_layers=6, seed=0)
    with torch.no_grad():
        for i, layer in enumerate(tiny.model.model.layers):
            scale = 1.0 if i == CRITICAL else 0.002
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
    return Adapter.wrap(tiny.model)


def own_text(adapter, domain: str, seed: int) -> Batch:
    """Text the model itself predicts (greedy), so that changing its predictions costs NLL."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.cat([torch.full((4, 1), BOS), torch.randint(TEXT_LO, TEXT_HI, (4, 3), generator=gen)], 1)
    with torch.no_grad():
        ids = adapter.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                     max_new_tokens=20, do_sample=False)
    return Batch(domain=domain, inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}, samples=4)


def test_probe_flags_exactly_the_layer_made_critical():
    adapter = critical_model()
    batches = [own_text(adapter, "math", 1), own_text(adapter, "general", 2)]
    profile = probe(adapter, batches, protect=set())
    assert profile.flagged == [CRITICAL], profile.damage("all")
    # the engine's numbers are those of a plain forward of the pruned model
    for i in (0, CRITICAL, 5):
        with surgery.skipped(adapter, [i]):
            plain = token_nll(adapter, batches)
        for d in ("math", "general", "all"):
            assert profile.nll[d][i] == pytest.approx(plain[d], rel=1e-5, abs=1e-5)
    assert profile.baseline["all"] == pytest.approx(token_nll(adapter, batches)["all"], rel=1e-5)


def test_flag_rule_on_known_values():
    assert flag([0.1, 0.12, 0.11, 0.09, 2.0, None]) == [4]
    assert flag([0.1, 0.1, 0.1]) == []  # no spread, no outlier
    assert flag([-5.0, 0.1, 0.11, 0.1, 0.12]) == [], "an improvement is never critical"
    assert flag([None, 3.0]) == []  # too few probed layers to call anything an outlier


def test_damage_method_and_guard():
    damage = [None, 0.5, 0.1, 3.0, 0.2, 0.05, 0.3, None]
    sel = selection.select(None, "damage", 3, num_layers=8, damage=damage)
    assert sel.drop == [5, 2, 4]
    # the guard protects flagged layers first, for any method
    plain = selection.select(None, "uniform", 2, num_layers=8)
    critical = plain.drop[0]
    guarded = selection.select(None, "uniform+guard", 2, num_layers=8, guard=[critical])
    assert critical not in guarded.drop and len(guarded.drop) == 2
    assert guarded.method == "uniform+guard" and critical in guarded.protect
    with pytest.raises(LayercutError, match="layercut probe"):
        selection.select(None, "damage", 2, num_layers=8)
    with pytest.raises(LayercutError, match="probe"):
        selection.select(None, "uniform+guard", 2, num_layers=8)


def test_profile_roundtrip_and_bad_file(tmp_path):
    p = DamageProfile(model="m", num_layers=3, baseline={"all": 1.0}, nll={"all": [None, 1.5, 1.2]}, flagged=[1])
    p.save(tmp_path / "probe.json")
    q = DamageProfile.load(tmp_path / "probe.json")
    assert q == p and q.damage("all") == [None, 0.5, pytest.approx(0.2)]
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(LayercutError, match="layercut probe"):
        DamageProfile.load(tmp_path / "bad.json")
    with pytest.raises(LayercutError, match="layercut probe"):
        DamageProfile.load(tmp_path / "missing.json")


def test_sweep_probes_guards_and_reports(tiny_text_dir, tmp_path):
    from layercut import api
    from layercut.report import write_report
    from layercut.sweep import SweepSpec, run_sweep

    scores = tmp_path / "scores.json"
    api.score(str(tiny_text_dir), "builtin:text:4", max_length=64).save(scores)
    spec = SweepSpec(model=str(tiny_text_dir), methods=["math", "math+guard", "uniform+guard", "damage"],
                     budgets=[0, 1, 2], tasks=["nll-math"], scores=str(scores), limit=3,
                     calib="builtin:text:4")
    df = run_sweep(spec, tmp_path / "s")
    profile = DamageProfile.load(tmp_path / "s" / "probe.json")
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["probe"] == str(tmp_path / "s" / "probe.json")
    damage = profile.damage("all")
    for row in df.drop_duplicates(["method", "budget"]).itertuples():
        drop = [int(i) for i in row.drop.split(",") if i]
        if row.method.endswith("+guard"):
            assert not set(drop) & set(profile.flagged)
        if row.method == "damage" and drop:
            unprotected = [i for i in range(profile.num_layers) if i not in (0, profile.num_layers - 1)]
            assert sorted(drop) == sorted(sorted(unprotected, key=lambda i: (damage[i], i))[:row.budget])
    folder = write_report(tmp_path / "s")
    md = (folder / "report.md").read_text()
    assert "Critical-layer guard" in md and "math → math+guard" in md
    assert (folder / "damage.png").is_file()


def test_probe_command_writes_the_profile_and_guards_a_selection(tiny_text_dir, tmp_path, capsys):
    from tests.test_cli import run

    out = tmp_path / "probe.json"
    code, stdout, err = run(["probe", "--model", tiny_text_dir, "--calib", "builtin:text:2",
                             "--max-length", "32", "--out", out], capsys)
    assert code == 0, err
    profile = DamageProfile.load(out)
    assert profile.num_layers == 6 and set(profile.nll) == {"math", "general", "all"}
    assert "critical layers" in stdout
    code, _, err = run(["probe", "--model", tiny_text_dir, "--calib", "builtin:text:2", "--out", out], capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, stdout, err = run(["select", "--method", "damage", "--budget", "2", "--model", tiny_text_dir,
                             "--probe", out], capsys)
    assert code == 0, err
    damage = profile.damage("all")
    expected = sorted(range(1, 5), key=lambda i: (damage[i], i))[:2]
    assert stdout.strip() == ",".join(map(str, expected))
