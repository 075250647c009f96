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

`hybrid` needs the budget where spacing takes over: unless given, the sweep first runs the other
methods, finds the structure-dominated regime in their results (`regimes.hybrid_threshold`), and
then plans the hybrid cells.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd

from layercut.errors import LayercutError
from layercut.selection import GUARD

SPEC_FILE = "sweep.json"
LOG_FILE = "cells.jsonl"
PROBE_FILE = "probe.json"
HEAL_TAG = "+heal"  # task and domain suffix of healed cells in the results table
COLUMNS = [
    "method", "budget", "task", "domain", "metric", "value", "higher_is_better",
    "drop", "n", "seconds", "shared",
]


@dataclass
class SweepSpec:
    """What to sweep; saved as sweep.json so a sweep can be resumed or reported alone."""

    model: str
    methods: list[str]
    budgets: list[int]
    tasks: list[str]
    scores: str | None = None  # scores.json (copied into the sweep folder)
    calib: str | None = None  # for `iterative`
    limit: int | None = None  # examples per task
    protect: str = "default"
    seed: int = 0
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)  # alpha, min_gap, domain, hybrid_threshold
    probe: str | None = None  # probe.json (copied into the sweep folder): for `damage` and NAME+guard
    engine: str = "trie"  # teacher-forced tasks: trie | prefix | plain (see engine.py)
    cache_mem: str | None = None  # bound on stored hidden states (e.g. "2GiB"); default half of free RAM
    dtype: str = "fp32"  # fp32 | bf16 | fp16
    device_map: str | None = None  # accelerate device map: auto | balanced | FILE.json
    heal_steps: int = 0  # also evaluate every cell after this many LoRA steps on `calib` (0: no)
    num_layers: int = 0  # filled when planned
    protected: list[int] = field(default_factory=list)  # resolved protected layers, filled when planned

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Unit:
    """One evaluation: a drop set on a task. Many cells may share it."""

    drop: tuple[int, ...]  # sorted original indices
    task: str
    heal: int = 0  # LoRA steps of healing before the evaluation (0: none)

    @property
    def key(self) -> str:
        return f"{self.task}|{','.join(map(str, self.drop))}" + (f"|heal{self.heal}" if self.heal else "")

    @property
    def label(self) -> tuple[str, str]:
        """(task, domain) suffix of the results table: healed cells are series of their own."""
        return (f"{HEAL_TAG}{self.heal}", f"{HEAL_TAG}{self.heal}") if self.heal else ("", "")


def parse_budgets(text: str) -> list[int]:
    """'0:16:2' (start:stop:step, stop inclusive), '0,2,4' or '6'."""
    try:
        if ":" in text:
            parts = [int(x) for x in text.split(":")]
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            if step <= 0:
                raise ValueError
            return list(range(start, stop + 1, step))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LayercutError(f"--budgets '{text}': use start:stop:step (e.g. 0:16:2) or a list like 0,2,4") from None


# --------------------------------------------------------------------------- planning


def plan_selections(
    spec: SweepSpec, scores: Any, adapter: Any = None, methods: Iterable[str] | None = None
) -> dict[tuple[str, int], list[int]]:
    """(method, budget) -> drop list, for the given methods (default: the spec's)."""
    from layercut import api, selection

    methods = list(spec.methods if methods is None else methods)
    protect = set(spec.protected)
    options = {k: v for k, v in spec.options.items() if k in ("alpha", "min_gap", "domain")}
    if spec.probe:
        from layercut.probe import DamageProfile

        profile = DamageProfile.load(spec.probe)
        options.update(damage=profile.damage(options.get("domain") or "all"), guard=profile.flagged)
    picks: dict[tuple[str, int], list[int]] = {}
    for method in methods:
        base = method.removesuffix(selection.GUARD)
        if base == "iterative":
            # Greedy and deterministic: the budget-k choice is the first k of the largest run.
            loss_fn = api.calibration_loss_fn(adapter, api.calibration(spec.calib), engine=spec.engine,
                                              cache_mem=spec.cache_mem)
            top = max(spec.budgets)
            sel = selection.select(scores, method, top, num_layers=spec.num_layers, protect=protect,
                                   loss_fn=loss_fn, guard=options.get("guard"))
            for k in spec.budgets:
                picks[(method, k)] = sel.drop[:k]
            continue
        extra = {"threshold": spec.options.get("hybrid_threshold")} if base == "hybrid" else {}
        for k in spec.budgets:
            sel = selection.select(
                scores, method, k, num_layers=spec.num_layers, protect=protect, seed=spec.seed,
                **options, **extra,
            )
            picks[(method, k)] = sel.drop
    return picks


# --------------------------------------------------------------------------- the results log


class ResultsLog:
    """Append-only JSON lines, fsync'd; the tidy tables are derived from it after every line."""

    def __init__(self, folder: Path, domains: dict[str, str]) -> None:
        self.folder = folder
        self.path = folder / LOG_FILE
        self.domains = domains
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a torn last line from a kill: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for line in raw[:end].decode().splitlines():
            if line.strip():
                rec = json.loads(line)
                self.done[rec["key"]] = rec

    def add(self, unit: Unit, metrics: dict[str, float], seconds: float) -> None:
        rec = {"key": unit.key, "task": unit.task, "drop": list(unit.drop), "metrics": metrics,
               "seconds": seconds, "heal": unit.heal}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[unit.key] = rec

    def table(self, picks: dict[tuple[str, int], list[int]], tasks: list[str], heal: int = 0) -> pd.DataFrame:
        """One row per (method, budget, task, metric) whose unit is done; with `heal`, healed
        cells again as task TASK+healN of domain DOMAIN+healN."""
        from layercut.evaluation import HIGHER_IS_BETTER

        rows = []
        first_owner: dict[str, tuple[str, int]] = {}
        for (method, budget), drop in picks.items():
            for task, steps in [(t, h) for h in ([0, heal] if heal else [0]) for t in tasks]:
                unit = Unit(tuple(sorted(drop)), task, steps)
                rec = self.done.get(unit.key)
                if rec is None:
                    continue
                owner = first_owner.setdefault(unit.key, (method, budget))
                for metric, value in rec["metrics"].items():
                    if metric not in HIGHER_IS_BETTER:
                        continue
                    rows.append({
                        "method": method, "budget": budget, "task": task + unit.label[0],
                        "domain": self.domains.get(task, "") + unit.label[1], "metric": metric,
                        "value": float(value),
                        "higher_is_better": HIGHER_IS_BETTER[metric],
                        "drop": ",".join(map(str, drop)), "n": int(rec["metrics"].get("n", 0)),
                        "seconds": rec["seconds"], "shared": owner != (method, budget),
                    })
        return pd.DataFrame(rows, columns=COLUMNS)

    def write_tables(self, picks: dict[tuple[str, int], list[int]], tasks: list[str], heal: int = 0) -> pd.DataFrame:
        from layercut.io import atomic_file

        df = self.table(picks, tasks, heal)
        with atomic_file(self.folder / "results.parquet", overwrite=True) as tmp:
            df.to_parquet(tmp, index=False)
        with atomic_file(self.folder / "results.csv", overwrite=True) as tmp:
            df.to_csv(tmp, index=False)
        return df


# --------------------------------------------------------------------------- executors


ENGINES = ("trie", "prefix", "plain")


class _Worker:
    """Holds one loaded model and its prepared tasks; evaluates units of work on it."""

    def __init__(self, spec: SweepSpec) -> None:
        from layercut import api
        from layercut.evaluation import prepare

        self.adapter = api.load_model(spec.model, spec.dtype, spec.device_map)
        self.spec = spec
        self.prepared = {t: prepare(t, self.adapter, limit=spec.limit, seed=spec.seed) for t in spec.tasks}
        self.shared: dict[str, Any] = {}  # task -> engine.SharedWork, made on first use
        self.heal_data: list | None = None  # calibration samples, read on the first healed cell

    def run_many(self, units: list[Unit]) -> Iterator[tuple[Unit, dict[str, float], float]]:
        """Results as they finish: teacher-forced tasks through the shared-work engine (all of a
        task's units at once), the others one layer-skip view per unit."""
        from layercut import engine

        by_task: dict[str, list[Unit]] = {}
        by_drop: dict[tuple[int, ...], list[Unit]] = {}
        for unit in units:
            if unit.heal:
                by_drop.setdefault(unit.drop, []).append(unit)
            else:
                by_task.setdefault(unit.task, []).append(unit)
        for group in by_drop.values():
            yield from self.run_healed(group)
        for task, group in by_task.items():
            prepared = self.prepared[task]
            if self.spec.engine == "plain" or not engine.supports(prepared):
                for unit in group:
                    yield self.run(unit)
                continue
            if task not in self.shared:
                self.shared[task] = engine.SharedWork.for_task(self.adapter, prepared, self.spec.batch_size,
                                                      self.spec.cache_mem, mode=self.spec.engine)
            for drop, metrics, seconds in self.shared[task].run([u.drop for u in group]):
                yield Unit(drop, task), metrics, seconds

    def run_list(self, units: list[Unit]) -> list[tuple[Unit, dict[str, float], float]]:
        return list(self.run_many(units))

    def run_healed(self, units: list[Unit]) -> Iterator[tuple[Unit, dict[str, float], float]]:
        """One drop set healed once (LoRA on its kept layers, `heal.healed`: restored exactly
        afterwards), then every task evaluated on it with plain forwards (healing changes every
        layer, so no cached layer inputs apply)."""
        from layercut import api, surgery
        from layercut.evaluation import evaluate
        from layercut.heal import healed

        if not self.spec.calib:
            raise LayercutError("--heal-steps heals on the calibration data: pass --calib")
        if self.heal_data is None:
            self.heal_data = api.calibration(self.spec.calib)
        t0 = time.perf_counter()
        with surgery.skipped(self.adapter, units[0].drop), \
                healed(self.adapter, self.heal_data, steps=units[0].heal, seed=self.spec.seed, measure=False):
            for unit in units:
                metrics = evaluate(self.adapter, self.prepared[unit.task], batch_size=self.spec.batch_size)
                yield unit, {k: float(v) for k, v in metrics.items()}, time.perf_counter() - t0
                t0 = time.perf_counter()

    def run(self, unit: Unit) -> tuple[Unit, dict[str, float], float]:
        from layercut import surgery
        from layercut.evaluation import evaluate

        t0 = time.perf_counter()
        with surgery.skipped(self.adapter, unit.drop):
            metrics = evaluate(self.adapter, self.prepared[unit.task], batch_size=self.spec.batch_size)
        return unit, {k: float(v) for k, v in metrics.items()}, time.perf_counter() - t0


def _run_local(worker: _Worker, units: list[Unit], on_result: Callable) -> None:
    for result in worker.run_many(units):
        on_result(*result)


def _chunks(units: list[Unit], n: int) -> list[list[Unit]]:
    """Units cut into about 4n pieces for n workers: a piece is one task's run of neighbouring
    kept-layer sequences (trie order), so that it still shares its prefixes, or one healed drop
    set with all its tasks, so that it is healed once."""
    L = max((max(u.drop) for u in units if u.drop), default=0) + 1
    ordered = sorted(units, key=lambda u: (u.heal, "" if u.heal else u.task,
                                           tuple(i for i in range(L) if i not in u.drop), u.task))
    size = max(1, -(-len(ordered) // (4 * n)))
    pieces: list[list[Unit]] = []
    for unit in ordered:
        last = pieces[-1][0] if pieces else None
        if last is not None and last.heal == unit.heal and (
                last.drop == unit.drop if unit.heal else (len(pieces[-1]) < size and last.task == unit.task)):
            pieces[-1].append(unit)
        else:
            pieces.append([unit])
    return pieces


def _run_ray(spec: SweepSpec, units: list[Unit], on_result: Callable, workers: int | None) -> None:
    try:
        import ray
    except ImportError:
        raise LayercutError("--executor ray needs Ray: pip install 'layercut[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, num_cpus=workers)
    n = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1)(_Worker)
    pool = [actor.remote(spec) for _ in range(n)]
    pending = {}
    queue = _chunks(units, n)
    for a in pool:
        if queue:
            pending[a.run_list.remote(queue.pop(0))] = a
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        a = pending.pop(done[0])
        for result in ray.get(done[0]):
            on_result(*result)
        if queue:
            pending[a.run_list.remote(queue.pop(0))] = a


# --------------------------------------------------------------------------- the sweep


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    resume: bool = False,
    executor: str = "local",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a sweep into `out`; returns the tidy results table."""
    from layercut import api
    from layercut.evaluation import get_task
    from layercut.scoring import LayerScores

    out = Path(out)
    if executor not in ("local", "ray"):
        raise LayercutError(f"unknown executor '{executor}': use local or ray")
    if out.exists() and not resume:
        raise LayercutError(f"sweep folder '{out}' already exists: pass --resume to continue it, or another --out")
    if resume and not (out / SPEC_FILE).is_file():
        raise LayercutError(f"nothing to resume in '{out}' (no {SPEC_FILE}): start the sweep without --resume")
    if resume:
        saved = SweepSpec.load(out / SPEC_FILE)
        if (saved.methods, saved.budgets, saved.tasks, saved.model) != (spec.methods, spec.budgets, spec.tasks, spec.model):
            raise LayercutError(f"'{out}' holds a different sweep: resume with the same model, methods, budgets and tasks")
        saved.engine, saved.cache_mem = spec.engine, spec.cache_mem  # how, not what: may change
        spec = saved
    domains = {t: get_task(t).domain for t in spec.tasks}

    scores = LayerScores.load(spec.scores) if spec.scores else None
    if spec.heal_steps < 0 or (spec.heal_steps and not spec.calib):
        raise LayercutError("--heal-steps heals every cell on the calibration data: give a positive "
                            "number of steps and --calib")
    if spec.engine not in ENGINES:
        raise LayercutError(f"unknown engine '{spec.engine}': use {', '.join(ENGINES)}")
    if spec.cache_mem is not None:
        from layercut.engine import parse_mem

        parse_mem(spec.cache_mem)  # a bad size fails now, not after the model loads
    worker = _Worker(spec) if executor == "local" else None
    adapter = worker.adapter if worker else api.load_model(spec.model, spec.dtype, spec.device_map)
    spec.num_layers = adapter.num_layers
    spec.protected = sorted(api.protect_set(spec.num_layers, spec.protect, adapter.protected_layers()))
    if scores is not None and scores.num_layers != spec.num_layers:
        raise LayercutError(f"the scores are for {scores.num_layers} layers, the model has {spec.num_layers}: re-score")
    if max(spec.budgets) >= spec.num_layers:
        raise LayercutError(f"budget {max(spec.budgets)} >= {spec.num_layers} layers: lower --budgets")

    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        if scores is not None:
            scores.save(out / "scores.json")
        _probe_into(spec, out, adapter)
        spec.save(out / SPEC_FILE)
    log = ResultsLog(out, domains)

    hybrid = [m for m in spec.methods if m.removesuffix(GUARD) == "hybrid"]
    phases = [[m for m in spec.methods if m not in hybrid]] + ([hybrid] if hybrid else [])
    picks: dict[tuple[str, int], list[int]] = {}
    for methods in phases:
        if methods == hybrid and spec.options.get("hybrid_threshold") is None:
            found = _threshold_from(log.table(picks, spec.tasks))  # before healing
            # No structure-dominated regime in range: hybrid stays a pure ranking method.
            spec.options["hybrid_threshold"] = found if found is not None else max(spec.budgets) + 1
            spec.options["hybrid_threshold_found"] = found is not None
            spec.save(out / SPEC_FILE)
        picks.update(plan_selections(spec, scores, adapter, methods))
        heals = [0, spec.heal_steps] if spec.heal_steps else [0]
        units = list(dict.fromkeys(
            Unit(tuple(sorted(drop)), t, h) for h in heals for drop in picks.values() for t in spec.tasks
        ))
        todo = [u for u in units if u.key not in log.done]
        total, done = len(units), len(units) - len(todo)
        if progress:
            progress(done, total)

        def on_result(unit: Unit, metrics: dict[str, float], seconds: float) -> None:
            nonlocal done
            log.add(unit, metrics, seconds)
            log.write_tables(picks, spec.tasks, spec.heal_steps)
            done += 1
            if progress:
                progress(done, total)

        if executor == "local":
            _run_local(worker, todo, on_result)
        else:
            _run_ray(spec, todo, on_result, workers)
    return log.write_tables(picks, spec.tasks, spec.heal_steps)


def _probe_into(spec: SweepSpec, out: Path, adapter: Any) -> None:
    """Put the damage profile the methods need into the sweep folder (probing now if none is
    given) and point the spec at it; the report draws it from there."""
    from layercut.probe import DamageProfile

    needs = any(m.endswith(GUARD) or m == "damage" for m in spec.methods)
    if spec.probe:
        DamageProfile.load(spec.probe).save(out / PROBE_FILE)
    elif needs:
        if not spec.calib:
            raise LayercutError("methods 'damage' and NAME+guard need a probe: pass --probe probe.json "
                                "(from `layercut probe`) or --calib to probe now")
        from layercut import api

        api.probe(adapter, spec.calib, cache_mem=spec.cache_mem).save(out / PROBE_FILE)
    else:
        return
    spec.probe = str(out / PROBE_FILE)


def _threshold_from(results: pd.DataFrame) -> int | None:
    from layercut.regimes import analyze, hybrid_threshold

    if results.empty:
        return None
    return hybrid_threshold(analyze(results))
