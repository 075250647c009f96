"""The results log of a sweep: one fsync'd JSON line per evaluated unit in cells.jsonl, and the
tidy table (results.parquet + results.csv) derived from it after every line. A sweep killed at any
moment resumes from it: finished lines are kept, a torn last line is dropped.

Each line keeps the per-document values of its metrics ("docs": values and weights, in the task's
document order), which the regime analysis resamples for its intervals (`doc_values`). A harness
task's unit also keeps, for audit, the harness's per-sample records (its log_samples) in
samples/TASK/DROP.jsonl, written before the unit's line, and its line records which way each of
the harness's metrics is better.

An adaptive sweep (`sweep.adaptive`) logs one line per round of a unit ("part": its documents'
indices in "index", of "of" in all); `merged` folds a unit's rounds into one record under the
unit's own key, so that everything downstream reads it as one cell: each metric with per-document
values recomputed over the documents evaluated, "docs" over all the task's documents in their
order with weight 0 where a document was not evaluated (a weighted mean, and the bootstrap's
paired resampling, then count only the evaluated ones).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layercut.sweep.spec import Unit

LOG_FILE = "cells.jsonl"
SAMPLES_DIR = "samples"
COLUMNS = [
    "method", "budget", "task", "domain", "metric", "value", "higher_is_better",
    "drop", "n", "seconds", "shared", "train",
]
Picks = dict[tuple[str, int], list[int]]  # (method, budget) -> layers: the drop sets, or the layers to train



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
        self.done.update(merged(self.done))

    def add(self, unit: Unit, metrics: dict[str, float], seconds: float, extra: dict[str, Any] | None = None) -> None:
        """Log one evaluated unit; `extra` (a harness task's) may hold "higher_is_better" and
        "samples"."""
        rec = {"key": unit.key, "task": unit.task, "drop": list(unit.drop), "metrics": metrics,
               "seconds": seconds, "heal": unit.heal}
        if unit.train:
            rec["train"] = list(unit.train)
        extra = extra or {}
        if unit.docs:
            rec.update(whole=unit.whole.key, part=unit.part, index=list(unit.docs), of=extra["of"])
        if extra.get("higher_is_better"):
            rec["higher_is_better"] = extra["higher_is_better"]
        if extra.get("samples") is not None:
            rec["samples"] = self._write_samples(unit, extra["samples"])
        if extra.get("docs"):
            rec["docs"] = {m: [list(v), list(w)] for m, (v, w) in extra["docs"].items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[unit.key] = rec
        if unit.docs:
            self.done.update(merged({k: r for k, r in self.done.items() if r.get("whole") == unit.whole.key}))

    def _write_samples(self, unit: Unit, samples: list[dict]) -> str:
        from layercut.io import atomic_file

        def safe(text: str) -> str:
            return re.sub(r"[^A-Za-z0-9._@+-]+", "_", text) or "none"

        def layers(xs: tuple[int, ...]) -> str:
            return safe(",".join(map(str, xs)))

        rel = Path(SAMPLES_DIR) / safe(unit.task) / (
            (layers(unit.drop) if unit.drop else "none") + (f"-heal{unit.heal}" if unit.heal else "")
            + (f"-train{layers(unit.train)}" if unit.train else "") + (f"-part{unit.part}" if unit.docs else "")
            + ".jsonl")
        with atomic_file(self.folder / rel, overwrite=True) as tmp:
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in samples), encoding="utf-8")
        return rel.as_posix()

    def table(self, picks: Picks, tasks: list[str], heal: int = 0, trains: Picks | None = None) -> pd.DataFrame:
        """One row per (method, budget, task, metric) whose unit is done; with `heal`, healed
        cells again as task TASK+healN of domain DOMAIN+healN, healed by interleaved fine-tuning
        of `trains[(method, budget)]` when given (the row's `train`), else with LoRA."""
        from layercut.evaluation import HIGHER_IS_BETTER

        rows = []
        first_owner: dict[str, tuple[str, int]] = {}
        for (method, budget), drop in picks.items():
            for task, steps in [(t, h) for h in ([0, heal] if heal else [0]) for t in tasks]:
                train = tuple(trains[(method, budget)]) if steps and trains is not None else ()
                unit = Unit(tuple(sorted(drop)), task, steps, train)
                rec = self.done.get(unit.key)
                if rec is None:
                    continue
                owner = first_owner.setdefault(unit.key, (method, budget))
                directions = rec.get("higher_is_better") or HIGHER_IS_BETTER
                for metric, value in rec["metrics"].items():
                    if metric not in directions:
                        continue
                    rows.append({
                        "method": method, "budget": budget, "task": task + unit.label[0],
                        "domain": self.domains.get(task, "") + unit.label[1], "metric": metric,
                        "value": float(value),
                        "higher_is_better": directions[metric],
                        "drop": ",".join(map(str, drop)), "n": int(rec["metrics"].get("n", 0)),
                        "seconds": rec["seconds"], "shared": owner != (method, budget),
                        "train": ",".join(map(str, train)),
                    })
        return pd.DataFrame(rows, columns=COLUMNS)

    def write_tables(self, picks: Picks, tasks: list[str], heal: int = 0, trains: Picks | None = None) -> pd.DataFrame:
        from layercut.io import atomic_file

        df = self.table(picks, tasks, heal, trains)
        with atomic_file(self.folder / "results.parquet", overwrite=True) as tmp:
            df.to_parquet(tmp, index=False)
        with atomic_file(self.folder / "results.csv", overwrite=True) as tmp:
            df.to_csv(tmp, index=False)
        return df


def doc_values(results: pd.DataFrame, records: dict[str, dict[str, Any]]) -> dict:
    """{(method, budget, task, metric): (values, weights)} for the result rows whose unit logged
    per-document values (`ResultsLog.done`); rows of older sweeps simply have none."""
    out = {}
    for r in results.itertuples(index=False):
        rec = records.get(row_unit(r).key)
        got = (rec or {}).get("docs", {}).get(str(r.metric))
        if got is not None:
            out[(str(r.method), int(r.budget), str(r.task), str(r.metric))] = (got[0], got[1])
    return out


def parse_layers(s: Any) -> list[int]:
    """A results table's layer list ("3,14,17"; empty, NA or NaN: none), in its order."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return []
    return [int(x) for x in str(s).split(",") if x.strip() and x.strip() not in ("<NA>", "nan")]


def row_unit(row: Any) -> Unit:
    """The unit a results-table row was read from (task TASK+healN: healed; `train`, where the
    table has it: interleaved)."""
    from layercut.sweep.spec import HEAL_TAG

    task, _, steps = str(row.task).partition(HEAL_TAG)
    return Unit(tuple(sorted(parse_layers(row.drop))), task, int(steps) if steps else 0,
                tuple(sorted(parse_layers(getattr(row, "train", "")))))


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """{key: record} of a cells.jsonl, read only (a torn last line of a killed sweep is skipped),
    with an adaptive sweep's rounds also merged per unit."""
    records = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[rec["key"]] = rec
    records.update(merged(records))
    return records


def merged(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{unit key: one record} for the units logged in rounds (see the module docstring)."""
    parts: dict[str, list[dict[str, Any]]] = {}
    for rec in records.values():
        if "whole" in rec:
            parts.setdefault(rec["whole"], []).append(rec)
    out = {}
    for key, recs in parts.items():
        recs.sort(key=lambda r: r["part"])
        n = int(recs[0]["of"])
        docs: dict[str, list[list[float]]] = {}
        for metric in recs[0].get("docs", {}):
            values, weights = [0.0] * n, [0.0] * n
            for r in recs:
                got = r.get("docs", {}).get(metric)
                if got is None:
                    break
                for i, v, w in zip(r["index"], got[0], got[1]):
                    values[i], weights[i] = float(v), float(w)
            else:
                docs[metric] = [values, weights]
        evaluated = sum(len(r["index"]) for r in recs)
        metrics: dict[str, float] = {}
        for metric in recs[0]["metrics"]:
            if metric in docs:
                v, w = (np.asarray(a) for a in docs[metric])
                metrics[metric] = float(v @ w / w.sum()) if w.sum() > 0 else float("nan")
            elif metric in ("n", "tokens"):  # counts add up
                metrics[metric] = float(sum(r["metrics"].get(metric, 0.0) for r in recs))
            else:  # e.g. the share of answers cut: a mean over documents
                metrics[metric] = float(sum(r["metrics"].get(metric, 0.0) * len(r["index"]) for r in recs) / evaluated)
        metrics["n"] = float(evaluated)
        first = recs[0]
        out[key] = {"key": key, "task": first["task"], "drop": first["drop"], "heal": first["heal"],
                    "metrics": metrics, "seconds": sum(r["seconds"] for r in recs), "docs": docs,
                    "rounds": len(recs), "of": n,
                    **{k: first[k] for k in ("higher_is_better",) if k in first}}
    return out
