"""What a sweep folder holds, as the report reads it: `read_sweep` and the `Sweep` it returns,
the `Figure` record of one PNG, and the small readers of sweep.json and of the results table that
the figures and the document both use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layercut.errors import LayercutError
from layercut.probe import DamageProfile
from layercut.regimes import SeriesAnalysis
from layercut.scoring import LayerScores


@dataclass
class Sweep:
    """What a sweep folder holds."""

    path: Path
    results: pd.DataFrame  # the tidy results table
    spec: dict[str, Any]  # sweep.json ({} when absent)
    scores: LayerScores | None  # scores.json, when present
    # scores-<scope>.json beside it (e.g. text / image / all on a VLM), when present
    scope_scores: dict[str, LayerScores] = field(default_factory=dict)
    probe: DamageProfile | None = None  # probe.json (single-drop damage), when present
    # per-document values of each result row (cells.jsonl), for the bootstrap; empty for old sweeps
    docs: dict = field(default_factory=dict)
    no_docs: str = ""  # why `docs` is empty
    # (method, budget, task) -> share of answers cut at max_new_tokens, for generate cells (cells.jsonl)
    truncated: dict = field(default_factory=dict)


@dataclass
class Figure:
    """One PNG of the report."""

    file: str
    title: str
    caption: str


def read_sweep(sweep_dir: str | Path) -> Sweep:
    """The results table (parquet, else csv), sweep.json and scores.json of a sweep folder."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise LayercutError(f"sweep folder '{path}' not found: run `layercut sweep --out {path}` first")
    parquet, csv = path / "results.parquet", path / "results.csv"
    if parquet.is_file():
        results = pd.read_parquet(parquet)
    elif csv.is_file():
        results = pd.read_csv(csv, dtype={"drop": "string", "train": "string", "method": str, "task": str, "domain": str})
    else:
        raise LayercutError(f"no results.parquet or results.csv in '{path}': run `layercut sweep` (it writes them)")
    for col in ("drop", "train"):  # layer lists; an empty one reads back as NA
        if col in results.columns:
            results[col] = results[col].astype("string").fillna("").astype(str)
    spec: dict[str, Any] = {}
    if (path / "sweep.json").is_file():
        try:
            spec = json.loads((path / "sweep.json").read_text())
        except json.JSONDecodeError:
            raise LayercutError(f"'{path / 'sweep.json'}' is not valid JSON: re-run `layercut sweep`") from None
    scores = LayerScores.load(path / "scores.json") if (path / "scores.json").is_file() else None
    scope_scores = {p.stem[len("scores-"):]: LayerScores.load(p)
                    for p in sorted(path.glob("scores-*.json"))}
    probe = DamageProfile.load(path / "probe.json") if (path / "probe.json").is_file() else None
    docs, no_docs = _doc_values(path, results)
    return Sweep(path, results, spec, scores, scope_scores, probe, docs, no_docs, truncated_shares(path, results))


def truncated_shares(path: Path, results: pd.DataFrame) -> dict:
    """{(method, budget, task): share of answers that hit max_new_tokens} for the result rows whose
    cell recorded it (generate tasks; sweeps written before layercut recorded it have none)."""
    from layercut.sweep import LOG_FILE
    from layercut.sweep.log import read_records, row_unit

    log = path / LOG_FILE
    if not log.is_file() or results.empty:
        return {}
    records = read_records(log)
    shares = {key: float(rec["metrics"]["truncated"]) for key, rec in records.items()
              if "truncated" in rec.get("metrics", {})}
    out = {}
    for r in results.drop_duplicates(["method", "budget", "task"]).itertuples(index=False):
        key = row_unit(r).key
        if key in shares:
            out[(str(r.method), int(r.budget), str(r.task))] = shares[key]
    return out


def _doc_values(path: Path, results: pd.DataFrame) -> tuple[dict, str]:
    """The rows' per-document values from cells.jsonl (read only: a torn last line is skipped),
    or why there are none."""
    from layercut.sweep import LOG_FILE
    from layercut.sweep.log import doc_values, read_records

    log = path / LOG_FILE
    if not log.is_file():
        return {}, f"the folder has no {LOG_FILE}, only a results table"
    docs = doc_values(results, read_records(log))
    return docs, "" if docs else (f"no cell of {LOG_FILE} holds per-document values (a sweep written before "
                                 "layercut stored them, or metrics a harness aggregates its own way): re-run the "
                                 "sweep to get intervals")


# --------------------------------------------------------------------------- helpers


def sweep_title(sweep: Sweep) -> str:
    model = sweep.spec.get("model")
    return f"layercut sweep report: {model}" if model else f"layercut sweep report: {sweep.path.name}"


def layer_count(sweep: Sweep) -> int | None:
    if "num_layers" in sweep.spec:
        return int(sweep.spec["num_layers"])
    return sweep.scores.num_layers if sweep.scores is not None else None


def protected_layers(sweep: Sweep) -> list[int]:
    """The resolved protected layers of sweep.json (`protected`; `protect` when it is a list)."""
    layers = sweep.spec.get("protected")
    if not isinstance(layers, list):
        layers = sweep.spec.get("protect")
    return [int(i) for i in layers] if isinstance(layers, list) else []


def spec_options(spec: dict[str, Any]) -> dict[str, Any]:
    options = spec.get("options")
    return options if isinstance(options, dict) else {}


def direction(s: SeriesAnalysis) -> str:
    return "higher is better" if s.higher_is_better else "lower is better"
