"""INTERLACE (Madinei et al., 2025, arXiv 2511.19676): drop one layer per triplet, fine-tune its
neighbour in full, keep the third frozen as an anchor.

The rule reads only the block distances `scoring` already measures, turned into similarities
  sim(l, n) = 1 - d(l, n),   d(l, n) = mean arccos(cos(x^(l), x^(l+n))) / pi,
where x^(l) is the raw input of layer l and x^(L) the raw output of the last layer (never the
final norm). INTERLACE itself averages cos(h_l, h_{l+n}) over all tokens of each sample: the same
pairs of hidden states, but the mean of an angle is not the angle of a mean cosine, and layercut's
block distances are on each sample's last token unless the scores were made with
`--block-tokens scope`; so the order can differ from the paper's on the same model and data.

`interlace` (one pass of the whole rule; a budget takes a prefix of it):
  1. triplets (l, l+1, l+2) in order of decreasing sim(l, 3), ties to the lower l;
  2. a triplet is taken if none of its layers is in a triplet already taken, and neither of its
     first two layers is protected (the anchor may be: it is kept and frozen either way);
  3. of the first two, the one with the higher sim(., 1) is dropped (the more redundant), the
     other fine-tuned in full; on a tie the first is dropped; the third is the anchor;
  4. when the triplets run out, pairs (l, l+1) by decreasing sim(l, 2), on the same terms and with
     the same choice inside the pair, no anchor.
`interlace-oa` (ordered assignment): the same triplets and pairs, but always drop the first
layer and fine-tune the second, without looking at sim(., 1). `interlace-tn` (train-next): no
triplets; layers by decreasing sim(l, 1), each dropped with the next layer fine-tuned, the two
never overlapping another pair. Every layer neither dropped nor fine-tuned stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from layercut.errors import LayercutError
from layercut.scoring import DomainScores

VARIANTS = ("interlace", "interlace-oa", "interlace-tn")
# Per variant, the passes of the rule: (pack n whose similarity orders the groups, layers per group).
PASSES = {"interlace": ((3, 3), (2, 2)), "interlace-oa": ((3, 3), (2, 2)), "interlace-tn": ((1, 2),)}
WHAT = {"interlace": "one per triplet, then per pack-2 pair", "interlace-oa": "one per triplet, then per pack-2 pair",
        "interlace-tn": "one per pair of a layer and the next"}
DESCRIPTIONS = {  # shown by `layercut methods`
    "interlace": "INTERLACE: triplets by sim(l,3), drop the more redundant of the first two by sim(.,1), "
                 "fine-tune the other (Selection.train), third frozen; then pack-2 pairs",
    "interlace-oa": "INTERLACE ordered assignment: as interlace, but drop each group's first layer, fine-tune the second",
    "interlace-tn": "INTERLACE train-next: layers by sim(l,1), drop l and fine-tune l+1, pairs never overlapping",
}


@dataclass(frozen=True)
class Group:
    """One step of the rule: the layer it drops, the one it fine-tunes, its anchor (if a triplet)."""

    drop: int
    train: int
    anchor: int | None
    pack: int  # the n whose similarity ordered this group (3 triplet, 2 pair, 1 train-next)


def similarities(block_distance: Sequence[Sequence[float]], n: int) -> list[float]:
    """sim(l, n) = 1 - d(l, n) for l = 0..L-n: a similarity of the same order as the distance."""
    return [1.0 - row[n - 1] for row in block_distance if len(row) >= n]


def groups(block_distance: Sequence[Sequence[float]], protect: Iterable[int], variant: str) -> list[Group]:
    """Every group the rule takes, in order, until none is left; a budget k keeps the first k."""
    if variant not in PASSES:
        raise LayercutError(f"unknown INTERLACE variant '{variant}': use one of {', '.join(VARIANTS)}")
    L = len(block_distance)
    protect = set(protect)
    sim1 = similarities(block_distance, 1)
    taken: set[int] = set()
    out: list[Group] = []
    for n, size in PASSES[variant]:
        sim = similarities(block_distance, n)
        for l in sorted(range(L - size + 1), key=lambda l: (-sim[l], l)):
            layers = range(l, l + size)
            if taken.intersection(layers) or l in protect or l + 1 in protect:
                continue
            first = variant != "interlace" or sim1[l] >= sim1[l + 1]  # drop the first layer?
            drop, train = (l, l + 1) if first else (l + 1, l)
            out.append(Group(drop, train, l + 2 if size == 3 else None, n))
            taken.update(layers)
    return out


def choose(stats: DomainScores, domains: list[str], block_tokens: str, num_layers: int, budget: int,
           protect: Iterable[int], variant: str) -> tuple[list[int], dict[str, Any]]:
    """`selection`'s entry, on the scores of `domains` (one, or several pooled): the first `budget`
    drops and, in params, the layers to fine-tune; or a one-line error naming the largest budget."""
    if not stats.block_distance or not stats.block_samples:
        raise LayercutError("the scores have no block distances: re-run `layercut score` with block distances on")
    protect = set(protect)
    found = groups(stats.block_distance, protect, variant)
    if budget > len(found):
        raise LayercutError(
            f"method '{variant}' can drop at most {len(found)} layers here ({WHAT[variant]}; "
            f"{num_layers} layers, {len(protect)} protected): use a budget of at most {len(found)}")
    chosen = found[:budget]
    return [g.drop for g in chosen], {
        "domains": domains, "block_tokens": block_tokens, "train": [g.train for g in chosen],
        "anchors": [g.anchor for g in chosen], "packs": [g.pack for g in chosen]}


def train_next(drop: Sequence[int], num_layers: int, protect: Iterable[int] = ()) -> list[int]:
    """Layers to fine-tune in full for a pick that names none (any non-INTERLACE method): for each
    dropped layer in order, the first kept, unprotected, not yet chosen layer after it, else the
    nearest such layer before it (none if there is none). One per drop: the budget INTERLACE has."""
    free = [i for i in range(num_layers) if i not in set(drop) | set(protect)]
    chosen: list[int] = []
    for d in drop:
        after = [i for i in free if i > d and i not in chosen]
        before = [i for i in free if i < d and i not in chosen]
        if after or before:
            chosen.append(after[0] if after else before[-1])
    return chosen


def train_layers(selection: Any) -> list[int]:
    """The layers to fine-tune for a `Selection`: its own (INTERLACE) or `train_next`'s."""
    return list(selection.train) or train_next(selection.drop, selection.num_layers, selection.protect)
