"""The Python API: each stage as one call, and `prune` as the one call for the common case.

    import layercut
    scores = layercut.score("smollm2-135m", "builtin:text")
    sel = layercut.select(scores, "math", budget=6)
    layercut.prune("smollm2-135m", "builtin:text", method="math", budget=6, out="runs/m/pruned")

Models are a folder, a hub id or a zoo name; calibration sets a JSONL path, a list of samples, or
`builtin:text|image|all|vision[:N]` (N samples per domain, default 32).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from layercut import models, selection, surgery
from layercut.data import Sample, load_calib
from layercut.errors import LayercutError
from layercut.scoring import LayerScores

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model(
    model: str | models.Adapter,
    dtype: str = "fp32",
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
) -> models.Adapter:
    """An Adapter passes through; a name loads in `dtype`, optionally through an accelerate
    device map ("auto", "balanced", a JSON file or a dict; "disk" entries go to `offload_folder`)."""
    if isinstance(model, models.Adapter):
        return model
    if dtype not in DTYPES:
        raise LayercutError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return models.load(model, DTYPES[dtype], device_map=device_map, offload_folder=offload_folder)


def calibration(calib: str | Path | list[Sample], seed: int = 0) -> list[Sample]:
    """Samples from a JSONL file, a list, or a built-in set named `builtin:KIND[:N]`."""
    if isinstance(calib, list):
        if not calib:
            raise LayercutError("the calibration set is empty: give at least one sample")
        return calib
    calib = str(calib)
    if calib.startswith("builtin:"):
        from layercut.data import builtin

        parts = calib.split(":")
        kind = parts[1] if len(parts) > 1 else "text"
        if kind not in builtin.KINDS:
            raise LayercutError(f"unknown built-in set '{calib}': use one of "
                                + ", ".join(f"builtin:{k}" for k in builtin.KINDS))
        try:
            n = int(parts[2]) if len(parts) > 2 else 32
        except ValueError:
            raise LayercutError(f"'{calib}': the count after the kind must be a whole number") from None
        image_dir = None
        if kind != "text":
            # The rendered images must outlive this call (they are encoded later); gone at exit.
            image_dir = Path(tempfile.mkdtemp(prefix="layercut-calib-"))
            atexit.register(shutil.rmtree, image_dir, ignore_errors=True)
        return builtin.build_samples(kind=kind, n_per_domain=n, seed=seed, split="calib", image_dir=image_dir)
    return load_calib(calib)


def score(
    model: str | models.Adapter,
    calib: str | Path | list[Sample],
    *,
    scope: str = "all",
    block_tokens: str = "last",
    batch_size: int = 8,
    max_length: int = 1024,
    dtype: str = "fp32",
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
    max_tokens_per_batch: int | None = None,
    progress: Callable[[Any], None] | None = None,
) -> LayerScores:
    """Load (if needed), encode the calibration set and run the streaming scoring pass.

    `max_tokens_per_batch` packs length-sorted samples under a token budget instead of
    `batch_size` rows per batch."""
    from layercut.data.encode import encode_batches
    from layercut.scoring import score as score_pass

    adapter = load_model(model, dtype, device_map, offload_folder)
    samples = calibration(calib)
    batches = encode_batches(adapter, samples, batch_size=batch_size, max_length=max_length,
                             max_tokens=max_tokens_per_batch)
    scores = score_pass(adapter, batches, scope=scope, block_tokens=block_tokens, progress=progress)
    scores.meta.update(
        {
            "family": adapter.family.name,
            "family_protected": sorted(adapter.protected_layers()),
            "calibration": str(calib) if not isinstance(calib, list) else "in-memory",
            "samples": {d: s.samples for d, s in scores.domains.items()},
            "dtype": {v: k for k, v in DTYPES.items()}.get(adapter.dtype, str(adapter.dtype)),
            "max_length": max_length,
        }
    )
    if adapter.device_map:
        scores.meta["device_map"] = {k: str(v) for k, v in adapter.device_map.items()}
    return scores


def probe(
    model: str | models.Adapter,
    calib: str | Path | list[Sample],
    *,
    protect: str | Iterable[int] | None = "none",
    batch_size: int = 8,
    max_length: int = 512,
    cache_mem: int | str | None = None,
    dtype: str = "fp32",
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """The single-drop damage profile (`probe.DamageProfile`): each layer outside `protect`
    (default: every layer the family allows) dropped alone, calibration NLL per domain."""
    from layercut.data.encode import encode_batches
    from layercut.probe import probe as probe_pass

    adapter = load_model(model, dtype, device_map, offload_folder)
    batches = list(encode_batches(adapter, calibration(calib), batch_size=batch_size, max_length=max_length))
    never = protect_set(adapter.num_layers, protect, adapter.protected_layers())
    profile = probe_pass(adapter, batches, never, cache_mem=cache_mem, progress=progress)
    profile.model = str(model) if not isinstance(model, models.Adapter) else model.source
    return profile


def protect_set(
    num_layers: int, protect: str | Iterable[int] | None, family_protected: Iterable[int] = ()
) -> set[int]:
    """The user's protected layers ("default" = first and last, "none", or indices) plus the family's."""
    if protect is None or protect == "default":
        chosen = selection.default_protect(num_layers)
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


class BatchedLoss:
    """A calibration loss, loss(drop) -> float, that also scores many drop sets in one call
    (`many`): `iterative` hands it each greedy round whole."""

    def __init__(self, many: Callable[[list[list[int]]], list[float]], engine: Any) -> None:
        self.many, self.engine = many, engine  # engine: the SharedWork behind it (its counters)

    def __call__(self, drop: list[int]) -> float:
        return self.many([drop])[0]


def calibration_loss_fn(
    adapter: models.Adapter, samples: list[Sample], batch_size: int = 8, max_length: int = 512,
    engine: str = "trie", cache_mem: int | str | None = None,
) -> Callable[[list[int]], float]:
    """loss(drop) = mean calibration NLL of the model viewed without `drop` (for `iterative`).

    With engine "trie" (or "prefix") it is a `BatchedLoss` whose `many(drops)` evaluates one
    greedy round's candidates at the cost of their distinct work (`SharedWork`): each candidate
    shares the layers before it with the others. "plain" runs a layer-skip view per drop set;
    both give the same numbers."""
    from layercut.data.encode import encode_batches
    from layercut.engine import SharedWork
    from layercut.evaluation import token_nll

    batches = list(encode_batches(adapter, samples, batch_size=batch_size, max_length=max_length))

    def loss(drop: list[int]) -> float:
        with surgery.skipped(adapter, drop):
            return token_nll(adapter, batches)["all"]

    if engine == "plain":
        return loss
    try:
        work = SharedWork.for_calibration(adapter, batches, cache_mem=cache_mem, mode=engine)
    except LayercutError:  # a model the engine cannot reproduce: the plain views, same numbers
        return loss

    def many(drops: list[list[int]]) -> list[float]:
        got = {drop: metrics["all"] for drop, metrics, _ in work.run(drops)}
        return [got[tuple(sorted(set(d)))] for d in drops]

    return BatchedLoss(many, work)


def select(
    scores: LayerScores | str | Path | None,
    method: str,
    budget: int,
    *,
    protect: str | Iterable[int] | None = None,
    model: str | models.Adapter | None = None,
    calib: str | Path | list[Sample] | None = None,
    probe: Any = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> selection.Selection:
    """Choose `budget` layers to drop. `iterative` also needs `model` and `calib`; `damage` and
    guarded methods ('math+guard') a `probe` (a `probe.DamageProfile` or its JSON file).
    `progress(done, total)` follows `iterative`'s candidate evaluations (it is the slow one)."""
    if isinstance(scores, (str, Path)):
        scores = LayerScores.load(scores)
    adapter = load_model(model) if model is not None else None
    if scores is not None:
        num_layers = scores.num_layers
        family_protected = scores.meta.get("family_protected", [])
    elif adapter is not None:
        num_layers = adapter.num_layers
        family_protected = sorted(adapter.protected_layers())
    else:
        raise LayercutError("selection needs a scores file (--scores) or a model (--model)")
    if adapter is not None and adapter.num_layers != num_layers:
        raise LayercutError(
            f"the scores are for {num_layers} layers but the model has {adapter.num_layers}: "
            "score this model first"
        )
    if adapter is not None:
        family_protected = sorted(set(family_protected) | adapter.protected_layers())
    loss_fn = None
    if method.removesuffix(selection.GUARD) == "iterative":
        if adapter is None or calib is None:
            raise LayercutError("method 'iterative' re-measures the model: pass --model and --calib")
        loss_fn = calibration_loss_fn(adapter, calibration(calib))
    if probe is not None:
        from layercut.probe import DamageProfile

        profile = probe if isinstance(probe, DamageProfile) else DamageProfile.load(probe)
        options.setdefault("damage", profile.damage(options.get("domain") or "all"))
        options.setdefault("guard", profile.flagged)
    return selection.select(
        scores,
        method,
        budget,
        num_layers=num_layers,
        protect=protect_set(num_layers, protect, family_protected),
        loss_fn=loss_fn,
        progress=progress,
        **options,
    )


def prune(
    model: str | models.Adapter,
    calib: str | Path | list[Sample] | None = None,
    *,
    out: str | Path,
    method: str = "math",
    budget: int = 6,
    scores: LayerScores | str | Path | None = None,
    drop: Iterable[int] | None = None,
    protect: str | Iterable[int] | None = None,
    mergekit: bool = False,
    overwrite: bool = False,
    dtype: str = "fp32",
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
    max_tokens_per_batch: int | None = None,
    **options: Any,
) -> surgery.Recipe:
    """Score (unless `scores` or `drop` is given), select, drop, save and verify, in one call.

    A model loaded through a device map is pruned where it lies and saved as a normal checkpoint."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    adapter = load_model(model, dtype, device_map, offload_folder)
    scores_file = scores if isinstance(scores, (str, Path)) else None
    params: dict[str, Any] = {}
    if drop is None:
        entry = selection.METHODS.get(method.removesuffix(selection.GUARD))
        if scores is None and (entry is None or entry.needs_scores):
            if calib is None:
                raise LayercutError(f"method '{method}' needs layer scores: pass --scores or --calib")
            scores = score(adapter, calib, max_tokens_per_batch=max_tokens_per_batch)
        sel = select(scores, method, budget, protect=protect, model=adapter, calib=calib, **options)
        drop, params = sel.drop, sel.params
    else:
        drop = list(drop)
        method, budget = "explicit", len(drop)
    family = sorted(adapter.protected_layers())
    return surgery.prune(
        adapter,
        drop,
        out,
        protect=protect_set(adapter.num_layers, protect, family),
        method=method,
        budget=budget,
        params=params,
        scores_file=scores_file,
        calibration=_calibration_name(calib, scores),
        inputs=surgery.probe_inputs(adapter),
        mergekit=mergekit,
        overwrite=overwrite,
    )


def _calibration_name(calib: Any, scores: Any) -> str | None:
    """The calibration set behind a selection, recorded in the recipe (`layercut heal`'s default
    data): `calib` if it names one, else what the scores file says it was scored on."""
    name = calib if isinstance(calib, (str, Path)) else None
    if name is None and isinstance(scores, (str, Path)) and Path(scores).is_file():
        scores = LayerScores.load(scores)
    if name is None and isinstance(scores, LayerScores):
        name = scores.meta.get("calibration")
    if name is None or name == "in-memory":
        return None
    name = str(name)
    return str(Path(name).absolute()) if Path(name).is_file() else name
