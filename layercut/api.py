"""The Python API: each stage as one call, and `prune` as the one call for the common case.

    import layercut.api as lc
    scores = lc.score("smollm2-135m", "builtin:text")
    sel = lc.select(scores, "math", budget=6)
    lc.prune("smollm2-135m", "builtin:text", method="math", budget=6, out="runs/m/pruned")

Models are a folder, a hub id or a zoo name (resolved here: the stages below take folders and
loaded models); calibration sets a JSONL path, a list of samples, or
`builtin:text|image|all|vision[:N]` (N samples per domain, default 32). `allow` names family
guards whose layers may be dropped (Mllama's "cross-attention"; a comma-separated string or a
list), checked against the family before any weight loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from layercut import models, selection, surgery, zoo
from layercut.data import Sample
from layercut.data.calibration import calibration
from layercut.errors import LayercutError
from layercut.scoring import LayerScores

__all__ = ["calibration", "check_allow", "heal", "load_model", "probe", "prune", "resolve_model", "score", "select",
           "sweep"]


def resolve_model(model: str) -> str:
    """A zoo name or `random:SHAPE` (seeded random weights of a real model shape, e.g.
    `random:qwen2.5-7b-instruct`) becomes its cached folder (built on first use); a folder or hub
    id passes."""
    return zoo.resolve(model)


def load_model(
    model: str | models.Adapter,
    dtype: str = "fp32",
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
    allow: str | Iterable[str] = (),
) -> models.Adapter:
    """An Adapter passes through (with `allow` added); a name loads in `dtype`, optionally through
    an accelerate device map ("auto", "balanced", a JSON file or a dict; "disk" entries go to
    `offload_folder`)."""
    if isinstance(model, models.Adapter):
        return models.load_model(model, allow=allow)
    return models.load_model(resolve_model(model), dtype, device_map, offload_folder, source=model,
                             hint=f"a cached hub id, a built-in name ({', '.join(zoo.names())}) or random:SHAPE", allow=allow)


def check_allow(model: str, allow: str | Iterable[str]) -> frozenset[str]:
    """`allow` checked against the model's family from its config alone: a typo fails before
    anything heavy starts (a sweep's workers load the weights later)."""
    return models.check_allow(models.family_for(models.read_config(resolve_model(model), model)), allow)


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
    name = str(calib) if not isinstance(calib, list) else "in-memory"
    return score_pass(adapter, batches, scope=scope, block_tokens=block_tokens, progress=progress,
                      meta={"calibration": name, "max_length": max_length})


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
    allow: str | Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """The single-drop damage profile (`probe.DamageProfile`): each layer outside `protect`
    (default: every layer the family allows) dropped alone, calibration NLL per domain."""
    from layercut.probe import probe_samples

    adapter = load_model(model, dtype, device_map, offload_folder, allow)
    return probe_samples(adapter, calibration(calib), protect=protect, batch_size=batch_size,
                         max_length=max_length, cache_mem=cache_mem, progress=progress)


def select(
    scores: LayerScores | str | Path | None,
    method: str,
    budget: int,
    *,
    protect: str | Iterable[int] | None = None,
    model: str | models.Adapter | None = None,
    calib: str | Path | list[Sample] | None = None,
    probe: Any = None,
    allow: str | Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> selection.Selection:
    """Choose `budget` layers to drop. `iterative` also needs `model` and `calib`; `damage` and
    guarded methods ('math+guard') a `probe` (a `probe.DamageProfile` or its JSON file).
    The family's guarded layers are protected unless `allow` (or the loaded `model`) lifts them.
    `progress(done, total)` follows `iterative`'s candidate evaluations (it is the slow one)."""
    if isinstance(scores, (str, Path)):
        scores = LayerScores.load(scores)
    adapter = load_model(model, allow=allow) if model is not None else None
    if scores is not None:
        num_layers = scores.num_layers
        family_protected = sorted(_family_protected(scores, adapter.allowed if adapter else allow))
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
        from layercut.engine import calibration_loss_fn

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
        protect=selection.protect_set(num_layers, protect, family_protected),
        loss_fn=loss_fn,
        progress=progress,
        **options,
    )


def select_stability(
    scores: LayerScores | str | Path,
    methods: list[str],
    budgets: list[int],
    *,
    protect: str | Iterable[int] | None = None,
    allow: str | Iterable[str] = (),
    **options: Any,
) -> Any:
    """How each method's pick moves when the calibration samples are redrawn: a
    `regimes.stability.Stability` (`options`: replicates, seed, draw, progress, and select's own).
    Protection is resolved as in `select`, so the picks are the ones `select` makes."""
    from layercut.regimes.stability import selection_stability

    if isinstance(scores, (str, Path)):
        scores = LayerScores.load(scores)
    protected = selection.protect_set(scores.num_layers, protect, _family_protected(scores, allow))
    return selection_stability(scores, methods, budgets, protect=protected, **options)


def _family_protected(scores: LayerScores, allowed: str | Iterable[str]) -> set[int]:
    """The family's layers a selection from `scores` keeps: the always-protected ones, plus each
    guard's layers unless `allowed` names the guard. Files from before guards were recorded hold
    one merged list: they select as they did, and cannot lift a guard."""
    protected = set(scores.meta.get("family_protected", []))
    guards = scores.meta.get("family_guards")
    if guards is None:
        if models.guard_names(allowed):
            raise LayercutError("this scores file records no guarded layers (made before layercut knew "
                                "guards): re-run `layercut score` to lift a guard with --allow")
        return protected
    allowed = models.check_guard_names(scores.meta.get("family", "the scored model"), guards, allowed)
    for name, layers in guards.items():
        if name not in allowed:
            protected |= set(layers)
    return protected


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
    allow: str | Iterable[str] = (),
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
    from layercut.io import check_out

    out = check_out(out, overwrite)
    adapter = load_model(model, dtype, device_map, offload_folder, allow)
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
        protect=selection.protect_set(adapter.num_layers, protect, family),
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


def sweep(
    spec: Any,
    out: str | Path,
    *,
    resume: bool = False,
    executor: str = "local",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Run (or resume) a `sweep.SweepSpec` into `out` and return the tidy results table; the
    spec's model may be a zoo name (its folder is what every worker loads)."""
    from layercut.sweep import run_sweep

    return run_sweep(spec, out, model_path=resolve_model(spec.model), resume=resume, executor=executor,
                     workers=workers, progress=progress)


def heal(model: str, out: str | Path, **options: Any) -> Any:
    """`heal.heal_checkpoint` (LoRA-heal, merge, save, verify) on a folder, hub id or zoo name;
    returns its `HealStats`."""
    from layercut.heal import heal_checkpoint

    return heal_checkpoint(resolve_model(model), out, source=model, **options)
