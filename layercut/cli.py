"""The `layercut` command line: score, select, prune, heal, calib, models, demo.

Every bad input becomes one line on stderr and exit code 2 (a `LayercutError`); outputs are
written to a temporary sibling and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from layercut.errors import LayercutError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets: build the built-in ones.")
app.add_typer(calib_app, name="calib")
console = Console(stderr=True)
out_console = Console()


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


DEVICE_MAP_HELP = (
    "Spread the model with accelerate: auto | balanced | a JSON file {module: GPU index | 'cpu' | 'disk'}."
)
MAX_TOKENS_HELP = "Pack length-sorted samples into batches of at most this many (padded) tokens, instead of --batch-size rows"


def _ints(value: Optional[str], what: str) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LayercutError(f"{what} '{value}': give comma-separated layer indices like 3,10,20") from None


def scores_table(scores, title: str = "Layer scores (mean cosine of layer input vs output)") -> Table:
    """Per-domain cosine per layer, plus the difference of the first two domains."""
    names = list(scores.domains)
    table = Table(title=title, show_lines=False)
    table.add_column("layer", justify="right")
    for n in names:
        table.add_column(f"cos {n}", justify="right")
    if len(names) >= 2:
        table.add_column(f"{names[0]} − {names[1]}", justify="right")
    for i in range(scores.num_layers):
        vals = [scores.domains[n].cosine[i] for n in names]
        row = [str(i)] + [f"{v:.4f}" for v in vals]
        if len(names) >= 2:
            row.append(f"{vals[0] - vals[1]:+.4f}")
        table.add_row(*row)
    return table


def score_with_progress(model, calib, **kwargs):
    """`api.score` with a rich progress bar over calibration samples."""
    from layercut import api

    samples = api.calibration(calib)  # a bad file fails before the model loads
    adapter = api.load_model(model, kwargs.pop("dtype", "fp32"), kwargs.pop("device_map", None),
                             kwargs.pop("offload_folder", None))
    start, tokens = time.perf_counter(), 0

    def advance(batch) -> None:
        nonlocal tokens
        tokens += batch.tokens
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        bar.update(task, advance=batch.samples, description=f"scoring {rate:,.0f} tokens/s")

    with _progress() as bar:
        task = bar.add_task("scoring", total=len(samples), unit="samples")
        scores = api.score(adapter, samples, progress=advance, **kwargs)
    scores.meta["calibration"] = str(calib)
    for line in scores.nonfinite_report():
        console.print(f"[bold yellow]warning:[/bold yellow] {line}", highlight=False, soft_wrap=True)
    return adapter, scores


@app.command()
def score(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name (see `layercut models`)."),
    calib: str = typer.Option(..., help="Calibration JSONL, or builtin:text|image|all[:N]."),
    out: Path = typer.Option(..., help="scores.json to write (a tidy scores.csv goes beside it)."),
    scope: str = typer.Option("all", help="Tokens that count: all | text | image | last."),
    block_tokens: str = typer.Option("last", help="Block-distance tokens: last (Gromov) | scope."),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(1024, min=8, help="Truncate samples to this many tokens."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (statistics are always fp32/fp64)."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    offload_folder: Optional[Path] = typer.Option(None, help="Folder for weights a device map puts on 'disk' (default: a temporary one)."),
    max_tokens_per_batch: Optional[int] = typer.Option(None, min=1, help=MAX_TOKENS_HELP),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Score every decoder layer per calibration domain in one streaming pass."""
    from layercut.io import atomic_file
    from layercut.scoring import SCOPES

    if scope not in SCOPES:
        raise LayercutError(f"unknown scope '{scope}': use one of {', '.join(SCOPES)}")
    csv = out.with_suffix(".csv")
    for path in (out, csv):
        if path.exists() and not overwrite:
            raise LayercutError(f"output '{path}' already exists: choose another --out or pass --overwrite")
    _, scores = score_with_progress(
        model, calib, scope=scope, block_tokens=block_tokens, batch_size=batch_size,
        max_length=max_length, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
        max_tokens_per_batch=max_tokens_per_batch,
    )
    with atomic_file(out, overwrite=overwrite) as tmp_json, atomic_file(csv, overwrite=overwrite) as tmp_csv:
        scores.save(tmp_json)
        scores.to_frame().to_csv(tmp_csv, index=False)
    out_console.print(scores_table(scores))
    console.print(f"wrote {out} and {csv}")


def _guarded(method: str, guard: bool) -> str:
    from layercut.selection import GUARD

    return method + GUARD if guard and not method.endswith(GUARD) else method


@app.command()
def probe(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name."),
    calib: str = typer.Option(..., help="Calibration JSONL or builtin:KIND[:N]."),
    out: Path = typer.Option(..., help="Where to write probe.json."),
    protect: str = typer.Option("none", help="Layers not to probe: 'none' (all the family allows), 'default' (first+last), or indices."),
    batch_size: int = typer.Option(8, min=1),
    max_length: int = typer.Option(512, min=8, help="Truncate samples to this many tokens."),
    cache_mem: Optional[str] = typer.Option(None, help="Bound on cached hidden states (e.g. 2GiB)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
) -> None:
    """Single-drop damage profile: drop each layer alone, calibration NLL per domain; flags critical layers."""
    from layercut import api
    from layercut.probe import RULE

    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    with _progress() as bar:
        task = bar.add_task("probe", total=None, unit="drops")
        profile = api.probe(model, calib, protect=protect, batch_size=batch_size, max_length=max_length,
                            cache_mem=cache_mem, dtype=dtype, device_map=device_map, progress=lambda done, total: bar.update(task, completed=done, total=total))
    profile.save(out)
    table = Table(title=f"Single-drop damage: calibration NLL rise (baseline {profile.baseline['all']:.3f})")
    table.add_column("layer", justify="right")
    for d in profile.nll:
        table.add_column(f"{d}", justify="right")
    table.add_column("critical")
    for i in range(profile.num_layers):
        cells = [("-" if v is None else f"{v:+.3f}") for v in (profile.damage(d)[i] for d in profile.nll)]
        table.add_row(str(i), *cells, "yes" if i in profile.flagged else "")
    out_console.print(table)
    out_console.print(f"critical layers ({RULE}): {', '.join(map(str, profile.flagged)) or 'none'}")
    console.print(f"wrote {out} in {profile.seconds:.0f} s")


@app.command()
def select(
    scores: Optional[Path] = typer.Option(None, help="scores.json from `layercut score`."),
    method: str = typer.Option(..., help="Selection method (see `layercut methods`)."),
    budget: int = typer.Option(..., help="How many layers to drop."),
    protect: str = typer.Option("default", help="'default' (first+last), 'none', or indices like 0,29."),
    domain: Optional[str] = typer.Option(None, help="Domain for domain/spacing/block methods."),
    alpha: float = typer.Option(0.5, help="Weight of math in `mixed`."),
    min_gap: Optional[int] = typer.Option(None, help="Minimum distance between dropped layers (spacing)."),
    seed: int = typer.Option(0, help="Seed for `random`."),
    model: Optional[str] = typer.Option(None, help="Model (needed by `iterative`)."),
    calib: Optional[str] = typer.Option(None, help="Calibration set (needed by `iterative`)."),
    out: Optional[Path] = typer.Option(None, help="Write the selection as JSON."),
    probe: Optional[Path] = typer.Option(None, help="probe.json from `layercut probe` (for `damage` and --guard)."),
    guard: bool = typer.Option(False, help="Protect the probe's critical layers first (method NAME+guard)."),
) -> None:
    """Print the ordered list of layers a method would drop."""
    from layercut import api

    options = {k: v for k, v in dict(domain=domain, min_gap=min_gap).items() if v is not None}
    with _progress() as bar:
        task = bar.add_task(method, total=None, unit="candidate drop sets", visible=method.startswith("iterative"))
        sel = api.select(
            str(scores) if scores else None, _guarded(method, guard), budget, protect=protect, model=model,
            calib=calib, alpha=alpha, seed=seed, probe=str(probe) if probe else None,
            progress=lambda done, total: bar.update(task, completed=done, total=total), **options,
        )
    if out is not None:
        from layercut.io import atomic_file

        with atomic_file(out) as tmp:
            sel.save(tmp)
    out_console.print(",".join(map(str, sel.drop)))


@app.command()
def prune(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name."),
    out: Path = typer.Option(..., help="Folder for the pruned model (must not exist)."),
    scores: Optional[Path] = typer.Option(None, help="scores.json from `layercut score`."),
    method: Optional[str] = typer.Option(None, help="Selection method (with --budget)."),
    budget: Optional[int] = typer.Option(None, help="How many layers to drop (with --method)."),
    drop: Optional[str] = typer.Option(None, help="Explicit original layer indices, e.g. 3,10,20."),
    protect: str = typer.Option("default", help="'default' (first+last), 'none', or indices."),
    calib: Optional[str] = typer.Option(None, help="Calibration set (for `iterative`, or to score now)."),
    mergekit: bool = typer.Option(False, help="Also write the equivalent mergekit passthrough YAML."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16: load (and save) in this dtype."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    offload_folder: Optional[Path] = typer.Option(None, help="Folder for weights a device map puts on 'disk' (default: a temporary one)."),
    max_tokens_per_batch: Optional[int] = typer.Option(None, min=1, help=MAX_TOKENS_HELP + " (when scoring --calib now)"),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    probe: Optional[Path] = typer.Option(None, help="probe.json from `layercut probe` (for `damage` and --guard)."),
    guard: bool = typer.Option(False, help="Protect the probe's critical layers first (method NAME+guard)."),
) -> None:
    """Drop layers, save model + processor + card, and verify the reload gives equal logits."""
    from layercut import api

    if drop is None and (method is None or budget is None):
        raise LayercutError("say what to drop: --method NAME --budget K (with --scores), or --drop 3,10,20")
    if drop is not None and method is not None:
        raise LayercutError("--drop and --method exclude each other: use one")
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    with console.status("pruning, saving and verifying the reload"):
        recipe = api.prune(
            model, calib, out=out, method=_guarded(method or "math", guard), budget=budget or 0,
            probe=str(probe) if probe else None,
            scores=str(scores) if scores else None, drop=_ints(drop, "--drop"), protect=protect,
            mergekit=mergekit, overwrite=overwrite, dtype=dtype, device_map=device_map,
            offload_folder=offload_folder, max_tokens_per_batch=max_tokens_per_batch,
        )
    v = recipe.verify
    out_console.print(
        f"dropped layers {recipe.drop} ({recipe.num_layers_before} → {len(recipe.kept)}), "
        f"parameters {recipe.parameters_before:,} → {recipe.parameters_after:,}; "
        f"reload verified (missing weights {v['missing_keys']}, max logit diff {v['max_abs_logit_diff']})"
    )
    console.print(f"wrote {out}")


@app.command()
def heal(
    model: str = typer.Option(..., help="Pruned model folder (from `layercut prune`) or any model."),
    out: Path = typer.Option(..., help="Folder for the healed model (must not exist)."),
    data: Optional[str] = typer.Option(None, help="Healing JSONL or builtin:text[:N] (default: the calibration set recorded by `prune`)."),
    steps: int = typer.Option(40, min=1, help="Optimizer steps."),
    rank: int = typer.Option(8, min=1, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default 2 x rank)."),
    lr: float = typer.Option(5e-4, help="AdamW learning rate."),
    batch_size: int = typer.Option(4, min=1),
    max_length: int = typer.Option(256, min=8, help="Truncate samples to this many tokens."),
    seed: int = typer.Option(0),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (LoRA weights train in fp32)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """LoRA-heal the kept layers of a pruned model, merge, save, and verify the reload."""
    from layercut.heal import heal_checkpoint

    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    )
    with bar:
        task = bar.add_task("healing", total=steps, loss="-")
        stats = heal_checkpoint(
            model, out, data=data, steps=steps, rank=rank, alpha=alpha, lr=lr, seed=seed,
            batch_size=batch_size, max_length=max_length, dtype=dtype, overwrite=overwrite,
            progress=lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4f}"),
        )
    before = ", ".join(f"{k} {v:.4f}" for k, v in stats.calib_nll_before.items())
    after = ", ".join(f"{k} {v:.4f}" for k, v in stats.calib_nll_after.items())
    out_console.print(
        f"healed {stats.layers} layers ({stats.trainable_parameters:,} LoRA parameters, merged) "
        f"for {stats.steps} steps in {stats.seconds:.1f} s on {stats.data}; "
        f"calibration NLL {before} → {after}; reload verified"
    )
    console.print(f"wrote {out}")


@app.command()
def sweep(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name."),
    out: Path = typer.Option(..., help="Sweep folder (results.parquet/csv, cells.jsonl, sweep.json)."),
    scores: Optional[Path] = typer.Option(None, help="scores.json (needed by score-based methods)."),
    methods: str = typer.Option("math,nonmath,mixed,bi,block,last,uniform,spacing", help="Comma-separated methods."),
    budgets: str = typer.Option("0:12:2", help="start:stop:step (stop included) or a list like 0,2,4."),
    tasks: str = typer.Option("nll-math,nll-general", help="Comma-separated tasks (see `layercut tasks`) or task YAML files."),
    limit: Optional[int] = typer.Option(None, help="Examples per task (default: each task's own)."),
    calib: Optional[str] = typer.Option(None, help="Calibration set (for `iterative`)."),
    protect: str = typer.Option("default", help="'default' (first+last), 'none', or indices."),
    hybrid_threshold: Optional[int] = typer.Option(None, help="Budget where `hybrid` switches to spacing (default: found by the regime analysis)."),
    alpha: float = typer.Option(0.5, help="Weight of math in `mixed`."),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8, min=1),
    executor: str = typer.Option("local", help="local | ray (RAY_ADDRESS picks a cluster; else a local one)."),
    workers: Optional[int] = typer.Option(None, help="Ray actors (each loads the model once)."),
    resume: bool = typer.Option(False, help="Continue a killed or extended sweep in --out."),
    report: bool = typer.Option(True, help="Write the report when done."),
    engine: str = typer.Option("trie", help="Teacher-forced tasks: trie (shared layer prefixes) | prefix (unpruned prefix only) | plain (layer-skip views). Same numbers."),
    cache_mem: Optional[str] = typer.Option(None, help="Bound on cached hidden states, e.g. 2GiB, 500MB or 0.25 of free RAM (default 0.5)."),
    probe: Optional[Path] = typer.Option(None, help="probe.json from `layercut probe` (for `damage` and --guard; else probed from --calib)."),
    guard: bool = typer.Option(False, help="Also run every method guarded (NAME+guard: the probe's critical layers protected)."),
    heal_steps: int = typer.Option(0, min=0, help="Also evaluate every cell after N LoRA steps on --calib (task TASK+healN in the results)."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
) -> None:
    """Evaluate every method at every budget on every task; weights load once."""
    from layercut.selection import GUARD
    from layercut.sweep import SweepSpec, parse_budgets, run_sweep

    options: dict = {"alpha": alpha}
    if hybrid_threshold is not None:
        options["hybrid_threshold"] = hybrid_threshold
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if guard:
        names += [m + GUARD for m in names if not m.endswith(GUARD) and m != "damage" and m + GUARD not in names]
    spec = SweepSpec(
        model=model, methods=names,
        budgets=parse_budgets(budgets), tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        scores=str(scores) if scores else None, calib=calib, limit=limit, protect=protect, seed=seed,
        batch_size=batch_size, options=options, engine=engine, cache_mem=cache_mem,
        probe=str(probe) if probe else None, heal_steps=heal_steps, dtype=dtype, device_map=device_map,
    )
    with _progress() as bar:
        task = bar.add_task("sweep", total=None, unit="evaluations")
        df = run_sweep(spec, out, resume=resume, executor=executor, workers=workers,
                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    shared = int(df.drop_duplicates(["method", "budget", "task"])["shared"].sum()) if len(df) else 0
    out_console.print(f"{len(df)} result rows ({shared} cells reused another cell's drop set) in {out}")
    if report:
        from layercut.report import write_report

        folder = write_report(out)
        out_console.print(f"report: {folder / 'report.html'}")


@app.command()
def report(sweep_dir: Path = typer.Argument(..., help="A folder written by `layercut sweep`.")) -> None:
    """Regime analysis, plots and report.html/report.md of a sweep."""
    from layercut.report import write_report

    if not sweep_dir.is_dir():
        raise LayercutError(f"sweep folder '{sweep_dir}' not found: run `layercut sweep --out {sweep_dir}` first")
    folder = write_report(sweep_dir)
    out_console.print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


@app.command("eval")
def eval_(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name."),
    tasks: str = typer.Option(..., help="Comma-separated tasks (layercut's, or the harness's)."),
    drop: Optional[str] = typer.Option(None, help="Evaluate as if these layers were dropped (no copy)."),
    limit: Optional[int] = typer.Option(None, help="Examples per task."),
    harness: str = typer.Option("layercut", help="layercut | lm-eval | lmms-eval"),
    include_path: Optional[Path] = typer.Option(None, help="Folder of extra task YAMLs (lm-eval, lmms-eval)."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint to judge generated answers."),
    batch_size: int = typer.Option(8, min=1),
    out: Optional[Path] = typer.Option(None, help="Write the metrics as JSON."),
) -> None:
    """Evaluate a model (optionally with layers skipped) on tasks."""
    from layercut import api, surgery

    adapter = api.load_model(model)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    drop_list = _ints(drop, "--drop") or []
    if drop_list:
        surgery.check_drop(drop_list, adapter.num_layers, adapter.protected_layers())
    results: dict = {}
    with surgery.skipped(adapter, drop_list):
        if harness == "layercut":
            from layercut.evaluation import evaluate, prepare

            for name in names:
                with console.status(f"evaluating {name}"):
                    prepared = prepare(name, adapter, limit=limit)
                    results[name] = evaluate(adapter, prepared, batch_size=batch_size, judge_url=judge_url)
        elif harness == "lm-eval":
            from layercut.bridges.lm_eval_bridge import run_lm_eval

            results = run_lm_eval(adapter, names, include_path=str(include_path) if include_path else None,
                                  limit=limit, batch_size=batch_size)
        elif harness == "lmms-eval":
            from layercut.bridges.lmms_eval_plugin import run_lmms_eval

            results = run_lmms_eval(adapter, names, include_path=str(include_path) if include_path else None,
                                    limit=limit, batch_size=batch_size)
        else:
            raise LayercutError(f"unknown harness '{harness}': use layercut, lm-eval or lmms-eval")
    table = Table(title=f"{model}" + (f" without layers {drop_list}" if drop_list else ""))
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for name, metrics in results.items():
        for k, v in metrics.items():
            table.add_row(name, k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out_console.print(table)
    if out is not None:
        from layercut.io import atomic_file

        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(results, indent=1) + "\n")


@app.command("tasks")
def tasks_() -> None:
    """The built-in evaluation tasks."""
    from layercut.evaluation import TASKS

    table = Table(title="Evaluation tasks")
    for col in ("task", "domain", "kind", "image", "examples"):
        table.add_column(col)
    for name, spec in TASKS.items():
        table.add_row(name, spec.domain, spec.kind, "yes" if spec.image else "", str(spec.limit or ""))
    out_console.print(table)


@calib_app.command("build")
def calib_build(
    out: Path = typer.Option(..., help="JSONL to write (images go to a sibling <stem>_images/)."),
    kind: str = typer.Option("text", help="text | image | all"),
    n: int = typer.Option(64, min=1, help="Samples per domain."),
    seed: int = typer.Option(0),
    split: str = typer.Option("calib", help="calib | eval (disjoint sources)."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Write a built-in calibration set from the real offline data."""
    from layercut.data import builtin, by_domain, load_calib

    path = builtin.build_calib(out, kind=kind, n_per_domain=n, seed=seed, split=split, overwrite=overwrite)
    counts = {d: len(s) for d, s in by_domain(load_calib(path)).items()}
    out_console.print(f"wrote {path}: " + ", ".join(f"{d} {c}" for d, c in counts.items()))


@app.command()
def models() -> None:
    """Supported model families and built-in models."""
    from layercut import zoo
    from layercut.models import FAMILIES

    table = Table(title="Supported families")
    for col in ("family", "config model_type", "loads with", "always protected"):
        table.add_column(col)
    for f in FAMILIES:
        table.add_row(
            f.name, ", ".join(f.model_types),
            "AutoModelForImageTextToText" if f.vision else "AutoModelForCausalLM",
            "deepstack layers" if f.protected.__name__ != "_no_protected" else "",
        )
    out_console.print(table)
    for name, entry in zoo.ZOO.items():
        out_console.print(f"built-in: [bold]{name}[/bold] — {entry.description}")


@app.command()
def methods() -> None:
    """The selection methods."""
    from layercut.selection import METHODS

    table = Table(title="Selection methods")
    table.add_column("method")
    table.add_column("what it drops")
    for name, entry in METHODS.items():
        table.add_row(name, entry.description)
    out_console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs (replaced)."),
    budget: int = typer.Option(4, help="Layers to drop."),
    n: int = typer.Option(24, help="Calibration samples per domain."),
    sweep: bool = typer.Option(True, help="Also run a small sweep and write the regime report."),
    sweep_budgets: str = typer.Option("0:12:2", help="Budgets of the demo sweep."),
    sweep_limit: int = typer.Option(4, help="Documents per task in the demo sweep."),
    vlm: bool = typer.Option(False, "--vlm", help="Instead: the math-vision vs general-vision experiment "
                             "on the zoo's tiny-llava (scores by scope, every method x budgets 0..14, report)."),
    vlm_limit: int = typer.Option(40, help="--vlm: held-out questions per task in the sweep."),
) -> None:
    """Score, select and prune the built-in default model, then sweep and report; offline, on CPU."""
    from layercut.demo import run_demo

    if vlm:
        from layercut.demo import run_vlm_demo

        out = Path("runs/demo-vlm") if out == Path("runs/demo") else out
        run_vlm_demo(out, console=out_console, progress=_progress, limit=vlm_limit)
        return
    run_demo(out, budget=budget, n_per_domain=n, console=out_console, progress=_progress,
             sweep=sweep, sweep_budgets=sweep_budgets, sweep_limit=sweep_limit)


from layercut.zoo_cli import zoo_app  # noqa: E402 (its commands import this module's console lazily)

app.add_typer(zoo_app, name="zoo")


def main() -> None:
    _quiet_libraries()
    try:
        app(standalone_mode=False)
    except LayercutError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
