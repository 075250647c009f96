"""Every method at every budget on every task, with the weights loaded once.

A sweep is a plan of cells (method, budget, task). Each method's selection at each budget gives a
drop set; each distinct drop set is evaluated once per task through a layer-skip view of the one
loaded model (`surgery.skipped`: no reload, no copy, KV cache still right), and its result is
fanned out to every cell that chose the same set (marked `shared`).

Results stream to `cells.jsonl`, one fsync'd line per evaluated (drop set, task), and the tidy
table `results.parquet` + `results.csv` is rewritten after each. A sweep killed at any moment
resumes with `resume=True`: finished lines are kept, a torn last line is dropped, nothing is
evaluated twice. `executor="ray"` spreads (drop set, task) units over Ray actors that each load
the model once.

Teacher-forced tasks (nll, choice) go through `engine.SharedWork` by default (`engine="trie"`): the
distinct drop sets of a task are ordered as a trie over their kept-layer sequences, each shared
prefix of layers is computed once (within `cache_mem` bytes of stored hidden states), and the LM
head runs only at scored positions. `engine="prefix"` only reuses the unpruned model's layers up to
each set's first dropped layer; `engine="plain"` runs every set as a full layer-skip view (as
generative tasks always do). All three give the same numbers.

A task named `lm-eval:TASK` or `lmms-eval:TASK` (`evaluation.harness`) is evaluated through that
harness on the same layer-skip view, once per distinct drop set: it is loaded once per sweep
(before the model, so an unknown, judge-scored or not-offline task stops the sweep at once), its
rows carry the harness's metric names and directions, and each cell's per-sample records are kept
under samples/ for audit.

`hybrid` needs the budget where spacing takes over: unless given, the sweep first runs the other
methods, finds the structure-dominated regime in their results (`regimes.hybrid_threshold`), and
then plans the hybrid cells.

Here: planning and `run_sweep`. `spec`: what a sweep is (sweep.json) and its units of work;
`log`: cells.jsonl and the tidy tables; `workers`: the local and Ray executors.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from layercut.errors import LayercutError
from layercut.selection import GUARD
from layercut.sweep.log import COLUMNS, LOG_FILE, Picks, ResultsLog

HARNESS_LOG = "harness.log"  # what lm-eval and lmms-eval print during a sweep (`harness.quiet`)
from layercut.sweep.spec import (
    ENGINES,
    HEAL_MODES,
    HEAL_TAG,
    PROBE_FILE,
    SPEC_FILE,
    SweepSpec,
    Unit,
    parse_budgets,
    resume_spec,
)
from layercut.sweep.workers import Worker, ray_pool, run_local, run_ray

__all__ = ["COLUMNS", "HARNESS_LOG", "HEAL_TAG", "LOG_FILE", "PROBE_FILE", "SPEC_FILE", "ResultsLog", "SweepSpec", "Unit",
           "check_folder", "check_spec", "parse_budgets", "plan_selections", "resume_spec", "run_sweep"]


# --------------------------------------------------------------------------- planning


def plan_selections(
    spec: SweepSpec, scores: Any, adapter: Any = None, methods: Iterable[str] | None = None,
    profile: Any = None, threshold: int | None = None, trains: Picks | None = None,
) -> Picks:
    """(method, budget) -> drop list, for the given methods (default: the spec's); `profile`, the
    damage profile (default: the spec's probe file); `threshold`, hybrid's (default: the spec's).
    `trains`, when given, is filled with each pick's layers to fine-tune in full
    (`interlace.train_layers`: INTERLACE's own, else the next kept layer after each drop)."""
    from layercut import selection
    from layercut.interlace import train_layers, train_next
    from layercut.data.calibration import calibration
    from layercut.engine import calibration_loss_fn

    methods = list(spec.methods if methods is None else methods)
    protect = set(spec.protected)
    options = {k: v for k, v in spec.options.items() if k in ("alpha", "min_gap", "domain")}
    if profile is None and spec.probe:
        from layercut.probe import DamageProfile

        profile = DamageProfile.load(spec.probe)
    if profile is not None:
        options.update(damage=profile.damage(options.get("domain") or "all"), guard=profile.flagged)
    picks: dict[tuple[str, int], list[int]] = {}
    for method in methods:
        base = method.removesuffix(selection.GUARD)
        if base == "iterative":
            # Greedy and deterministic: the budget-k choice is the first k of the largest run.
            loss_fn = calibration_loss_fn(adapter, calibration(spec.calib), engine=spec.engine,
                                          cache_mem=spec.cache_mem)
            top = max(spec.budgets)
            sel = selection.select(scores, method, top, num_layers=spec.num_layers, protect=protect,
                                   loss_fn=loss_fn, guard=options.get("guard"))
            for k in spec.budgets:
                picks[(method, k)] = sel.drop[:k]
                if trains is not None:
                    trains[(method, k)] = sorted(train_next(sel.drop[:k], spec.num_layers, protect))
            continue
        given = threshold if threshold is not None else spec.options.get("hybrid_threshold")
        extra = {"threshold": given} if base == "hybrid" else {}
        for k in spec.budgets:
            sel = selection.select(
                scores, method, k, num_layers=spec.num_layers, protect=protect, seed=spec.seed,
                **options, **extra,
            )
            picks[(method, k)] = sel.drop
            if trains is not None:
                trains[(method, k)] = sorted(train_layers(sel))  # a set, like the drop: one unit key
    return picks



# --------------------------------------------------------------------------- the sweep


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    model_path: str | None = None,
    resume: bool = False,
    executor: str = "local",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep into `out`; returns the tidy results table.

    The model is loaded from `model_path` (default `spec.model`, a folder or hub id; a zoo name
    is resolved by `api.sweep`), once per worker."""
    from layercut import models
    from layercut.evaluation import get_task, harness
    from layercut.scoring import LayerScores
    from layercut.selection import protect_set

    out = check_folder(out, resume)
    created = not out.exists()
    if executor not in ("local", "ray"):
        raise LayercutError(f"unknown executor '{executor}': use local or ray")
    added: list[str] = []
    if resume:
        spec, added = resume_spec(SweepSpec.load(out / SPEC_FILE), spec, out)
    # A resumed sweep's scores are its folder's copy (resume_spec checked --scores holds the same).
    scores = LayerScores.load(out / "scores.json" if resume else spec.scores) if spec.scores else None
    check_spec(spec, scores)
    # Harness tasks load (and are checked: installed, known, offline) before the model does; what
    # the harnesses print goes to OUT/harness.log (kept here until the folder is made).
    chatter = tempfile.TemporaryFile("w+", encoding="utf-8")
    with harness.quiet(chatter):
        harnessed = {t: harness.prepare(t, spec.include_path) for t in spec.tasks if harness.is_harness_task(t)}
    domains = {t: harnessed[t].domain if t in harnessed else get_task(t).domain for t in spec.tasks}
    if spec.cache_mem is not None:
        from layercut.engine import parse_mem

        parse_mem(spec.cache_mem)  # a bad size fails now, not after the model loads
    path = model_path or spec.model
    worker = Worker(spec, path, harnessed) if executor == "local" else None
    adapter = worker.adapter if worker else models.load_model(path, spec.dtype, spec.device_map, source=spec.model,
                                                              allow=spec.allow)
    spec.num_layers = adapter.num_layers
    spec.protected = sorted(protect_set(spec.num_layers, spec.protect, adapter.protected_layers()))
    if scores is not None and scores.num_layers != spec.num_layers:
        raise LayercutError(f"the scores are for {scores.num_layers} layers, the model has {spec.num_layers}: re-score")
    if max(spec.budgets) >= spec.num_layers:
        raise LayercutError(f"budget {max(spec.budgets)} >= {spec.num_layers} layers: lower --budgets")

    # Everything that can refuse the sweep runs before its folder is made: the probe the methods
    # need, and every selection (the first phase's picks are kept; hybrid is tried as a pure
    # ranking when its threshold is still to be found).
    profile = _probe_for(spec, out, adapter)
    hybrid = [m for m in spec.methods if m.removesuffix(GUARD) == "hybrid"]
    phases = [[m for m in spec.methods if m not in hybrid]] + ([hybrid] if hybrid else [])
    trains: Picks | None = {} if spec.heal_steps and spec.heal == "interleaved" else None
    picks = plan_selections(spec, scores, adapter, phases[0], profile, trains=trains)
    if hybrid and spec.options.get("hybrid_threshold") is None:
        plan_selections(spec, scores, adapter, hybrid, profile, threshold=max(spec.budgets) + 1)

    out.mkdir(parents=True, exist_ok=True)
    log = None
    try:
        if scores is not None and not resume:
            scores.save(out / "scores.json")
        if profile is not None and spec.probe != str(out / PROBE_FILE):
            profile.save(out / PROBE_FILE)
            spec.probe = str(out / PROBE_FILE)
        if not resume or added:
            spec.save(out / SPEC_FILE)
        if harnessed and not os.environ.get(harness.VERBOSE_ENV):
            chatter.seek(0)
            with open(out / HARNESS_LOG, "a", encoding="utf-8") as f:
                f.write(chatter.read())
            if worker is not None:
                worker.harness_log = out / HARNESS_LOG
        log = ResultsLog(out, domains)
        return _run_phases(spec, out, log, phases, picks, trains, scores, adapter, executor, path, worker, workers,
                           progress)
    except BaseException:
        if created and (log is None or not log.done):  # refused or stopped before its first cell
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_spec(spec: SweepSpec, scores: Any = None) -> None:
    """Refuse a sweep whose methods, budgets, tasks or options cannot run, before anything is
    loaded or written (the checks that need the model follow in `run_sweep`, still before writing)."""
    from layercut.evaluation import get_task, harness
    from layercut.selection import METHODS

    if not spec.methods:
        raise LayercutError("--methods is empty: name at least one method (see `layercut methods`)")
    if not spec.tasks:
        raise LayercutError("--tasks is empty: name at least one task (see `layercut tasks`)")
    if not spec.budgets or min(spec.budgets) < 0:
        raise LayercutError(f"--budgets {spec.budgets}: budgets are layer counts of 0 or more, e.g. 0:16:2")
    domains = scores.domains if scores is not None else None
    for m in spec.methods:
        base = m.removesuffix(GUARD)
        if base not in METHODS and (domains is None or base not in domains):
            also = f"or a domain of the scores ({', '.join(domains)})" if domains else "or, with --scores, a domain name"
            raise LayercutError(f"unknown method '{m}' in --methods: use {', '.join(METHODS)} {also}")
    for t in spec.tasks:
        if not harness.is_harness_task(t):
            get_task(t)  # an unknown task is one line now
    if spec.limit is not None and spec.limit < 1:
        raise LayercutError(f"--limit {spec.limit}: give 1 or more examples per task (or leave it out)")
    if spec.adaptive is not None:
        from layercut.sweep.adaptive import Rule

        rule = Rule(**spec.adaptive)
        if spec.heal_steps:
            raise LayercutError("--adaptive with --heal-steps: healed cells run every document; drop one of the two")
        if rule.first < 1 or not 0.0 < rule.alpha < 1.0:
            raise LayercutError(f"--adaptive: first round {rule.first}, alpha {rule.alpha}: give a first round of "
                                "1 or more documents and an alpha in (0, 1)")
    if spec.heal_steps < 0 or (spec.heal_steps and not spec.calib):
        raise LayercutError("--heal-steps heals every cell on the calibration data: give a positive "
                            "number of steps and --calib")
    if spec.heal not in HEAL_MODES:
        raise LayercutError(f"--heal {spec.heal}: use {' or '.join(HEAL_MODES)}")
    if spec.heal != "lora" and not spec.heal_steps:
        raise LayercutError(f"--heal {spec.heal} says how healed cells heal: add --heal-steps N (and --calib)")
    if not spec.heal_lr > 0:
        raise LayercutError(f"--heal-lr {spec.heal_lr}: the learning rate must be positive")
    if spec.engine not in ENGINES:
        raise LayercutError(f"unknown engine '{spec.engine}': use {', '.join(ENGINES)}")
    if any(m.removesuffix(GUARD) == "iterative" for m in spec.methods) and not spec.calib:
        raise LayercutError("method 'iterative' measures calibration loss: pass --calib")


def _run_phases(spec: SweepSpec, out: Path, log: ResultsLog, phases: list[list[str]], picks: Picks,
                trains: Picks | None, scores: Any, adapter: Any, executor: str, path: str, worker: Any,
                workers: int | None, progress: Callable[[int, int], None] | None) -> pd.DataFrame:
    """Evaluate the cells, phase by phase (hybrid last when its threshold comes from the others);
    with `trains`, healed cells heal by interleaved fine-tuning of those layers."""
    pool: list[Any] = []  # Ray actors, made on first use
    for i, methods in enumerate(phases):
        if i:  # hybrid: its threshold found in the other methods' results unless given
            if spec.options.get("hybrid_threshold") is None:
                found = _threshold_from(log.table(picks, spec.tasks))  # before healing
                # No structure-dominated regime in range: hybrid stays a pure ranking method.
                spec.options["hybrid_threshold"] = found if found is not None else max(spec.budgets) + 1
                spec.options["hybrid_threshold_found"] = found is not None
                spec.save(out / SPEC_FILE)
            picks.update(plan_selections(spec, scores, adapter, methods, trains=trains))
        heals = [0, spec.heal_steps] if spec.heal_steps else [0]
        units = list(dict.fromkeys(
            Unit(tuple(sorted(drop)), t, h, tuple(trains[mk]) if h and trains is not None else ())
            for h in heals for mk, drop in picks.items() for t in spec.tasks
        ))
        todo = [u for u in units if u.key not in log.done]
        total, done = len(units), len(units) - len(todo)

        def on_result(unit: Unit, metrics: dict[str, float], seconds: float, extra: dict[str, Any]) -> None:
            nonlocal done
            log.add(unit, metrics, seconds, extra)
            log.write_tables(picks, spec.tasks, spec.heal_steps, trains)
            done += 1
            if progress and not spec.adaptive:
                progress(done, total)

        def execute(todo: list[Unit]) -> None:
            if executor == "local":
                run_local(worker, todo, on_result)
            else:  # the actors (and their loaded models) serve every round and phase
                pool[:] = pool or ray_pool(spec, path, workers)
                run_ray(spec, path, todo, on_result, workers, pool)

        if spec.adaptive:
            from layercut.evaluation import HIGHER_IS_BETTER
            from layercut.io import atomic_file
            from layercut.sweep import adaptive

            count = worker.count if worker is not None else _counter(spec, adapter)
            state = adaptive.run_rounds(units, adaptive.Rule(**spec.adaptive), spec.seed, count, log.done, execute,
                                        HIGHER_IS_BETTER, progress)
            with atomic_file(out / adaptive.ADAPTIVE_FILE, overwrite=True) as tmp:
                tmp.write_text(json.dumps(state, indent=1) + "\n")
            continue
        if progress:
            progress(done, total)
        execute(todo)
    return log.write_tables(picks, spec.tasks, spec.heal_steps, trains)


def _counter(spec: SweepSpec, adapter: Any) -> Callable[[str], int]:
    """Documents per task for the Ray executor, whose workers hold the prepared tasks: prepared
    here once more (no model call), in the same way."""
    from layercut.evaluation import harness, prepare

    def count(task: str) -> int:
        if harness.is_harness_task(task):
            return harness.doc_count(harness.prepare(task, spec.include_path), spec.limit)
        return len(prepare(task, adapter, limit=spec.limit, seed=spec.seed).items)

    return functools.cache(count)


def check_folder(out: str | Path, resume: bool = False) -> Path:
    """The sweep folder, checked before any work: new (or, to resume, one holding a sweep) and in
    a place that can be written."""
    from layercut.io import check_out

    out = Path(out)
    if out.exists() and not resume:
        raise LayercutError(f"sweep folder '{out}' already exists: pass --resume to continue it, or another --out")
    check_out(out, overwrite=resume)
    if resume and not (out / SPEC_FILE).is_file():
        raise LayercutError(f"nothing to resume in '{out}' (no {SPEC_FILE}): start the sweep without --resume")
    return out


def _probe_for(spec: SweepSpec, out: Path, adapter: Any) -> Any:
    """The damage profile the methods need (None if none does): the given --probe (kept as
    `probe_source`; the sweep folder gets a copy, which the report draws from), the one already
    in a resumed sweep's folder, or probed now from --calib."""
    from layercut.probe import DamageProfile

    needs = any(m.endswith(GUARD) or m.removesuffix(GUARD) == "damage" for m in spec.methods)
    if spec.probe:
        if spec.probe != str(out / PROBE_FILE):
            spec.probe_source = spec.probe
        return DamageProfile.load(spec.probe)
    if not needs:
        return None
    if not spec.calib:
        raise LayercutError("methods 'damage' and NAME+guard need a probe: pass --probe probe.json "
                        "(from `layercut probe`) or --calib to probe now")
    from layercut.data.calibration import calibration
    from layercut.probe import probe_samples

    return probe_samples(adapter, calibration(spec.calib), cache_mem=spec.cache_mem)


def _threshold_from(results: pd.DataFrame) -> int | None:
    from layercut.regimes import analyze, hybrid_threshold

    if results.empty:
        return None
    return hybrid_threshold(analyze(results))
