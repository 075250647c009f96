"""layercut.models.compat: what differs between the supported transformers versions.

`make test-compat` runs this file on transformers 5.17.0 and 5.25.0 (`make test`: 5.24.0). The
KV cache is `past_key_values` up to 5.23 and `cache` from 5.24; a wrong name is not an error on
either side (the forward swallows it and runs without a cache), so these tests check that the
cache is really used, not only that nothing raised.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from layercut import models
from layercut.evaluation import teacher
from layercut.evaluation.batching import Context
from layercut.evaluation.generate import check_prefix, common_prefix
from layercut.models.compat import cache_kwarg, output_cache, with_cache
from tests.test_evaluation import context_item
from tests.tiny import FAMILY_IDS, TEXT_HI, TEXT_IDS, TEXT_LO, make_tiny


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_the_cache_keyword_is_one_the_forward_takes(family):
    model = make_tiny(family).model
    assert cache_kwarg(model) in inspect.signature(type(model).forward).parameters


@pytest.mark.parametrize("family", TEXT_IDS)
def test_a_forward_continues_from_the_cache_it_returned(family):
    """Context once with use_cache, then the continuation alone with that cache: the same logits
    as one forward of context + continuation (without the cache they differ)."""
    tiny = make_tiny(family)
    ids = tiny.inputs(batch=1, with_image=False, pad=False)["input_ids"]
    cont = torch.randint(TEXT_LO, TEXT_HI, (1, 4), generator=torch.Generator().manual_seed(1))
    full = torch.cat([ids, cont], 1)
    with torch.no_grad():
        want = tiny.model(input_ids=full, use_cache=False).logits[:, ids.shape[1]:]
        cache = output_cache(tiny.model(input_ids=ids, use_cache=True))
        assert cache is not None and cache.get_seq_length() == ids.shape[1]
        got = tiny.model(input_ids=cont, attention_mask=torch.ones_like(full), use_cache=True,
                         **with_cache(tiny.model, cache)).logits
        alone = tiny.model(input_ids=cont, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("family", [*TEXT_IDS, "llava", "gemma3"])
def test_candidates_share_the_context_cache(family):
    """The choice tasks' shortcut (one context pass, its cache repeated per candidate) is taken:
    on 5.17 it silently fell back to plain rows while the cache went under the wrong name."""
    tiny = make_tiny(family)
    adapter = models.Adapter.wrap(tiny.model)
    assert teacher.check_shared(adapter, context_item(tiny))


def test_generation_shares_a_common_prefix_cache(tiny_text_dir):
    """Few-shot prompts: the shared prefix runs once and `generate` continues from its cache (on
    5.17 the cache was read from `output.cache`, which 5.17 does not have: plain rows instead)."""
    adapter = models.load(str(tiny_text_dir))
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(10, 300, (40,), generator=gen)
    contexts = [Context(ids=torch.cat([prefix, torch.randint(10, 300, (n,), generator=gen)]))
                for n in (3, 5, 4)]
    n = common_prefix(contexts)
    assert n >= 40
    assert check_prefix(adapter, contexts, n)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_the_adapter_head_makes_the_model_logits(family):
    """`Adapter.head` (the engine's tail) gives the forward's logits from the last layer's output:
    Aya Vision's forward scales them by logit_scale from 5.25 on, not before."""
    tiny = make_tiny(family)
    adapter = models.Adapter.wrap(tiny.model)
    inputs = adapter.complete_inputs(tiny.inputs(batch=1, pad=False))
    seen = {}

    def keep(module, args, output):
        seen["last"] = output[0] if isinstance(output, tuple) else output

    handle = adapter.decoder.layers[-1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = tiny.model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.allclose(adapter.head(seen["last"]), logits, atol=1e-4, rtol=1e-4)
