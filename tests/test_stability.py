"""Selection stability under the calibration data: per-sample sums in scores.json, resampled
without a model; on a tiny model (exactness) and on synthetic per-sample scores with a known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layercut.data.encode import Batch
from layercut.errors import LayercutError
from layercut.models import Adapter
from layercut.regimes.stability import Stability, resample, selection_stability, why_not_resamplable
from layercut.scoring import LayerScores, from_samples, score
from layercut.selection import select
from tests.test_cli import run
from tests.tiny import make_tiny

FIELDS = ("cosine", "angular", "tokens", "zero_norm", "nonfinite", "block_distance", "block_samples", "samples")


@pytest.fixture(scope="module")
def tiny_scores() -> LayerScores:
    """Two domains over three batches (one domain split across two), padded rows, every token in scope."""
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    batches = [Batch("math", tiny.inputs(batch=2, with_image=False, pad=True, seed=1), 2),
               Batch("general", tiny.inputs(batch=3, with_image=False, pad=True, seed=2), 3),
               Batch("math", tiny.inputs(batch=3, with_image=False, pad=True, seed=3), 3)]
    return score(adapter, batches, block_tokens="scope")


def test_every_sample_drawn_once_gives_the_saved_scores_exactly(tiny_scores, tmp_path):
    tiny_scores.save(tmp_path / "s.json")
    loaded = LayerScores.load(tmp_path / "s.json")
    for scores in (tiny_scores, loaded):  # JSON keeps every float64 exactly
        again = resample(scores, {name: np.arange(d.samples) for name, d in scores.domains.items()})
        for name, d in scores.domains.items():
            for f in FIELDS:
                assert getattr(again.domains[name], f) == getattr(d, f), (name, f)
    # the order of the draw does not matter: the draw is a multiset, summed in sample order
    shuffled = resample(loaded, {"math": np.array([4, 0, 3, 1, 2])})
    assert shuffled.domains["math"].cosine == loaded.domains["math"].cosine


def test_per_sample_sums_are_each_samples_own_scores(tiny_scores):
    """A sample's row of sums is what scoring that sample alone measures (padding never counts)."""
    tiny = make_tiny("llama")
    adapter = Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=3, with_image=False, pad=True, seed=2)
    general = tiny_scores.domains["general"]
    assert len(general.per_sample["stats"]) == 3 and general.per_sample["units"] == [
        int(inputs["attention_mask"][b].sum()) for b in range(3)]  # block_tokens="scope": every token
    for b in range(3):
        keep = inputs["attention_mask"][b].bool()
        alone = score(adapter, [Batch("g", {k: v[b:b + 1][:, keep] for k, v in inputs.items()}, 1)],
                      block_tokens="scope").domains["g"]
        one = resample(tiny_scores, {"general": np.array([b])}).domains["general"]
        assert one.tokens == alone.tokens and one.block_samples == alone.block_samples
        assert one.cosine == pytest.approx(alone.cosine, abs=1e-5)
        for r1, r2 in zip(one.block_distance, alone.block_distance):
            assert r1 == pytest.approx(r2, abs=1e-5)


def test_old_scores_files_still_load_and_say_why_there_is_no_stability(tiny_scores, tmp_path):
    d = tiny_scores.to_dict()
    for dom in d["domains"].values():
        del dom["per_sample"]  # what layercut wrote before it kept them
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = LayerScores.load(tmp_path / "old.json")
    assert old.domains["math"].cosine == tiny_scores.domains["math"].cosine
    assert select(old, "math", 1).drop == select(tiny_scores, "math", 1).drop
    why = why_not_resamplable(old)
    assert why.startswith("the scores of domain(s) math, general keep no per-sample statistics")
    with pytest.raises(LayercutError, match="re-run `layercut score` to measure selection stability"):
        selection_stability(old, ["math"], [1], replicates=2)


# ---- synthetic per-sample scores with a known truth -----------------------------------------

L = 12


def synthetic(n: int, noise: float, seed: int = 0) -> LayerScores:
    """Per-sample cosines around a known profile per domain: math keeps layer 3 most (.92, then
    8 at .87), general layer 8 (.92, then 3 at .87), a .05 difference; the third pick is 5 for
    math and 6 for general by .002 only, far below the noise of the samples. Every other layer
    sits at .50. 10 tokens per sample and layer."""
    rng = np.random.default_rng(seed)
    profiles = {"math": np.full(L, 0.5), "general": np.full(L, 0.5)}
    profiles["math"][[3, 8, 5, 6]] = [0.92, 0.87, 0.752, 0.750]
    profiles["general"][[8, 3, 6, 5]] = [0.92, 0.87, 0.752, 0.750]
    domains = {}
    for name, prof in profiles.items():
        cos = np.clip(prof + noise * rng.standard_normal((n, L)), -1, 1)
        stats = np.zeros((n, L, 5))
        stats[:, :, 0] = 10 * cos
        stats[:, :, 1] = 10 * np.arccos(cos) / np.pi
        stats[:, :, 2] = 10
        block = np.zeros((n, L, L))
        block_n = np.zeros((n, L, L), dtype=np.int64)
        for l in range(L):
            block[:, l, : L - l] = 0.1 * np.arange(1, L - l + 1) + noise * rng.random((n, L - l))
            block_n[:, l, : L - l] = 1
        domains[name] = from_samples(stats, block, block_n, np.ones(n, dtype=np.int64))
    return LayerScores(L, domains)


def test_noise_free_samples_give_perfect_stability():
    s = selection_stability(synthetic(20, noise=0.0), ["math", "general", "mixed", "bi", "block"], [2, 4],
                            replicates=20)
    assert all(j == 1.0 for by in s.jaccard.values() for j in by.values())
    assert all(f in (0.0, 1.0) for by in s.frequency.values() for fs in by.values() for f in fs)


def test_domain_specific_layers_are_the_ones_beyond_calibration_noise():
    scores = synthetic(64, noise=0.02)
    s = selection_stability(scores, ["math", "general", "mixed", "bi"], [1, 2, 3], replicates=100, seed=1)
    # k = 1: math drops 3 and general drops 8 — a .05 difference, beyond the noise of 64 samples
    ds = s.domain_specific["1"]
    assert (ds["math_only"], ds["general_only"]) == ([3], [8]) and ds["beyond_noise"] == [3, 8]
    assert s.picks["math"]["1"] == [3] and s.frequency["math"]["1"][3] > 0.95
    assert "2" not in s.domain_specific or not s.domain_specific["2"]["math_only"]  # both drop {3, 8}
    # k = 3: the .002 differences, in the full-data picks but not beyond noise
    ds = s.domain_specific["3"]
    assert (ds["math_only"], ds["general_only"]) == ([5], [6]) and ds["beyond_noise"] == []
    assert 0.2 < ds["shares"]["5"] < 0.95
    # math's only variation at k = 3 is 5 or 6 as its third layer: Jaccard 1, or 2/4 when 6
    f5 = s.frequency["math"]["3"][5]
    assert s.jaccard["math"]["2"] == 1.0 and f5 < 1.0 and s.jaccard["math"]["3"] == pytest.approx(0.5 + 0.5 * f5)


def test_fewer_samples_per_domain_give_less_stable_picks(tmp_path):
    scores = synthetic(64, noise=0.02)
    few = selection_stability(scores, ["math"], [3], replicates=60, draw=4)
    many = selection_stability(scores, ["math"], [3], replicates=60, draw=64)
    assert few.draw == 4 and few.jaccard["math"]["3"] < many.jaccard["math"]["3"]
    few.save(tmp_path / "st.json")
    assert Stability.load(tmp_path / "st.json") == few


def test_bad_requests_name_the_fix():
    scores = synthetic(8, noise=0.01)
    with pytest.raises(LayercutError, match="do not select from the scores alone"):
        selection_stability(scores, ["math", "iterative"], [2])
    with pytest.raises(LayercutError, match="at least 1"):
        selection_stability(scores, ["math"], [2], replicates=0)
    with pytest.raises(LayercutError, match="no method or no positive budget"):
        selection_stability(scores, ["math"], [0])
    broken = synthetic(8, noise=0.01)
    broken.domains["math"].per_sample["units"] = [1]
    with pytest.raises(LayercutError, match="re-run `layercut score`"):
        resample(broken, {})


def test_select_stability_command_prints_the_tables_and_writes_json(tmp_path, capsys):
    synthetic(16, noise=0.02).save(tmp_path / "s.json")
    code, out, err = run(["select", "--scores", tmp_path / "s.json", "--stability", "--method", "math,general,bi",
                          "--budgets", "1,3", "--replicates", "20", "--out", tmp_path / "st.json"], capsys)
    assert code == 0, err
    out = " ".join(out.split())  # rich wraps to the terminal
    assert "selection stability over 20 resamples of the calibration samples (math 16, general 16 per domain" in out
    assert "mean Jaccard with the full-data pick" in out and "math-aware vs general-aware picks" in out
    st = Stability.load(tmp_path / "st.json")
    assert st.picks["math"]["1"] == [3] and st.domain_specific["1"]["beyond_noise"] == [3, 8]
    # a scores file without per-sample statistics: one line naming the fix, exit 2
    d = json.loads((tmp_path / "s.json").read_text())
    for dom in d["domains"].values():
        dom["per_sample"] = {}
    (tmp_path / "old.json").write_text(json.dumps(d))
    code, out, err = run(["select", "--scores", tmp_path / "old.json", "--stability", "--method", "math",
                          "--budgets", "1"], capsys)
    assert code == 2 and "keep no per-sample statistics" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["select", "--scores", tmp_path / "old.json", "--method", "math", "--budget", "1"], capsys)
    assert code == 0 and out.strip() == "3"
    code, out, err = run(["select", "--scores", tmp_path / "old.json", "--method", "math"], capsys)
    assert code == 2 and "pass --budget K" in err


def test_score_keeps_per_sample_statistics_unless_told_not_to(tiny_text_dir, text_calib, tmp_path, capsys):
    for flag, kept in ((), True), (("--no-sample-stats",), False):
        out = tmp_path / f"{kept}.json"
        code, _, err = run(["score", "--model", tiny_text_dir, "--calib", text_calib, "--out", out, *flag], capsys)
        assert code == 0, err
        scores = LayerScores.load(out)
        assert (why_not_resamplable(scores) is None) == kept
        assert all(len(d.per_sample.get("stats", [])) == (d.samples if kept else 0) for d in scores.domains.values())
    assert LayerScores.load(tmp_path / "False.json").domains["math"].cosine == scores.domains["math"].cosine
