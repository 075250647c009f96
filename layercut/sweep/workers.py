"""Who evaluates a sweep's units: a worker holds one loaded model and its prepared tasks; the
local executor runs one worker in this process, the Ray executor one actor per CPU (or GPU) that
each load the model once and take trie-ordered chunks of units as they come free.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator

from layercut.errors import LayercutError
from layercut.extras import require
from layercut.sweep.spec import SweepSpec, Unit


Result = tuple[Unit, dict[str, float], float, dict[str, Any]]  # unit, metrics, seconds, extra


class Worker:
    """Holds one loaded model and its prepared tasks; evaluates units of work on it.

    `path` is where the model is (the caller resolved a zoo name in `spec.model` to it);
    `harness_tasks`, harness tasks the caller already loaded (`evaluation.harness.prepare`);
    `device`, where to put the model when no device map places it (a Ray GPU actor: "cuda").
    A result's `extra` holds the per-document values of its metrics ("docs", what the regime
    analysis resamples); for a harness task also which way each metric is better and the
    harness's per-sample records."""

    def __init__(self, spec: SweepSpec, path: str, harness_tasks: dict[str, Any] | None = None,
                 device: str | None = None) -> None:
        from layercut import models
        from layercut.evaluation import harness, prepare

        self.adapter = models.load_model(path, spec.dtype, spec.device_map, source=spec.model, allow=spec.allow)
        if device is not None:
            self.adapter.model.to(device)
        self.spec = spec
        loaded = harness_tasks or {}
        self.prepared = {
            t: loaded.get(t) or (harness.prepare(t, spec.include_path) if harness.is_harness_task(t)
                                 else prepare(t, self.adapter, limit=spec.limit, seed=spec.seed))
            for t in spec.tasks
        }
        self.shared: dict[str, Any] = {}  # task -> engine.SharedWork, made on first use
        self.heal_data: list | None = None  # calibration samples, read on the first healed cell
        self.harness_log: Any = None  # where harness output goes (`harness.quiet`); None: the console

    def run_many(self, units: list[Unit]) -> Iterator[Result]:
        """Results as they finish: teacher-forced tasks through the shared-work engine (all of a
        task's units at once), the others (generation, harness tasks) one layer-skip view per unit."""
        from layercut import engine
        from layercut.evaluation.harness import HarnessTask
        from layercut.evaluation.runner import per_document
        from layercut.evaluation.teacher import teacher_metrics

        by_task: dict[tuple[str, tuple[int, ...], int], list[Unit]] = {}
        by_drop: dict[tuple[tuple[int, ...], tuple[int, ...]], list[Unit]] = {}
        for unit in units:
            if unit.heal:
                by_drop.setdefault((unit.drop, unit.train), []).append(unit)
            else:
                by_task.setdefault((unit.task, unit.docs, unit.part), []).append(unit)
        for group in by_drop.values():
            yield from self.run_healed(group)
        for (task, docs, part), group in by_task.items():
            prepared = self.prepared[task]
            if self.spec.engine == "plain" or isinstance(prepared, HarnessTask) or not engine.supports(prepared):
                for unit in group:
                    yield self.run(unit)
                continue
            if self.shared.get(task, (None, None))[0] != docs:  # one round's documents at a time
                self.shared[task] = (docs, engine.SharedWork.for_task(
                    self.adapter, self.subset(task, docs), self.spec.batch_size, self.spec.cache_mem,
                    mode=self.spec.engine))
            for drop, scored, seconds in self.shared[task][1].row_scores([u.drop for u in group]):
                details: list[dict] = []
                metrics = teacher_metrics(self.subset(task, docs), scored, details)
                yield (Unit(drop, task, docs=docs, part=part), {k: float(v) for k, v in metrics.items()}, seconds,
                       {"docs": per_document(prepared.task.kind, details), "of": self.count(task)})

    def run_list(self, units: list[Unit]) -> list[Result]:
        return list(self.run_many(units))

    def run_healed(self, units: list[Unit]) -> Iterator[Result]:
        """One drop set healed once (`heal.healed`, restored exactly afterwards: LoRA on its kept
        layers, or its `train` layers in full with --heal interleaved, where a pick with nothing to
        train, the unpruned one, is not changed), then every task evaluated on it with plain
        forwards (healing changes the layers, so no cached layer inputs apply)."""
        from layercut import surgery
        from layercut.data.calibration import calibration
        from layercut.heal import healed

        if not self.spec.calib:
            raise LayercutError("--heal-steps heals on the calibration data: pass --calib")
        if self.heal_data is None:
            self.heal_data = calibration(self.spec.calib)
        drop, train = units[0].drop, units[0].train
        how: dict[str, Any] = {"steps": units[0].heal, "seed": self.spec.seed, "lr": self.spec.heal_lr, "measure": False}
        if self.spec.heal == "interleaved":
            how.update(train_layers=list(train), kept=[i for i in range(self.adapter.num_layers) if i not in drop])
        t0 = time.perf_counter()
        with surgery.skipped(self.adapter, drop), \
                (healed(self.adapter, self.heal_data, **how) if train or self.spec.heal == "lora" else nullcontext()):
            for unit in units:
                metrics, extra = self.evaluate(unit.task)
                yield unit, metrics, time.perf_counter() - t0, extra
                t0 = time.perf_counter()

    def run(self, unit: Unit) -> Result:
        from layercut import surgery

        t0 = time.perf_counter()
        with surgery.skipped(self.adapter, unit.drop):
            metrics, extra = self.evaluate(unit.task, unit.docs)
        return unit, metrics, time.perf_counter() - t0, extra

    def evaluate(self, task: str, docs: tuple[int, ...] = ()) -> tuple[dict[str, float], dict[str, Any]]:
        """One task (only the documents `docs`, when given) on the model as it is now: (metrics, extra)."""
        from layercut.evaluation import evaluate, harness

        from layercut.evaluation.runner import per_document

        prepared = self.prepared[task]
        if isinstance(prepared, harness.HarnessTask):
            with harness.quiet(self.harness_log):
                out = harness.run(self.adapter, prepared, limit=None if docs else self.spec.limit,
                                  batch_size=self.spec.batch_size, docs=list(docs) or None)
            res = harness.result(prepared, out, self.adapter.tokenizer)
            return res.metrics, {"higher_is_better": res.higher_is_better, "samples": res.samples, "docs": res.docs,
                                 "of": self.count(task)}
        details: list[dict] = []
        metrics = evaluate(self.adapter, self.subset(task, docs), batch_size=self.spec.batch_size, details=details,
                           max_tokens_per_batch=self.spec.max_tokens_per_batch)
        return ({k: float(v) for k, v in metrics.items()},
                {"docs": per_document(prepared.task.kind, details), "of": self.count(task)})

    def count(self, task: str) -> int:
        """How many documents the sweep evaluates of a task (its --limit or all it has)."""
        from layercut.evaluation import harness

        prepared = self.prepared[task]
        if isinstance(prepared, harness.HarnessTask):
            return harness.doc_count(prepared, self.spec.limit)
        return len(prepared.items)

    def subset(self, task: str, docs: tuple[int, ...]) -> Any:
        """A layercut task's prepared documents, only those of `docs` (all when empty), in that order."""
        prepared = self.prepared[task]
        return dataclasses.replace(prepared, items=[prepared.items[i] for i in docs]) if docs else prepared


def run_local(worker: Worker, units: list[Unit], on_result: Callable) -> None:
    for result in worker.run_many(units):
        on_result(*result)


def _chunks(units: list[Unit], n: int) -> list[list[Unit]]:
    """Units cut into about 4n pieces for n workers: a piece is one task's run of neighbouring
    kept-layer sequences (trie order), so that it still shares its prefixes, or one healed drop
    set with all its tasks, so that it is healed once."""
    L = max((max(u.drop) for u in units if u.drop), default=0) + 1
    ordered = sorted(units, key=lambda u: (u.heal, u.train, "" if u.heal else u.task,
                                           tuple(i for i in range(L) if i not in u.drop), u.task))
    size = max(1, -(-len(ordered) // (4 * n)))
    pieces: list[list[Unit]] = []
    for unit in ordered:
        last = pieces[-1][0] if pieces else None
        if last is not None and last.heal == unit.heal and (
                (last.drop, last.train) == (unit.drop, unit.train) if unit.heal else (len(pieces[-1]) < size and last.task == unit.task)):
            pieces[-1].append(unit)
        else:
            pieces.append([unit])
    return pieces


def ray_pool(spec: SweepSpec, path: str, workers: int | None) -> list[Any]:
    """One actor per GPU where the cluster has GPUs (`num_gpus=1` each, the model on its own
    device), else one per CPU; each loads the model once, and serves every later `run_ray` call
    it is given to (an adaptive sweep's rounds)."""
    ray = require("ray", "--executor ray")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, num_cpus=workers)
    resources = ray.available_resources()
    gpus = int(resources.get("GPU", 0))
    n = workers or max(1, gpus or int(resources.get("CPU", 1)))
    if gpus:  # each actor sees its one GPU as device 0
        actor = ray.remote(num_gpus=1, max_restarts=1)(Worker)
        return [actor.remote(spec, path, device=None if spec.device_map else "cuda") for _ in range(n)]
    actor = ray.remote(num_cpus=1, max_restarts=1)(Worker)
    return [actor.remote(spec, path) for _ in range(n)]


def run_ray(spec: SweepSpec, path: str, units: list[Unit], on_result: Callable, workers: int | None,
            pool: list[Any] | None = None) -> None:
    """The units over the actors of `pool` (default: a new `ray_pool`), in chunks each actor takes
    as it comes free. An actor that dies is restarted by Ray (it reloads the model) and its chunk
    goes back to the front of the queue, for the next free actor; two losses of the same chunk
    end the sweep (the units already logged stay, so `--resume` picks up from there)."""
    ray = require("ray", "--executor ray")
    pool = pool or ray_pool(spec, path, workers)
    n = len(pool)
    queue = list(enumerate(_chunks(units, n)))
    lost: dict[int, int] = {}  # chunk -> times an actor died on it
    deaths = [0] * len(pool)  # per actor: a second death means its restart is used up too
    pending: dict[Any, tuple[int, int | None, list[Unit]]] = {}  # call -> (actor, chunk id or None: a probe)

    def submit(i: int) -> None:
        if queue and deaths[i] < 2:
            cid, chunk = queue.pop(0)
            pending[pool[i].run_list.remote(chunk)] = (i, cid, chunk)

    for i in range(len(pool)):
        submit(i)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i, cid, chunk = pending.pop(done[0])
        try:
            results = ray.get(done[0])
        except ray.exceptions.RayActorError:
            deaths[i] += 1
            if cid is not None:
                lost[cid] = lost.get(cid, 0) + 1
                queue.insert(0, (cid, chunk))  # to the next free actor
            if (cid is not None and lost[cid] > 1) or min(deaths) >= 2:
                raise LayercutError(f"Ray actors died on the same {len(chunk)} unit(s) twice, or all of them twice: "
                                    "see the Ray logs, then continue with --resume") from None
            if deaths[i] < 2:  # an empty call returns once Ray has restarted the actor
                pending[pool[i].run_list.remote([])] = (i, None, [])
        else:
            for result in results:
                on_result(*result)
            submit(i)
        busy = {v[0] for v in pending.values()}
        for j in range(len(pool)):  # an idle actor picks up a chunk another one lost
            if j not in busy and queue:
                submit(j)
