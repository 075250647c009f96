"""The shared-work engine gives the plain layer-skip forward's numbers, whatever it reuses."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch

from layercut import engine, surgery
from layercut.errors import LayercutError
from layercut.evaluation.batching import Context, Item, Prepared
from layercut.evaluation.tasks import TaskSpec
from layercut.evaluation.teacher import score_continuations, teacher_rows
from layercut.models import Adapter
from layercut.sweep import SweepSpec, run_sweep
from tests.tiny import FAMILY_IDS, make_tiny

LAYERS = 6


def tiny_task(tiny, rows: int = 5, kind: str = "choice") -> Prepared:
    """Rows built from the tiny family's own inputs (images included), two candidates each."""
    gen = torch.Generator().manual_seed(1)
    items = []
    for r in range(rows):
        inputs = tiny.inputs(batch=1, pad=False, seed=r)
        ids = inputs.pop("input_ids")[0]
        inputs.pop("attention_mask")
        seq = {k: v[0] for k, v in inputs.items() if k in ("mm_token_type_ids", "token_type_ids")}
        extras = {k: v for k, v in inputs.items() if k not in seq}
        conts = [torch.randint(10, 60, (3 + r % 3,), generator=gen) for _ in range(2)]
        items.append(Item(id=str(r), context=Context(ids=ids, seq=seq, extras=extras),
                          continuations=conts if kind == "choice" else conts[:1], gold=0, chars=[1, 1]))
    task = TaskSpec(name="t", kind=kind, source="x", choices="options" if kind == "choice" else None)
    return Prepared(task=task, items=items)


def plain_scores(adapter, prepared, drop):
    with surgery.skipped(adapter, drop), torch.no_grad():
        return score_continuations(adapter, teacher_rows(prepared), 2)


def drop_sets(adapter, most: int = 2) -> list[tuple[int, ...]]:
    protected = adapter.protected_layers()
    return [d for k in range(most + 1) for d in itertools.combinations(range(LAYERS), k)
            if not set(d) & protected]


def assert_close(a, b, tol=1e-5):
    assert [n for _, n in a] == [n for _, n in b]
    worst = max(abs(x - y) / max(1.0, abs(y)) for (x, _), (y, _) in zip(a, b))
    assert worst <= tol, worst


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_trie_and_prefix_equal_the_plain_forward_on_every_family(family_id):
    tiny = make_tiny(family_id, num_layers=LAYERS)
    adapter = Adapter.wrap(tiny.model)
    prepared = tiny_task(tiny)
    drops = drop_sets(adapter)
    plain = {d: plain_scores(adapter, prepared, d) for d in drops}
    assert len({tuple(lp for lp, _ in s) for s in plain.values()}) == len(drops), "every set differs"
    for mode in engine.MODES:
        work = engine.SharedWork.for_task(adapter, prepared, batch_size=2, mode=mode)
        seen = set()
        for drop, scored, _ in work.row_scores(drops):
            assert_close(scored, plain[drop])
            seen.add(drop)
        assert seen == set(drops)
        full = sum(LAYERS - len(d) for d in drops) * len(work.batches)
        assert work.layer_calls < full, (mode, work.layer_calls, full)


def test_trie_does_less_work_than_prefix_and_duplicates_are_done_once():
    tiny = make_tiny("llama", num_layers=LAYERS)
    adapter = Adapter.wrap(tiny.model)
    prepared = tiny_task(tiny, kind="nll")
    drops = drop_sets(adapter, most=3)
    calls = {}
    for mode in engine.MODES:
        work = engine.SharedWork.for_task(adapter, prepared, batch_size=2, mode=mode)
        out = list(work.run(drops + drops[:5]))
        assert len(out) == len(drops)
        calls[mode] = work.layer_calls
    assert calls["trie"] < calls["prefix"]


def test_cache_limit_is_honoured_and_changes_nothing_but_the_work():
    tiny = make_tiny("qwen2", num_layers=LAYERS)
    adapter = Adapter.wrap(tiny.model)
    prepared = tiny_task(tiny)
    drops = drop_sets(adapter, most=3)
    roomy = engine.SharedWork.for_task(adapter, prepared, batch_size=2)
    ref = {d: s for d, s, _ in roomy.row_scores(drops)}
    root = roomy._bytes
    one_state = root  # every stored state has the root's size
    tight = engine.SharedWork.for_task(adapter, prepared, batch_size=2, cache_mem=root + one_state)
    peak = 0
    for drop, scored, _ in tight.row_scores(drops):
        peak = max(peak, tight._bytes)
        assert_close(scored, ref[drop], tol=0)
    assert peak <= root + one_state
    assert tight.layer_calls > roomy.layer_calls, "a tighter cache recomputes more"


def test_generative_tasks_and_bad_sizes_are_refused():
    tiny = make_tiny("llama", num_layers=LAYERS)
    adapter = Adapter.wrap(tiny.model)
    prepared = tiny_task(tiny)
    prepared.task = TaskSpec(name="g", kind="generate", source="x")
    with pytest.raises(LayercutError, match="layer-skip"):
        engine.SharedWork.for_task(adapter, prepared)
    with pytest.raises(LayercutError, match="cache-mem"):
        engine.parse_mem("lots")
    assert engine.parse_mem("2GiB") == 2 * 1024**3
    assert engine.parse_mem("500MB") == 500 * 1024**2


def test_sweep_engines_give_the_same_table(tiny_text_dir, tmp_path):
    from layercut import api

    scores = tmp_path / "scores.json"
    api.score(str(tiny_text_dir), "builtin:text:4", max_length=64).save(scores)
    tables = {}
    for name in ("plain", "prefix", "trie"):
        spec = SweepSpec(model=str(tiny_text_dir),
                         methods=["math", "general", "mixed", "bi", "block", "last", "uniform", "spacing", "random"],
                         budgets=[0, 1, 2, 3], tasks=["nll-math", "mmlu-math"], scores=str(scores),
                         limit=4, engine=name, cache_mem="64MB" if name == "trie" else None)
        df = run_sweep(spec, tmp_path / name)
        tables[name] = df.sort_values(["method", "budget", "task", "metric"]).reset_index(drop=True)
    for name in ("prefix", "trie"):
        a, b = tables[name], tables["plain"]
        pd.testing.assert_frame_equal(a.drop(columns=["value", "seconds"]), b.drop(columns=["value", "seconds"]))
        assert (a["value"] - b["value"]).abs().max() <= 1e-5


@pytest.mark.parametrize("path", ["tiny_text_dir", pytest.param("tiny_llava_dir", marks=pytest.mark.needs_data)])
def test_iterative_on_the_engine_picks_as_plain_views(path, request):
    """`iterative` scores each greedy round's candidates through the engine (`loss_fn.many`):
    same losses and the same picks as a plain layer-skip view per candidate, for less work."""
    from layercut import api, selection

    adapter = api.load_model(str(request.getfixturevalue(path)))
    samples = api.calibration("builtin:all:2" if "llava" in path else "builtin:text:3")
    fns = {e: engine.calibration_loss_fn(adapter, samples, max_length=48, engine=e) for e in ("plain", "trie")}
    assert not hasattr(fns["plain"], "many")
    for drop in ([], [2], [1, 4]):
        assert fns["trie"](drop) == pytest.approx(fns["plain"](drop), rel=1e-5, abs=1e-6)
    picks = {e: selection.select(None, "iterative", 3, num_layers=LAYERS, loss_fn=f) for e, f in fns.items()}
    assert picks["trie"].drop == picks["plain"].drop
    assert picks["trie"].params["losses"] == pytest.approx(picks["plain"].params["losses"], rel=1e-5)


def test_iterative_falls_back_to_plain_views_where_the_engine_cannot_follow(tiny_text_dir, monkeypatch):
    """A model whose own logits the engine's tail cannot reproduce still gets `iterative`."""
    from layercut import api

    adapter = api.load_model(str(tiny_text_dir))
    monkeypatch.setattr(Adapter, "head", lambda self, hidden: torch.zeros(hidden.shape[0], 7))
    fn = engine.calibration_loss_fn(adapter, api.calibration("builtin:text:2"), max_length=32)
    assert not hasattr(fn, "many")
    with surgery.skipped(adapter, [2]), torch.no_grad():
        from layercut.data.encode import encode_batches
        from layercut.evaluation import token_nll

        want = token_nll(adapter, list(encode_batches(adapter, api.calibration("builtin:text:2"),
                                                      batch_size=8, max_length=32)))["all"]
    assert fn([2]) == pytest.approx(want, rel=1e-6)
