"""INTERLACE on hand-made block statistics: a worked example whose answers are in the comments,
and random (tie-heavy) statistics against a direct transcription of the published rule."""

from __future__ import annotations

import numpy as np
import pytest

from layercut.errors import LayercutError
from layercut.interlace import VARIANTS, groups, similarities, train_layers, train_next
from layercut.scoring import DomainScores, LayerScores
from layercut.selection import Selection, select

L = 10


def blocks(overrides: dict[tuple[int, int], float]) -> list[list[float]]:
    """d(l, n) = 0.5 + 0.01 l + 0.02 n (so lower layers look more redundant), except where overridden."""
    return [[overrides.get((l, n), 0.5 + 0.01 * l + 0.02 * n) for n in range(1, L - l + 1)] for l in range(L)]


# Protect {0, 9}. Triplets by d(l, 3) ascending (= sim descending): start 0 (0.01, but 0 is
# protected: skipped), starts 6 and 7 tie at 0.03 (the lower, 6, goes first: layers 6 7 8; 7 then
# overlaps), start 1 (0.08: layers 1 2 3); every other start overlaps a taken layer. Free: 0 4 5 9,
# so the pack-2 fallback has one pair, (4, 5).
# Inside: d(6,1)=.30 > d(7,1)=.10, so 7 is more redundant: drop 7, train 6, anchor 8. d(1,1) = d(2,1)
# = .20, a tie: drop the first (1), train 2, anchor 3. d(5,1)=.05 < d(4,1)=.56: drop 5, train 4.
WORKED = blocks({(0, 3): 0.01, (6, 3): 0.03, (7, 3): 0.03, (1, 3): 0.08,
                 (6, 1): 0.30, (7, 1): 0.10, (1, 1): 0.20, (2, 1): 0.20, (5, 1): 0.05})
# For the general domain only: the best triplet is start 3 (layers 3 4 5), then 6 (6 7 8); then
# start 1 (layers 1 2 3) overlaps 3, and no pair is left but (1, 2).
GENERAL = blocks({(3, 3): 0.02, (6, 3): 0.04})


def domain(block: list[list[float]], samples: int = 10) -> DomainScores:
    return DomainScores(cosine=[0.5] * L, angular=[0.5] * L, tokens=[100] * L, zero_norm=[0] * L,
                        samples=samples, block_distance=block, block_samples=samples)


def scores(**domains: list[list[float]]) -> LayerScores:
    return LayerScores(num_layers=L, domains={name: domain(b) for name, b in domains.items()})


def test_pack_similarity_is_one_minus_the_block_distance():
    sim3 = similarities(WORKED, 3)
    assert len(sim3) == L - 2 and sim3[0] == pytest.approx(0.99) and sim3[2] == pytest.approx(1 - 0.58)
    assert len(similarities(WORKED, 1)) == L and len(similarities(WORKED, 2)) == L - 1


def test_worked_example():
    sel = select(scores(math=WORKED), "interlace", 3)
    assert sel.drop == [7, 1, 5] and sel.train == [6, 2, 4]
    assert sel.params["anchors"] == [8, 3, None] and sel.params["packs"] == [3, 3, 2]
    assert sel.params["domains"] == ["math"] and sel.params["block_tokens"] == "last"
    # A budget takes a prefix of the rule's order.
    assert select(scores(math=WORKED), "interlace", 2).drop == [7, 1]
    oa = select(scores(math=WORKED), "interlace-oa", 3)  # same groups, always the first dropped
    assert oa.drop == [6, 1, 4] and oa.train == [7, 2, 5]
    # train-next by d(l, 1) ascending: 5 (.05) 7 (.10) 1 (.20) 2 (.20) 6 (.30) 0 (.52) 3 (.55) ...
    # 5+6, 7+8, 1+2 taken; 2 and 6 are taken; 0 is protected; 3+4 taken: four pairs in all.
    tn = select(scores(math=WORKED), "interlace-tn", 4)
    assert tn.drop == [5, 7, 1, 3] and tn.train == [6, 8, 2, 4] and tn.params["anchors"] == [None] * 4


def test_per_domain_and_pooled():
    both = scores(math=WORKED, general=GENERAL)
    assert select(both, "interlace", 2, domain="math").drop == [7, 1]
    general = select(both, "interlace", 3, domain="general")
    assert general.drop == [3, 6, 1] and general.train == [4, 7, 2] and general.params["packs"] == [3, 3, 2]
    # Pooled (equal block samples: the mean of the two): d(l, 3) is .035 at start 6, .285 at 0
    # (protected), .305 at 3, then only overlaps. In triplet 6, d(7,1) = .345 < d(6,1) = .44: drop 7;
    # in triplet 3, d(3,1) = .55 < d(4,1) = .56: drop 3.
    pooled = select(both, "interlace", 2)
    assert pooled.drop == [7, 3] and pooled.train == [6, 4] and pooled.params["anchors"] == [8, 5]
    assert pooled.params["domains"] == ["math", "general"]


def test_protected_layers_are_never_dropped_nor_trained_but_may_anchor():
    s = scores(math=WORKED)
    # Protecting 7 removes triplets 6 and 7 (7 is in their first two); triplet 1 is taken, then
    # triplet 4 (layers 4 5 6; d(5,1) = .05: drop 5, train 4).
    sel = select(s, "interlace", 2, protect=[0, 7, 9])
    assert sel.drop == [1, 5] and sel.train == [2, 4] and sel.params["anchors"] == [3, 6]
    # Protecting 2 removes triplets 1 and 2; after triplet 6, triplet 3 (d(3,1) < d(4,1): drop 3).
    sel = select(s, "interlace", 2, protect=[0, 2, 9])
    assert sel.drop == [7, 3] and sel.train == [6, 4]
    # A protected layer may be the frozen anchor: 8 protected, triplet 6 (6 7 | 8) still stands.
    assert select(s, "interlace", 1, protect=[0, 8, 9]).params["anchors"] == [8]
    # The probe's critical layer 6 (a guard) removes triplet 6; triplet 7 (7 8 | 9) anchors on
    # the protected last layer: d(7,1) = .10 < d(8,1) = .60, drop 7, train 8.
    guarded = select(s, "interlace+guard", 2, guard=[6])
    assert guarded.drop == [7, 1] and guarded.train == [8, 2] and guarded.params["anchors"] == [9, 3]
    assert guarded.protect == [0, 6, 9]


def test_budget_beyond_the_rule_is_one_line_naming_the_largest():
    s = scores(math=WORKED)
    for budget in (4, 7, 8, 20):  # 8 and 20 are past the 8 droppable layers too
        with pytest.raises(LayercutError, match=r"^method 'interlace' can drop at most 3 layers here .*"
                           r"use a budget of at most 3$") as err:
            select(s, "interlace", budget)
        assert "\n" not in str(err.value)
    with pytest.raises(LayercutError, match="at most 4$"):
        select(s, "interlace-tn", 5)
    assert select(s, "interlace", 0).drop == [] and select(s, "interlace", 0).train == []


def test_needs_block_distances():
    bare = LayerScores(num_layers=L, domains={"math": domain([], samples=0)})
    with pytest.raises(LayercutError, match="no block distances"):
        select(bare, "interlace", 1)
    with pytest.raises(LayercutError, match="needs layer scores"):
        select(None, "interlace", 1, num_layers=L)


def test_train_layers_survive_the_selection_file(tmp_path):
    sel = select(scores(math=WORKED), "interlace", 3)
    sel.save(tmp_path / "sel.json")
    again = Selection.load(tmp_path / "sel.json")
    assert again == sel and again.train == [6, 2, 4] and train_layers(again) == [6, 2, 4]
    # Other methods: no train list, and their files are as before (no new key).
    math = select(scores(math=WORKED), "uniform", 2)
    assert math.train == [] and "train" not in math.to_dict()["params"]


def test_train_next_for_picks_without_their_own():
    # drop 3 -> 5 (4 is dropped); drop 4 -> 6 (5 is chosen); drop 8 -> nothing after (9 protected),
    # so the nearest before that is free: 7.
    assert train_next([3, 4, 8], L, {0, 9}) == [5, 6, 7]
    assert train_next([1, 2], 4, {0, 3}) == []  # nothing left to train
    sel = select(scores(math=WORKED), "block", 2, protect=[0, 9])
    assert train_layers(sel) == train_next(sel.drop, L, {0, 9})


# ---- random statistics against a transcription of the published rule --------------------------


def transcribe(d: list[list[float]], protect: set[int], budget: int, variant: str) -> tuple[list[int], list[int]]:
    """The rule as INTERLACE's selection reads: sort each pack's start layers by similarity, highest
    first (a stable sort, so ties keep the lower layer first); walk them, skipping any group with an
    assigned layer or (our addition) a protected layer among its first two; stop at the budget."""
    n_layers = len(d)
    pack = {n: {l: 1.0 - d[l][n - 1] for l in range(n_layers - n + 1)} for n in (1, 2, 3)}
    drops: list[int] = []
    trains: list[int] = []
    assigned: list[int] = []
    if variant == "interlace-tn":
        plan = [(sorted(range(n_layers - 1), key=lambda l: pack[1][l], reverse=True), 2)]
    else:
        plan = [(sorted(pack[3], key=lambda l: pack[3][l], reverse=True), 3),
                (sorted(pack[2], key=lambda l: pack[2][l], reverse=True), 2)]
    for keys, size in plan:
        for l in keys:
            if len(drops) == budget:
                return drops, trains
            members = list(range(l, l + size))
            if any(m in assigned for m in members) or l in protect or l + 1 in protect:
                continue
            opt1, opt2 = l, l + 1
            if variant == "interlace" and pack[1][opt1] < pack[1][opt2]:
                drops.append(opt2)
                trains.append(opt1)
            else:
                drops.append(opt1)
                trains.append(opt2)
            assigned.extend(members)
    return drops, trains


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_statistics_match_the_transcription(variant):
    rng = np.random.default_rng(7)
    for trial in range(60):
        n_layers = int(rng.integers(4, 24))
        # One decimal: many ties, in the triplet order and inside the pairs.
        d = [[round(float(x), 1) for x in rng.uniform(0.0, 0.6, n_layers - l)] for l in range(n_layers)]
        protect = {0, n_layers - 1} | {int(i) for i in rng.choice(n_layers, int(rng.integers(0, 3)))}
        stats = LayerScores(num_layers=n_layers, domains={"math": DomainScores(
            cosine=[0.5] * n_layers, angular=[0.5] * n_layers, tokens=[1] * n_layers, zero_norm=[0] * n_layers,
            samples=3, block_distance=d, block_samples=3)})
        most = len(groups(d, protect, variant))
        assert most == len(transcribe(d, protect, 10**6, variant)[0])
        for budget in range(most + 1):
            sel = select(stats, variant, budget, protect=protect)
            assert (sel.drop, sel.train) == transcribe(d, protect, budget, variant), (trial, budget)
            assert not protect & set(sel.drop + sel.train)
            assert len(set(sel.drop + sel.train)) == 2 * budget
        with pytest.raises(LayercutError, match=f"use a budget of at most {most}$"):
            select(stats, variant, most + 1, protect=protect)
