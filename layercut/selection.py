"""Which decoder layers to drop: layer scores, a method and a budget in, an ordered list out.

Every method is a pure function of (scores, budget, constraints); nothing here touches a model.
Protected layers (by default the first and the last) are never dropped, and every tie goes to the
lower layer index, so the same inputs always give the same selection. A method is a row of
`METHODS`; any domain name in the scores also works as a method ("math": the k layers with the
highest s^math, i.e. the ones that change math tokens least). INTERLACE also names layers to train.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from layercut import interlace
from layercut.errors import LayercutError
from layercut.scoring import DomainScores, LayerScores

FORMAT = "layercut.selection/1"
MATH = "math"  # the domain that `mixed`, `mixed-rank`, `nonmath` and `spacing` single out
NONMATH = "nonmath"  # every domain but math, pooled by token count


@dataclass
class Selection:
    """The layers one method chose to drop, with what it needs to be redone or reported."""

    method: str
    budget: int
    drop: list[int]  # original layer indices, in the order chosen (most removable first)
    num_layers: int
    protect: list[int]  # layers that were never candidates, sorted
    params: dict[str, Any] = field(default_factory=dict)  # what the method used: alpha, min_gap, seed, ...

    @property
    def train(self) -> list[int]:  # layers to fine-tune in full, one per drop (INTERLACE; else [])
        return [int(i) for i in self.params.get("train", [])]

    def kept(self) -> list[int]:
        dropped = set(self.drop)
        return [i for i in range(self.num_layers) if i not in dropped]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Selection":
        return cls(
            method=str(d["method"]),
            budget=int(d["budget"]),
            drop=[int(i) for i in d["drop"]],
            num_layers=int(d["num_layers"]),
            protect=[int(i) for i in d["protect"]],
            params=dict(d.get("params", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Selection":
        path = Path(path)
        if not path.is_file():
            raise LayercutError(f"selection file '{path}' not found: run `layercut prune` (or select()) first")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LayercutError(
                f"selection file '{path}' is not a layercut selection ({exc.__class__.__name__}): write it again"
            ) from None


def select(
    scores: LayerScores | None,
    method: str,
    budget: int,
    *,
    num_layers: int | None = None,
    protect: Iterable[int] | None = None,
    domain: str | None = None,
    alpha: float = 0.5,
    min_gap: int | None = None,
    seed: int = 0,
    loss_fn: Callable[[list[int]], float] | None = None,
    threshold: int | None = None,
    damage: Sequence[float | None] | None = None,
    guard: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """Choose `budget` layers to drop with `method` (a name in METHODS or a domain in the scores).

    `protect` replaces the default {0, L-1}; build it with `default_protect` to add to it.
    `damage`: single-drop NLL increase per layer (`probe.DamageProfile.damage`), for `damage`.
    A method name ending in GUARD ('math+guard') also protects the `guard` layers (the probe's
    flagged critical layers) before choosing. `progress(done, total)` follows `iterative`'s
    candidate evaluations (the slow method).
    Budget 0 is the unpruned baseline: an empty drop for every method, without consulting its own
    inputs (domain, block distances, loss_fn).
    """
    base = method.removesuffix(GUARD)
    entry, domain = _resolve(base, domain, scores)
    L = _num_layers(scores, num_layers)
    protected = default_protect(L) if protect is None else {int(i) for i in protect}
    if base != method:
        if guard is None:
            raise LayercutError(f"method '{method}' needs the critical layers of a probe: run "
                                "`layercut probe` and pass --probe")
        protected |= {int(i) for i in guard}
    outside = sorted(i for i in protected if not 0 <= i < L)
    if outside:
        raise LayercutError(f"protect {outside} is out of range for {L} layers: use indices 0..{L - 1}")
    droppable = L - len(protected)
    if budget < 0:
        raise LayercutError(f"budget {budget} is negative: use a budget between 0 and {droppable - 1}")
    if budget and budget >= droppable and not entry.own_budget:  # interlace: its own, lower limit
        raise LayercutError(f"budget {budget} >= {droppable} droppable layers ({L} layers, {len(protected)} "
                            f"protected): use a budget of at most {droppable - 1}")
    if entry.needs_scores and scores is None:
        raise LayercutError(f"method '{method}' needs layer scores: run `layercut score` and pass its scores")
    if damage is not None and len(damage) != L:
        raise LayercutError(f"the probe is for {len(damage)} layers, not {L}: probe this model")
    request = _Request(scores, budget, L, frozenset(protected), domain, alpha, min_gap, seed, loss_fn,
                       threshold, damage, progress)
    drop, params = entry.run(request) if budget else ([], {})
    return Selection(method, budget, drop, L, sorted(protected), params)


def default_protect(num_layers: int, extra: Iterable[int] = ()) -> set[int]:
    """The first and last layers, which depth-pruning studies keep, plus model-specific ones."""
    return {0, num_layers - 1} | {int(i) for i in extra}


def protect_set(
    num_layers: int, protect: str | Iterable[int] | None, family_protected: Iterable[int] = ()
) -> set[int]:
    """The user's protected layers ("default" = first and last, "none", or indices) plus the family's."""
    if protect is None or protect == "default":
        chosen = default_protect(num_layers)
    elif protect == "none":
        chosen = set()
    elif isinstance(protect, str):
        try:
            chosen = {int(x) for x in protect.split(",") if x.strip()}
        except ValueError:
            raise LayercutError(f"--protect '{protect}': give layer indices like 0,29, or 'default' or 'none'") from None
    else:
        chosen = {int(x) for x in protect}
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad:
        raise LayercutError(f"protected layer {bad[0]} does not exist (layers 0..{num_layers - 1}): fix --protect")
    return chosen | set(family_protected)


@dataclass(frozen=True)
class _Request:
    """One validated call to `select`: what every method function receives."""

    scores: LayerScores | None  # never None for a method with needs_scores
    budget: int  # k >= 1
    num_layers: int
    protect: frozenset[int]
    domain: str | None
    alpha: float
    min_gap: int | None
    seed: int
    loss_fn: Callable[[list[int]], float] | None
    threshold: int | None = None  # hybrid: first budget that is spacing-constrained
    damage: Sequence[float | None] | None = None  # damage: single-drop NLL increase per layer
    progress: Callable[[int, int], None] | None = None  # iterative: (candidates evaluated, total)

    @property
    def candidates(self) -> list[int]:
        return [i for i in range(self.num_layers) if i not in self.protect]


@dataclass(frozen=True)
class Method:
    run: Callable[[_Request], tuple[list[int], dict[str, Any]]]  # -> (drop in chosen order, params)
    description: str  # one line, shown by `layercut methods`
    needs_scores: bool = True
    own_budget: bool = False  # the method checks the budget itself (interlace: one drop per triplet)


# ---- the methods, in the order of METHODS ---------------------------------------------------


def _by_domain(r: _Request) -> tuple[list[int], dict[str, Any]]:
    if r.domain is None:
        raise LayercutError(
            f"method 'domain' needs domain=: pass one of {', '.join(r.scores.domains)} or '{NONMATH}'"
        )
    scores, names = _domain_scores(r.scores, r.domain)
    return _top(r.candidates, scores.cosine, r.budget), {"domains": names}


def _nonmath(r: _Request) -> tuple[list[int], dict[str, Any]]:
    scores, names = _domain_scores(r.scores, NONMATH)
    return _top(r.candidates, scores.cosine, r.budget), {"domains": names}


def _mixed(r: _Request) -> tuple[list[int], dict[str, Any]]:
    if not 0.0 <= r.alpha <= 1.0:
        raise LayercutError(f"alpha {r.alpha} is outside [0, 1]: pass the weight of math in the mix")
    s_math, s_nonmath, names = _math_and_nonmath(r.scores, "mixed")
    mix = [r.alpha * m + (1.0 - r.alpha) * n for m, n in zip(s_math, s_nonmath)]
    return _top(r.candidates, mix, r.budget), {"alpha": r.alpha, "nonmath": names}


def _mixed_rank(r: _Request) -> tuple[list[int], dict[str, Any]]:
    # Ranks, not raw cosines: the two cosine profiles need not share a scale, and ranks weigh
    # them equally whatever their spread.
    s_math, s_nonmath, names = _math_and_nonmath(r.scores, "mixed-rank")
    rank_math = _ranks(r.candidates, s_math)
    rank_nonmath = _ranks(r.candidates, s_nonmath)
    order = sorted(r.candidates, key=lambda i: (rank_math[i] + rank_nonmath[i], i))
    return order[: r.budget], {"nonmath": names}


def _bi(r: _Request) -> tuple[list[int], dict[str, Any]]:
    scores, names = _domain_scores(r.scores, None)
    influence = [1.0 - s for s in scores.cosine]
    return sorted(r.candidates, key=lambda i: (influence[i], i))[: r.budget], {"domains": names}


def _block(r: _Request) -> tuple[list[int], dict[str, Any]]:
    scores, names = _domain_scores(r.scores, r.domain)
    if not scores.block_distance:
        raise LayercutError("the scores have no block distances: re-run `layercut score` with block distances on")
    k = r.budget
    starts = [l for l in range(r.num_layers - k + 1) if r.protect.isdisjoint(range(l, l + k))]
    if not starts:
        raise LayercutError(
            f"no {k} consecutive unprotected layers for method 'block': lower the budget or protect fewer layers"
        )
    start = min(starts, key=lambda l: (scores.block_distance[l][k - 1], l))
    params = {"domains": names, "start": start, "distance": scores.block_distance[start][k - 1]}
    return list(range(start, start + k)), params


def _last(r: _Request) -> tuple[list[int], dict[str, Any]]:
    # Nearest the final layer first, so a smaller budget's drop is a prefix of a larger one's.
    drop = list(range(r.num_layers - 2, r.num_layers - 2 - r.budget, -1))
    hit = sorted(r.protect.intersection(drop))
    if hit:
        room = 0
        while r.num_layers - 2 - room >= 0 and r.num_layers - 2 - room not in r.protect:
            room += 1
        raise LayercutError(
            f"method 'last' would drop protected layer(s) {hit}: use a budget of at most {room} "
            "or leave them out of protect"
        )
    return drop, {}


def _uniform(r: _Request) -> tuple[list[int], dict[str, Any]]:
    # The middle of each of k equal segments of the unprotected list; integer arithmetic, and
    # k < len(candidates) makes the picks distinct.
    c, k = r.candidates, r.budget
    return [c[(2 * j + 1) * len(c) // (2 * k)] for j in range(k)], {}


def _spacing(r: _Request) -> tuple[list[int], dict[str, Any]]:
    name = r.domain if r.domain is not None else (MATH if MATH in r.scores.domains else None)
    scores, names = _domain_scores(r.scores, name)
    order = _top(r.candidates, scores.cosine, len(r.candidates))
    k = r.budget
    if r.min_gap is not None:
        if r.min_gap < 1:
            raise LayercutError(f"min_gap {r.min_gap} is below 1: pass a gap of at least 1 (1 = no constraint)")
        gap, drop = r.min_gap, _spaced(order, k, r.min_gap)
        if len(drop) < k:
            raise LayercutError(
                f"min_gap {gap} leaves room for only {len(drop)} of {k} layers: lower min_gap or the budget"
            )
    else:
        c = r.candidates
        widest = (c[-1] - c[0]) // (k - 1) if k > 1 else 1  # one layer needs no gap
        for gap in range(widest, 0, -1):  # gap 1 always fits, since k < len(candidates)
            drop = _spaced(order, k, gap)
            if len(drop) == k:
                break
    return drop, {"domains": names, "min_gap": gap}


def _random(r: _Request) -> tuple[list[int], dict[str, Any]]:
    rng = np.random.default_rng(r.seed)
    return [int(i) for i in rng.choice(r.candidates, size=r.budget, replace=False)], {"seed": r.seed}


def _iterative(r: _Request) -> tuple[list[int], dict[str, Any]]:
    if r.loss_fn is None:
        raise LayercutError("method 'iterative' needs loss_fn(drop list) -> calibration loss: pass one")
    # A loss_fn with `many(drops)` scores a whole round at once (engine.calibration_loss_fn: shared work).
    many = getattr(r.loss_fn, "many", None) or (lambda drops: [r.loss_fn(d) for d in drops])
    drop: list[int] = []
    losses: list[float] = []
    n = len(r.candidates)
    total, done = sum(n - k for k in range(r.budget)), 0
    for _ in range(r.budget):
        cands = [c for c in r.candidates if c not in drop]
        trials = [(float(loss), c) for loss, c in zip(many([drop + [c] for c in cands]), cands)]
        done += len(cands)
        if r.progress:
            r.progress(done, total)
        for loss, c in trials:
            if math.isnan(loss):
                raise LayercutError(f"loss_fn returned nan for drop {drop + [c]}: check the calibration loss")
        loss, best = min(trials)
        drop.append(best)
        losses.append(loss)
    return drop, {"losses": losses}


def _hybrid(r: _Request) -> tuple[list[int], dict[str, Any]]:
    # Below the structure-dominated regime the ranking matters most; from it on, spacing does.
    if r.threshold is None:
        raise LayercutError(
            "method 'hybrid' needs threshold= (the budget where spacing takes over): take it from "
            "`layercut report`'s regime analysis or pass --hybrid-threshold"
        )
    name = r.domain if r.domain is not None else (MATH if MATH in r.scores.domains else None)
    if r.budget < r.threshold:
        scores, names = _domain_scores(r.scores, name)
        drop, params = _top(r.candidates, scores.cosine, r.budget), {"domains": names, "mode": "ranking"}
    else:
        drop, params = _spacing(_Request(**{**r.__dict__, "domain": name}))
        params["mode"] = "spacing"
    return drop, {**params, "threshold": r.threshold}


def _damage(r: _Request) -> tuple[list[int], dict[str, Any]]:
    if r.damage is None:
        raise LayercutError("method 'damage' needs a single-drop damage profile: run `layercut probe` "
                            "and pass --probe")
    known = [i for i in r.candidates if r.damage[i] is not None]
    if len(known) <= r.budget:
        raise LayercutError(f"the probe measured {len(known)} of the droppable layers, too few for budget "
                            f"{r.budget}: probe with the same protected layers")
    return sorted(known, key=lambda i: (r.damage[i], i))[:r.budget], {}


def _interlace(r: _Request, variant: str) -> tuple[list[int], dict[str, Any]]:
    stats, names = _domain_scores(r.scores, r.domain)  # the rule lives in module `interlace`
    return interlace.choose(stats, names, r.scores.block_tokens, r.num_layers, r.budget, r.protect, variant)


METHODS: dict[str, Method] = {
    "domain": Method(_by_domain, "k highest cosine on domain= (or name the domain itself as the method)"),
    NONMATH: Method(_nonmath, "k highest cosine on every domain but math, pooled by token count"),
    "mixed": Method(_mixed, "k highest alpha*s_math + (1-alpha)*s_nonmath"),
    "mixed-rank": Method(_mixed_rank, "k smallest mean of the math and non-math rank positions"),
    "bi": Method(_bi, "ShortGPT: k lowest block influence 1 - s on all domains pooled"),
    "block": Method(_block, "Gromov: the k contiguous layers with the smallest angular distance d(l, k)"),
    "last": Method(_last, "the k layers before the final layer", needs_scores=False),
    "uniform": Method(_uniform, "k layers evenly spaced over the unprotected range", needs_scores=False),
    "spacing": Method(_spacing, "greedy on a domain's cosine, dropped layers at least min_gap apart"),
    "random": Method(_random, "k unprotected layers drawn with seed", needs_scores=False),
    "iterative": Method(
        _iterative, "SLEB-like: k rounds, each dropping the layer that raises loss_fn least", needs_scores=False
    ),
    "hybrid": Method(_hybrid, "domain ranking below threshold=, spacing-constrained from it on (ours)"),
    "damage": Method(_damage, "k layers whose single-drop calibration NLL rise is smallest (layercut probe)",
                     needs_scores=False),
    **{v: Method(lambda r, v=v: _interlace(r, v), d, own_budget=True) for v, d in interlace.DESCRIPTIONS.items()},
}
GUARD = "+guard"  # method suffix: protect the probe's critical layers first


# ---- helpers --------------------------------------------------------------------------------


def _resolve(method: str, domain: str | None, scores: LayerScores | None) -> tuple[Method, str | None]:
    """The registry entry for `method`, and the domain it scores on; a domain name is a method."""
    if method in METHODS:
        return METHODS[method], domain
    if scores is not None and method in scores.domains:
        if domain not in (None, method):
            raise LayercutError(
                f"method '{method}' already names a domain, and domain='{domain}' names another: pass only one"
            )
        return METHODS["domain"], method
    if scores is not None:
        also = f"or a domain of the scores ({', '.join(scores.domains)})"
    else:
        also = "or, with scores, a domain name"
    raise LayercutError(f"unknown method '{method}': use one of {', '.join(METHODS)} {also}")


def _num_layers(scores: LayerScores | None, num_layers: int | None) -> int:
    if scores is not None:
        if num_layers is not None and num_layers != scores.num_layers:
            raise LayercutError(
                f"num_layers {num_layers} disagrees with the scores ({scores.num_layers} layers): leave num_layers out"
            )
        num_layers = scores.num_layers
    if num_layers is None:
        raise LayercutError("select() without scores needs num_layers=: pass the model's decoder layer count")
    if num_layers < 1:
        raise LayercutError(f"num_layers {num_layers} is below 1: pass the model's decoder layer count")
    return num_layers


def _domain_scores(scores: LayerScores, name: str | None) -> tuple[DomainScores, list[str]]:
    """One domain's scores, or several pooled (None: all, 'nonmath': all but math); and their names."""
    if name is None:
        names = list(scores.domains)
    elif name == NONMATH and name not in scores.domains:
        names = [n for n in scores.domains if n != MATH]
        if not names:
            raise LayercutError("the scores have no domain besides math: re-score with a non-math calibration domain")
    else:
        names = [name]
    # A single domain is read as stored: pooling one domain would only add rounding.
    return (scores.domain(names[0]) if len(names) == 1 else scores.combined(names)), names


def _math_and_nonmath(scores: LayerScores, method: str) -> tuple[list[float], list[float], list[str]]:
    if MATH not in scores.domains:
        raise LayercutError(
            f"method '{method}' needs a '{MATH}' domain (have: {', '.join(scores.domains)}): "
            "re-score with math calibration samples"
        )
    nonmath, names = _domain_scores(scores, NONMATH)
    return scores.domain(MATH).cosine, nonmath.cosine, names


def _top(candidates: list[int], score: list[float], k: int) -> list[int]:
    """The k candidates with the highest score (least change), lower index first on a tie."""
    return sorted(candidates, key=lambda i: (-score[i], i))[:k]


def _ranks(candidates: list[int], score: list[float]) -> dict[int, int]:
    """Rank 0 = most removable (highest score) among the candidates."""
    return {layer: rank for rank, layer in enumerate(_top(candidates, score, len(candidates)))}


def _spaced(order: list[int], k: int, gap: int) -> list[int]:
    """Walk `order`, keeping a layer only if it is at least `gap` from every one kept; up to k."""
    chosen: list[int] = []
    for layer in order:
        if all(abs(layer - c) >= gap for c in chosen):
            chosen.append(layer)
            if len(chosen) == k:
                break
    return chosen
