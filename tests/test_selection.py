"""Selection methods on hand-made scores whose answers are worked out in the comments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layercut.errors import LayercutError
from layercut.scoring import DomainScores, LayerScores
from layercut.selection import METHODS, Selection, default_protect, select

L = 10
# Default protect is {0, 9}; both get the highest cosines so a method that forgot them would pick them.
MATH = [0.99, 0.50, 0.90, 0.60, 0.95, 0.70, 0.80, 0.80, 0.40, 0.98]  # 6 and 7 tie
GENERAL = [0.99, 0.90, 0.30, 0.50, 0.20, 0.60, 0.40, 0.10, 0.70, 0.99]
CODE = [0.99, 0.50, 0.30, 0.70, 0.20, 0.40, 0.62, 0.10, 0.80, 0.99]
TOKENS = {"math": 200, "general": 100, "code": 300}
# nonmath pooled by tokens = 0.25*general + 0.75*code, on layers 1..8:
#   .60 .30 .65 .20 .45 .565 .10 .775   -> top: 8, 3, 1, 6
# an unweighted mean would give .70 .30 .60 .20 .50 .51 .10 .75 -> top: 8, 1, 3, 6
# all three pooled (200 math, 100 general, 300 code) on layers 1..8:
#   .567 .500 .633 .450 .533 .643 .333 .650 -> top: 8, 6, 3, 1


def block_matrix(overrides: dict[tuple[int, int], float]) -> list[list[float]]:
    """d(l, n) = 0.5 + 0.01 l + 0.02 n, except where overridden."""
    return [
        [overrides.get((l, n), 0.5 + 0.01 * l + 0.02 * n) for n in range(1, L - l + 1)] for l in range(L)
    ]


# For n = 3 the global minima (start 0 and 7) hold a protected layer. Pooled (equal block samples)
# the valid starts 1..6 give .397 .42 .59 .233 .61 .62 -> start 4. Math alone -> start 2.
# General alone ties starts 1 and 4 at .05 -> start 1. Code alone -> start 4.
BLOCKS = {
    "math": block_matrix({(0, 3): 0.01, (7, 3): 0.02, (2, 3): 0.10}),
    "general": block_matrix({(0, 3): 0.01, (7, 3): 0.02, (4, 3): 0.05, (1, 3): 0.05}),
    "code": block_matrix({(0, 3): 0.01, (7, 3): 0.02, (4, 3): 0.05}),
}


def domain(cosine: list[float], tokens: int, block: list[list[float]] | None = None) -> DomainScores:
    return DomainScores(
        cosine=list(cosine),
        angular=[0.0] * L,
        tokens=[tokens] * L,
        zero_norm=[0] * L,
        samples=tokens // 10,
        block_distance=block or [],
        block_samples=10 if block else 0,
    )


def make_scores(names: tuple[str, ...] = ("math", "general", "code"), blocks: bool = True) -> LayerScores:
    cosines = {"math": MATH, "general": GENERAL, "code": CODE}
    return LayerScores(
        num_layers=L,
        domains={n: domain(cosines[n], TOKENS[n], BLOCKS[n] if blocks else None) for n in names},
    )


@pytest.fixture
def scores() -> LayerScores:
    return make_scores()


# ---- registry and result object -----------------------------------------------------------


def test_registry_lists_every_method_with_a_description():
    assert list(METHODS) == [
        "domain", "nonmath", "mixed", "mixed-rank", "bi", "block",
        "last", "uniform", "spacing", "random", "iterative", "hybrid", "damage",
        "interlace", "interlace-oa", "interlace-tn",
    ]  # fmt: skip
    assert all(m.description for m in METHODS.values())


def test_default_protect():
    assert default_protect(10) == {0, 9}
    assert default_protect(10, [4, 2]) == {0, 2, 4, 9}


def test_selection_fields_and_kept(scores):
    sel = select(scores, "math", 3)
    assert sel.method == "math"
    assert sel.budget == 3
    assert sel.num_layers == L
    assert sel.protect == [0, 9]
    assert sel.kept() == [0, 1, 3, 5, 7, 8, 9]


def test_save_load_round_trip(scores, tmp_path):
    def losses(drop):
        return sum(drop) / 7

    for sel in (
        select(scores, "spacing", 3),
        select(scores, "block", 3),
        select(scores, "mixed", 3, alpha=0.3),
        select(None, "iterative", 4, num_layers=L, protect=[0, 5, 9], loss_fn=losses),
    ):
        path = tmp_path / f"{sel.method}.json"
        sel.save(path)
        assert json.loads(path.read_text())["format"] == "layercut.selection/1"
        again = Selection.load(path)
        assert again == sel
        assert again.to_dict() == sel.to_dict()


def test_load_errors(tmp_path):
    with pytest.raises(LayercutError, match="not found"):
        Selection.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"method": "math"}')
    with pytest.raises(LayercutError, match="not a layercut selection"):
        Selection.load(bad)


# ---- domain methods -----------------------------------------------------------------------


def test_math_drops_highest_cosine_never_protected(scores):
    # Layers 0 and 9 have the highest math cosine but are protected.
    sel = select(scores, "math", 3)
    assert sel.drop == [4, 2, 6]
    assert sel.params == {"domains": ["math"]}


def test_tie_goes_to_lower_index(scores):
    assert select(scores, "math", 4).drop == [4, 2, 6, 7]  # 6 and 7 both 0.80


def test_any_domain_name_and_domain_method_agree(scores):
    assert select(scores, "general", 3).drop == [1, 8, 5]
    assert select(scores, "domain", 3, domain="general").drop == [1, 8, 5]
    assert select(scores, "code", 2).drop == [8, 3]


def test_nonmath_pools_by_token_count(scores):
    sel = select(scores, "nonmath", 4)
    assert sel.drop == [8, 3, 1, 6]  # an unweighted mean would give [8, 1, 3, 6]
    assert sel.params == {"domains": ["general", "code"]}
    assert select(scores, "domain", 4, domain="nonmath").drop == [8, 3, 1, 6]


def test_nonmath_without_math_domain_pools_everything():
    only = make_scores(("general", "code"))
    assert select(only, "nonmath", 3).drop == [8, 3, 1]


def test_custom_protect_replaces_default(scores):
    # Nothing but 2 and 4 protected: 0 (0.99) and 9 (0.98) are now the best math candidates.
    sel = select(scores, "math", 3, protect=[4, 2])
    assert sel.drop == [0, 9, 6]
    assert sel.protect == [2, 4]
    assert select(scores, "math", 3, protect=default_protect(L, [4, 2])).drop == [6, 7, 5]


def test_budget_edges(scores):
    # 8 droppable layers: 7 is the largest budget, 8 is refused.
    assert select(scores, "math", 7).drop == [4, 2, 6, 7, 5, 3, 1]
    with pytest.raises(LayercutError, match="budget 8 >= 8 droppable layers"):
        select(scores, "math", 8)
    with pytest.raises(LayercutError, match="budget -1 is negative"):
        select(scores, "math", -1)


@pytest.mark.parametrize("method", [*METHODS, "math", "general"])
def test_budget_zero_drops_nothing(scores, method):
    sel = select(scores, method, 0)
    assert sel.drop == []
    assert sel.kept() == list(range(L))


# ---- mixed --------------------------------------------------------------------------------


def test_mixed_alpha(scores):
    # alpha 1 is math alone, alpha 0 is pooled nonmath alone.
    assert select(scores, "mixed", 3, alpha=1.0).drop == [4, 2, 6]
    assert select(scores, "mixed", 3, alpha=0.0).drop == [8, 3, 1]
    # alpha .5 on layers 1..8: .55 .60 .625 .575 .575 .6825 .45 .5875
    sel = select(scores, "mixed", 3)
    assert sel.drop == [6, 3, 2]
    assert sel.params == {"alpha": 0.5, "nonmath": ["general", "code"]}


def test_mixed_rank(scores):
    # math ranks    4:0 2:1 6:2 7:3 5:4 3:5 1:6 8:7
    # nonmath ranks 8:0 3:1 1:2 6:3 5:4 2:5 4:6 7:7
    # sums 1:8 2:6 3:6 4:6 5:8 6:5 7:10 8:7 -> 6, then the 2/3/4 tie by index
    assert select(scores, "mixed-rank", 4).drop == [6, 2, 3, 4]


def test_mixed_needs_math_and_another_domain():
    with pytest.raises(LayercutError, match="needs a 'math' domain"):
        select(make_scores(("general", "code")), "mixed", 2)
    with pytest.raises(LayercutError, match="no domain besides math"):
        select(make_scores(("math",)), "mixed-rank", 2)
    with pytest.raises(LayercutError, match=r"alpha 1.5 is outside \[0, 1\]"):
        select(make_scores(), "mixed", 2, alpha=1.5)


# ---- bi, block, last, uniform --------------------------------------------------------------


def test_bi_pools_all_domains(scores):
    sel = select(scores, "bi", 3)
    assert sel.drop == [8, 6, 3]
    assert sel.params == {"domains": ["math", "general", "code"]}


def test_block_avoids_protected_layers(scores):
    sel = select(scores, "block", 3)
    assert sel.drop == [4, 5, 6]
    assert sel.params["start"] == 4
    assert sel.params["distance"] == pytest.approx((0.60 + 0.05 + 0.05) / 3)
    # Nothing protected: the global minimum at start 0 wins.
    assert select(scores, "block", 3, protect=[]).drop == [0, 1, 2]
    # 5 protected rules out starts 3..5; of 1, 2, 6 the best is 1.
    assert select(scores, "block", 3, protect=[0, 5, 9]).drop == [1, 2, 3]
    assert select(scores, "block", 2).drop == [1, 2]  # untouched d(l, 2) grows with l


def test_block_per_domain(scores):
    assert select(scores, "block", 3, domain="math").drop == [2, 3, 4]
    assert select(scores, "block", 3, domain="general").drop == [1, 2, 3]  # tie with start 4
    assert select(scores, "block", 3, domain="nonmath").drop == [4, 5, 6]


def test_block_errors(scores):
    with pytest.raises(LayercutError, match="no block distances"):
        select(make_scores(blocks=False), "block", 3)
    with pytest.raises(LayercutError, match="no 3 consecutive unprotected layers"):
        select(scores, "block", 3, protect=[0, 3, 6, 9])


def test_last(scores):
    assert select(scores, "last", 3).drop == [8, 7, 6]
    assert select(None, "last", 1, num_layers=L).drop == [8]
    assert select(scores, "last", 2, protect=default_protect(L, [6])).drop == [8, 7]
    with pytest.raises(LayercutError, match=r"protected layer\(s\) \[6\]: use a budget of at most 2"):
        select(scores, "last", 3, protect=default_protect(L, [6]))


def test_uniform():
    # Unprotected 1..8: the middle of each of k equal segments.
    assert select(None, "uniform", 1, num_layers=L).drop == [5]
    assert select(None, "uniform", 3, num_layers=L).drop == [2, 5, 7]
    assert select(None, "uniform", 4, num_layers=L).drop == [2, 4, 6, 8]
    assert select(None, "uniform", 7, num_layers=L).drop == [1, 2, 3, 5, 6, 7, 8]
    # Unprotected 1, 4, 5, 6, 7, 8.
    assert select(None, "uniform", 2, num_layers=L, protect=[0, 2, 3, 9]).drop == [4, 7]


# ---- spacing -------------------------------------------------------------------------------


def test_spacing_default_gap_is_the_largest_that_fits(scores):
    # math order 4 2 6 7 5 3 1 8. k=2: gaps 7, 6, 5 find no partner for 4; gap 4 finds 8.
    sel = select(scores, "spacing", 2)
    assert sel.drop == [4, 8]
    assert sel.params == {"domains": ["math"], "min_gap": 4}
    # k=3: widest 7 // 2 = 3; 4, then 7, then 1.
    assert select(scores, "spacing", 3).drop == [4, 7, 1]
    assert select(scores, "spacing", 3).params["min_gap"] == 3
    # k=4: widest 2; 4, 2, 6, 8.
    assert select(scores, "spacing", 4).drop == [4, 2, 6, 8]


def test_spacing_explicit_gap(scores):
    assert select(scores, "spacing", 3, min_gap=1).drop == [4, 2, 6]  # no constraint = math
    assert select(scores, "spacing", 3, min_gap=3).drop == [4, 7, 1]
    with pytest.raises(LayercutError, match="min_gap 4 leaves room for only 2 of 3 layers"):
        select(scores, "spacing", 3, min_gap=4)
    with pytest.raises(LayercutError, match="min_gap 0 is below 1"):
        select(scores, "spacing", 3, min_gap=0)


def test_spacing_domain_choice():
    sel = select(make_scores(), "spacing", 4, domain="general")
    assert sel.drop == [1, 8, 5, 3]
    assert sel.params == {"domains": ["general"], "min_gap": 2}
    # Without a math domain the default is every domain pooled: order 8 3 1 6 5 2 4 7.
    # Gap 3 keeps 8 and 3 and then nothing else fits; gap 2 adds 1.
    sel = select(make_scores(("general", "code")), "spacing", 3)
    assert sel.drop == [8, 3, 1]
    assert sel.params == {"domains": ["general", "code"], "min_gap": 2}


# ---- random, iterative ---------------------------------------------------------------------


def test_random_is_seeded():
    a = select(None, "random", 4, num_layers=L, seed=0)
    assert a.drop == select(None, "random", 4, num_layers=L, seed=0).drop
    assert a.drop == [int(i) for i in np.random.default_rng(0).choice(list(range(1, 9)), 4, replace=False)]
    assert a.params == {"seed": 0}
    assert len(set(a.drop)) == 4 and set(a.drop) <= set(range(1, 9))
    others = {tuple(select(None, "random", 4, num_layers=L, seed=s).drop) for s in range(1, 6)}
    assert others - {tuple(a.drop)}


def test_iterative_remeasures_after_each_drop():
    cost = {1: 3.0, 2: 1.0, 3: 1.2, 4: 4.0, 5: 2.0, 6: 5.0, 7: 6.0, 8: 7.0}
    calls = []

    def loss(drop):
        calls.append(list(drop))
        adjacent = sum(1 for a in drop for b in drop if b == a + 1)
        return sum(cost[i] for i in drop) + 10.0 * adjacent

    # Round 1: 2 (1.0). Round 2: 3 would cost 12.2 next to 2, so 5 (3.0).
    # Round 3: 4 and 6 touch 5, 1 and 3 touch 2; 7 (9.0) beats 8 (10.0).
    # Plain cost order would have given [2, 3, 5].
    sel = select(None, "iterative", 3, num_layers=L, loss_fn=loss)
    assert sel.drop == [2, 5, 7]
    assert sel.params == {"losses": [1.0, 3.0, 9.0]}
    assert len(calls) == 8 + 7 + 6
    assert not any({0, 9} & set(c) for c in calls)


def test_iterative_ties_and_errors():
    assert select(None, "iterative", 3, num_layers=L, loss_fn=lambda d: 0.0).drop == [1, 2, 3]
    with pytest.raises(LayercutError, match="needs loss_fn"):
        select(None, "iterative", 2, num_layers=L)
    with pytest.raises(LayercutError, match="returned nan"):
        select(None, "iterative", 2, num_layers=L, loss_fn=lambda d: float("nan"))


# ---- argument errors -----------------------------------------------------------------------


def test_unknown_method_lists_methods(scores):
    with pytest.raises(LayercutError, match=r"unknown method 'foo': use one of domain, nonmath, .*iterative, hybrid, damage, interlace, interlace-oa, interlace-tn .*math"):
        select(scores, "foo", 2)
    with pytest.raises(LayercutError, match="unknown method 'math'.*with scores"):
        select(None, "math", 2, num_layers=L)


def test_unknown_domain_lists_available(scores):
    with pytest.raises(LayercutError, match=r"no domain 'physics' in the scores \(have: code, general, math\)"):
        select(scores, "domain", 2, domain="physics")
    with pytest.raises(LayercutError, match="needs domain="):
        select(scores, "domain", 2)
    with pytest.raises(LayercutError, match="pass only one"):
        select(scores, "math", 2, domain="general")


def test_scores_required(scores):
    for method in ("bi", "domain", "nonmath", "mixed", "mixed-rank", "block", "spacing"):
        with pytest.raises(LayercutError, match=f"method '{method}' needs layer scores"):
            select(None, method, 2, num_layers=L)


def test_layer_count_and_protect_errors(scores):
    with pytest.raises(LayercutError, match=r"protect \[10\] is out of range for 10 layers"):
        select(scores, "math", 2, protect=[0, 10])
    with pytest.raises(LayercutError, match=r"protect \[-1\] is out of range"):
        select(scores, "math", 2, protect=[-1])
    with pytest.raises(LayercutError, match="needs num_layers="):
        select(None, "uniform", 2)
    with pytest.raises(LayercutError, match="disagrees with the scores"):
        select(scores, "math", 2, num_layers=12)
    assert select(scores, "math", 2, num_layers=L).drop == [4, 2]


def test_hybrid_switches_from_ranking_to_spacing_at_the_threshold(scores):
    s = scores
    for k in (1, 2, 3):
        low = select(s, "hybrid", k, threshold=4)
        assert low.drop == select(s, "math", k).drop and low.params["mode"] == "ranking"
    for k in (4, 5):
        high = select(s, "hybrid", k, threshold=4)
        assert high.drop == select(s, "spacing", k).drop and high.params["mode"] == "spacing"
    with pytest.raises(LayercutError, match="threshold"):
        select(s, "hybrid", 2)
