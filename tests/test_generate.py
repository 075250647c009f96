"""Generation under a token budget: batches stay under it, and the answers do not change."""

from __future__ import annotations

import dataclasses

import pytest

from layercut import models
from layercut.errors import LayercutError
from layercut.evaluation import TASKS, evaluate, prepare
from layercut.evaluation import generate as gen


def test_batches_fill_a_token_budget_longest_first():
    lengths = [10, 40, 25, 5, 30]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    assert list(gen._batches(order, lengths, 2, None)) == [[1, 4], [2, 0], [3]]
    budgeted = list(gen._batches(order, lengths, 2, 80))
    assert budgeted == [[1, 4], [2, 0, 3]]  # 2 x 40 <= 80, then 3 x 25 <= 80: batch_size is not used
    assert all(len(b) * lengths[b[0]] <= 80 for b in budgeted)
    assert list(gen._batches(order, lengths, 2, 30)) == [[1], [4], [2], [0, 3]]  # a row over budget goes alone


def test_a_token_budget_keeps_the_answers_and_bounds_every_batch(tiny_text_dir, monkeypatch):
    adapter = models.load(str(tiny_text_dir))
    spec = dataclasses.replace(TASKS["nll-math"], kind="generate", target="{answer}", max_new_tokens=5,
                               extractor="number", metric="math_equiv", until=("\n\n",))
    prepared = prepare(spec, adapter, limit=6)
    widths = []
    real = gen._generate_batch

    def spy(adapter, ctxs, *args, **kwargs):
        widths.append((len(ctxs), max(len(c.ids) for c in ctxs) + kwargs["max_new_tokens"]))
        return real(adapter, ctxs, *args, **kwargs)

    monkeypatch.setattr(gen, "_generate_batch", spy)
    one, budgeted = [], []
    evaluate(adapter, prepared, batch_size=1, details=one)
    widths.clear()
    longest = max(len(it.context.ids) for it in prepared.items) + 5
    evaluate(adapter, prepared, batch_size=1, details=budgeted, max_tokens_per_batch=3 * longest)
    assert [d["output"] for d in one] == [d["output"] for d in budgeted]
    assert sum(n for n, _ in widths) == 6 and len(widths) < 6, widths
    assert all(n * width <= 3 * longest for n, width in widths)
    with pytest.raises(LayercutError, match="positive token budget"):
        evaluate(adapter, prepared, max_tokens_per_batch=0)
