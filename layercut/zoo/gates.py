"""The checks `layercut zoo eval tiny-llava` prints: held-out metrics per task with true and
shuffled images (is the answer read from the picture?), and the gates — accuracy, grounding
(true minus shuffled) and what is left after the best 2-layer drop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from layercut.data import vision


def evaluate_tasks(adapter: Any, limit: int = 40, drop: list[int] | None = None,
                   kinds: tuple[str, ...] = ("choice",), batch_size: int = 8) -> dict[str, Any]:
    """{family: {kind: {"true"|"shuffled": {"all": value, task: value}}}} on the test split.

    `limit` questions per task (families have five tasks each)."""
    from layercut.evaluation import evaluate, prepare
    from layercut.evaluation.tasks import get_task
    from layercut.surgery import skipped

    names = {"choice": "", "nll": "-nll", "generate": "-gen"}
    metric = {"choice": "accuracy", "nll": "nll", "generate": "accuracy"}
    results: dict[str, Any] = {}
    for family, tasks in vision.FAMILIES.items():
        n = limit * len(tasks)
        for kind in kinds:
            for images in ("true", "shuffled"):
                name = family + names[kind] + ("" if images == "true" else ":shuffled")
                prepared = prepare(get_task(name), adapter, limit=n)
                details: list = []
                with skipped(adapter, drop or []):
                    total = evaluate(adapter, prepared, batch_size=batch_size, details=details)
                per = _per_task(details, kind)
                per["all"] = total[metric[kind]]
                results.setdefault(family, {}).setdefault(kind, {})[images] = per
    return results


def _per_task(details: list[dict], kind: str) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for d in details:
        t = d["id"].split("/")[0]
        if kind == "choice":
            v, w = float(d["pick"] == d["gold"]), 1.0
        elif kind == "nll":
            v, w = d["nll"] * d["tokens"], d["tokens"]
        else:
            v, w = float(d["correct"]), 1.0
        s = sums.setdefault(t, [0.0, 0.0])
        s[0] += v
        s[1] += w
    return {t: s[0] / max(s[1], 1e-9) for t, s in sums.items()}


# --- the gates `layercut zoo eval tiny-llava` prints ---------------------------------------

GATE_ACCURACY = 0.6  # choice accuracy per family, true images
GATE_GROUNDING = 0.25  # true - shuffled choice accuracy per family
GATE_PRUNED = 0.7  # with 2 layers dropped by the best method: share of the unpruned accuracy
PRUNE_METHODS = ("math", "general", "mixed", "bi", "block", "last", "uniform", "spacing")


def vision_scores(adapter: Any, n_per_domain: int = 32, scope: str = "all", seed: int = 0) -> Any:
    """Layer scores on the calib split: math-vision as "math", general-vision as "general"."""
    import tempfile

    from layercut.data import builtin
    from layercut.data.encode import encode_batches
    from layercut.scoring import score

    with tempfile.TemporaryDirectory(prefix="layercut-vision-calib-") as tmp:
        samples = builtin.build_samples("vision", n_per_domain, seed, "calib", image_dir=Path(tmp))
        return score(adapter, encode_batches(adapter, samples, batch_size=8), scope=scope,
                     meta={"calibration": "in-memory", "max_length": 1024})


def gates(adapter: Any, limit: int = 20, budget: int = 2, kinds: tuple[str, ...] = ("choice",),
          methods: tuple[str, ...] = PRUNE_METHODS, calib_n: int = 32,
          log: Callable[[str], None] = print, gate_pruned: bool = True) -> dict[str, Any]:
    """Unpruned metrics (true vs shuffled images), the best `budget`-layer drop among `methods`
    (scored on the calib split), its metrics, and the three gates per family. `gate_pruned`
    False (the LayerDrop-free control): what is kept after the drop is measured, "passed" None."""
    from layercut.selection import protect_set, select

    t0 = time.perf_counter()
    unpruned = evaluate_tasks(adapter, limit=limit, kinds=kinds)
    log(f"unpruned: {time.perf_counter() - t0:.0f} s")
    scores = vision_scores(adapter, calib_n)
    protect = protect_set(scores.num_layers, None, adapter.protected_layers())
    picks: dict[tuple[int, ...], list[str]] = {}
    for m in methods:
        picks.setdefault(tuple(sorted(select(scores, m, budget, protect=protect).drop)), []).append(m)
    tried = []
    for drop, ms in picks.items():
        ev = evaluate_tasks(adapter, limit=limit, drop=list(drop), kinds=("choice",))
        accs = {f: ev[f]["choice"]["true"]["all"] for f in ev}
        tried.append({"drop": list(drop), "methods": ms, "choice": accs,
                      "mean": sum(accs.values()) / len(accs)})
        log(f"drop {list(drop)} ({', '.join(ms)}): " +
            ", ".join(f"{f} {a:.3f}" for f, a in accs.items()) + f" ({time.perf_counter() - t0:.0f} s)")
    best = max(tried, key=lambda r: r["mean"])
    pruned = evaluate_tasks(adapter, limit=limit, drop=best["drop"], kinds=kinds)
    table = []
    for family in vision.FAMILIES:
        t = unpruned[family]["choice"]["true"]["all"]
        s = unpruned[family]["choice"]["shuffled"]["all"]
        p = pruned[family]["choice"]["true"]["all"]
        table += [
            {"family": family, "gate": f"choice accuracy >= {GATE_ACCURACY}", "value": t,
             "threshold": GATE_ACCURACY, "passed": t >= GATE_ACCURACY},
            {"family": family, "gate": f"true - shuffled >= {GATE_GROUNDING}", "value": t - s,
             "threshold": GATE_GROUNDING, "passed": t - s >= GATE_GROUNDING},
            {"family": family, "gate": (f"{budget} dropped / unpruned >= {GATE_PRUNED}" if gate_pruned
                                        else f"{budget} dropped / unpruned"),
             "value": p / t if t else 0.0, "threshold": GATE_PRUNED,
             "passed": (t > 0 and p / t >= GATE_PRUNED) if gate_pruned else None},
        ]
    return {"limit_per_task": limit, "budget": budget, "unpruned": unpruned, "pruned": pruned,
            "best": best, "tried": tried, "gates": table, "scores": scores.to_dict(),
            "seconds": time.perf_counter() - t0}
