"""Many configurations at once: sweep, its report, and eval of one configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from layercut.cli import ui
from layercut.cli.stages import ALLOW_HELP, DEVICE_MAP_HELP
from layercut.errors import LayercutError


def sweep(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name.", rich_help_panel="What to sweep", metavar="NAME"),
    out: Path = typer.Option(..., help="Sweep folder (results.parquet/csv, cells.jsonl, sweep.json).", rich_help_panel="What to sweep", metavar="DIR"),
    scores: Optional[Path] = typer.Option(None, help="scores.json (needed by score-based methods).", rich_help_panel="What to sweep", metavar="FILE"),
    methods: str = typer.Option("math,nonmath,mixed,bi,block,last,uniform,spacing", show_default=False, help="Comma-separated methods (see `layercut methods`; default: math, nonmath, mixed, bi, block, last, uniform, spacing).", rich_help_panel="What to sweep", metavar="LIST"),
    budgets: str = typer.Option("0:12:2", help="start:stop:step (stop included) or a list like 0,2,4.", rich_help_panel="What to sweep", metavar="RANGE"),
    tasks: str = typer.Option("nll-math,nll-general", help="Comma-separated tasks (see `layercut tasks`), task YAML files, or HARNESS:TASK[@DOMAIN] (lm-eval, lmms-eval).", rich_help_panel="What to sweep", metavar="LIST"),
    include_path: Optional[Path] = typer.Option(None, help="Folder of extra harness task YAMLs (for lm-eval:/lmms-eval: tasks).", rich_help_panel="What to sweep", metavar="DIR"),
    limit: Optional[int] = typer.Option(None, min=1, help="Examples per task (default: each task's own).", rich_help_panel="What to sweep", metavar="N"),
    calib: Optional[str] = typer.Option(None, help="Calibration set (for `iterative`).", rich_help_panel="What to sweep", metavar="SET"),
    protect: str = typer.Option("default", help="'default' (first+last), 'none', or indices.", rich_help_panel="How methods choose", metavar="LAYERS"),
    allow: Optional[str] = typer.Option(None, help=ALLOW_HELP, rich_help_panel="How methods choose", metavar="GUARDS"),
    hybrid_threshold: Optional[int] = typer.Option(None, help="Budget where `hybrid` switches to spacing (default: found by the regime analysis).", rich_help_panel="How methods choose", metavar="K"),
    alpha: float = typer.Option(0.5, help="Weight of math in `mixed`.", rich_help_panel="How methods choose", metavar="A"),
    seed: int = typer.Option(0, rich_help_panel="How methods choose", metavar="N"),
    batch_size: int = typer.Option(8, min=1, rich_help_panel="How it runs", metavar="N"),
    executor: str = typer.Option("local", help="local | ray (RAY_ADDRESS picks a cluster; else a local one).", rich_help_panel="How it runs", metavar="NAME"),
    workers: Optional[int] = typer.Option(None, help="Ray actors (each loads the model once).", rich_help_panel="How it runs", metavar="N"),
    resume: bool = typer.Option(False, help="Continue a killed or extended sweep in --out.", rich_help_panel="Output"),
    report: bool = typer.Option(True, help="Write the report when done.", rich_help_panel="Output"),
    engine: str = typer.Option("trie", help="Teacher-forced tasks: trie (shared layer prefixes) | prefix (unpruned prefix only) | plain (layer-skip views). Same numbers.", rich_help_panel="How it runs", metavar="NAME"),
    cache_mem: Optional[str] = typer.Option(None, help="Bound on cached hidden states, e.g. 2GiB, 500MB or 0.25 of free RAM (default 0.5).", rich_help_panel="How it runs", metavar="SIZE"),
    probe: Optional[Path] = typer.Option(None, help="probe.json from `layercut probe` (for `damage` and --guard; else probed from --calib).", rich_help_panel="How methods choose", metavar="FILE"),
    guard: bool = typer.Option(False, help="Also run every method guarded (NAME+guard: the probe's critical layers protected).", rich_help_panel="How methods choose"),
    heal_steps: int = typer.Option(0, min=0, help="Also evaluate every cell after N healing steps on --calib (task TASK+healN in the results).", rich_help_panel="What to sweep", metavar="N"),
    heal: str = typer.Option("lora", help="How --heal-steps heals: lora (every kept layer) | interleaved (one layer per drop in full: INTERLACE's own, else the next kept layer; column `train`).", rich_help_panel="What to sweep", metavar="HOW"),
    heal_lr: float = typer.Option(5e-4, help="Healing's learning rate (interleaved: try 1e-4).", rich_help_panel="What to sweep", metavar="LR"),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16.", rich_help_panel="How it runs", metavar="NAME"),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP, rich_help_panel="How it runs", metavar="MAP"),
    max_tokens_per_batch: Optional[int] = typer.Option(None, min=1, help="Generation: at most this many prompt + new tokens per batch, instead of --batch-size rows.", rich_help_panel="How it runs", metavar="N"),
    verbose: bool = typer.Option(False, "--verbose", help="Show the harnesses' own output (lm-eval, lmms-eval) here instead of in OUT/harness.log.", rich_help_panel="Output"),
    adaptive: bool = typer.Option(False, "--adaptive", help="Documents in rounds (8, 16, 32, ...); a cell stops once it is beyond doubt behind its budget's leader, tied with it, or broken.", rich_help_panel="Adaptive"),
    first_round: int = typer.Option(8, min=1, help="--adaptive: documents in the first round (then doubling).", rich_help_panel="Adaptive", metavar="N"),
    adaptive_alpha: float = typer.Option(0.05, min=0.0001, max=0.5, help="--adaptive: error rate of each cell's decisions over all its rounds.", rich_help_panel="Adaptive", metavar="A"),
) -> None:
    """Evaluate every method at every budget on every task; weights load once."""
    from layercut import api, models
    from layercut.selection import GUARD
    from layercut.sweep import SPEC_FILE, SweepSpec, check_folder, parse_budgets, resume_spec

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
        allow=sorted(models.guard_names(allow or ())),
        batch_size=batch_size, options=options, engine=engine, cache_mem=cache_mem,
        probe=str(probe) if probe else None, heal_steps=heal_steps, heal=heal, heal_lr=heal_lr, dtype=dtype, device_map=device_map,
        include_path=str(include_path.absolute()) if include_path else None,
        max_tokens_per_batch=max_tokens_per_batch,
        adaptive={"first": first_round, "alpha": adaptive_alpha} if adaptive else None,
    )
    check_folder(out, resume)  # before the progress bar: a bad --out is one line
    api.check_allow(model, spec.allow)  # and so are unknown guard names
    if resume:  # a changed option is one line now; what it adds is said once
        _, added = resume_spec(SweepSpec.load(out / SPEC_FILE), spec, out)
        ui.console.print(f"resuming {out}: " + (f"adding {'; '.join(added)} (only their cells run)" if added
                                                else "finished cells are kept"), highlight=False, soft_wrap=True, markup=False)
    ui.on_interrupt(lambda: _kept(out, resume))
    from layercut.evaluation.harness import VERBOSE_ENV, is_harness_task

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    elif any(is_harness_task(t) for t in spec.tasks) and executor == "local":
        ui.console.print(f"note: lm-eval's and lmms-eval's own output goes to {out / 'harness.log'} "
                         "(--verbose shows it here)", highlight=False, soft_wrap=True, markup=False)
    with ui.progress() as bar:
        task = bar.add_task("sweep", total=None, unit="evaluations")
        df = api.sweep(spec, out, resume=resume, executor=executor, workers=workers,
                       progress=lambda done, total: bar.update(task, completed=done, total=total))
    shared = int(df.drop_duplicates(["method", "budget", "task"])["shared"].sum()) if len(df) else 0
    ui.out_console.print(f"{len(df)} result rows ({shared} cells reused another cell's drop set) in {out}")
    _warn_cut_cells(out, df)
    if report:
        from layercut.report import write_report

        folder = write_report(out)
        ui.out_console.print(f"report: {folder / 'report.html'}")


def _warn_cut_cells(out: Path, df) -> None:
    """One warning when generation cells cut more than TRUNCATION_WARN of their answers."""
    from layercut.evaluation import TRUNCATION_WARN
    from layercut.report.sweep_folder import truncated_shares

    shares = truncated_shares(out, df)
    over = {k: v for k, v in shares.items() if v > TRUNCATION_WARN}
    if over:
        (m, k, t), worst = max(over.items(), key=lambda kv: kv[1])
        ui.console.print(f"[bold yellow]warning:[/bold yellow] {len(over)} of {len(shares)} generation cells cut "
                         f"more than {TRUNCATION_WARN:.0%} of their answers at max_new_tokens (worst: {m} at k = {k} "
                         f"on {t}, {worst:.0%}); cut answers count as wrong: see the report",
                         highlight=False, soft_wrap=True)


def _kept(out: Path, resume: bool) -> str:
    """What a Ctrl-C leaves of a sweep: its finished cells (a new sweep stopped before its first
    cell leaves no folder)."""
    from layercut.sweep import LOG_FILE

    log = out / LOG_FILE
    cells = sum(1 for line in log.read_text().splitlines() if line.strip()) if log.is_file() else 0
    if not out.exists():
        return f"nothing was written to {out}"
    return f"{cells} cell{'s' if cells != 1 else ''} kept in {out}: rerun with --resume to continue"


def report(
    sweep_dir: Path = typer.Argument(..., help="A folder written by `layercut sweep`."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default SWEEP_DIR/report, replaced)."),
    replicates: int = typer.Option(1000, min=0, help="Paired bootstrap resamples of the documents (0: no intervals)."),
) -> None:
    """Regime analysis, plots and report.html/report.md of a sweep."""
    from layercut.io import check_out
    from layercut.report import REPORT_DIR, write_report

    if not sweep_dir.is_dir():
        raise LayercutError(f"sweep folder '{sweep_dir}' not found: run `layercut sweep --out {sweep_dir}` first")
    check_out(out or sweep_dir / REPORT_DIR, overwrite=True)
    ui.writes(out or sweep_dir / REPORT_DIR, " (an earlier report there is kept)")
    with ui.console.status(f"regime analysis and {replicates} bootstrap resamples"):
        folder = write_report(sweep_dir, out, replicates=replicates)
    ui.out_console.print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


def eval_(
    model: str = typer.Option(..., help="Model folder, hub id or built-in name."),
    tasks: str = typer.Option(..., help="Comma-separated tasks (layercut's, or the harness's)."),
    drop: Optional[str] = typer.Option(None, help="Evaluate as if these layers were dropped (no copy)."),
    allow: Optional[str] = typer.Option(None, help=ALLOW_HELP),
    limit: Optional[int] = typer.Option(None, min=1, help="Examples per task."),
    harness: str = typer.Option("layercut", help="layercut | lm-eval | lmms-eval"),
    include_path: Optional[Path] = typer.Option(None, help="Folder of extra task YAMLs (lm-eval, lmms-eval)."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint to judge generated answers."),
    batch_size: int = typer.Option(8, min=1),
    max_tokens_per_batch: Optional[int] = typer.Option(None, min=1, help="Generation: at most this many prompt + new tokens per batch (layercut's tasks)."),
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16."),
    device_map: Optional[str] = typer.Option(None, help=DEVICE_MAP_HELP),
    out: Optional[Path] = typer.Option(None, help="Write the metrics as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the harness's own output here instead of in a log file."),
) -> None:
    """Evaluate a model (optionally with layers skipped) on tasks."""
    from layercut import api, surgery
    from layercut.io import atomic_file, check_out

    if harness not in ("layercut", "lm-eval", "lmms-eval"):
        raise LayercutError(f"unknown harness '{harness}': use layercut, lm-eval or lmms-eval")
    if out is not None:
        check_out(out)
        ui.writes(out)
    adapter = api.load_model(model, dtype, device_map, allow=allow or ())
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    drop_list = ui.layer_list(drop, "--drop") or []
    if drop_list:
        surgery.check_drop(drop_list, adapter.num_layers, adapter.protected_layers())
    results: dict = {}
    with surgery.skipped(adapter, drop_list):
        if harness == "layercut":
            from layercut.evaluation import evaluate, prepare

            for name in names:
                with ui.console.status(f"evaluating {name}"):
                    prepared = prepare(name, adapter, limit=limit)
                    results[name] = evaluate(adapter, prepared, batch_size=batch_size, judge_url=judge_url,
                                             max_tokens_per_batch=max_tokens_per_batch)
        else:
            from layercut.bridges.lm_eval_bridge import run_lm_eval
            from layercut.bridges.lmms_eval_plugin import run_lmms_eval
            from layercut.evaluation.harness import quiet

            log = None if verbose else _harness_log(out)
            if log is not None:
                ui.console.print(f"note: {harness}'s own output goes to {log} (--verbose shows it here)",
                                 highlight=False, soft_wrap=True, markup=False)
            run = run_lm_eval if harness == "lm-eval" else run_lmms_eval
            with quiet(log), ui.console.status(f"{harness}: evaluating {', '.join(names)}"):
                results = run(adapter, names, include_path=str(include_path) if include_path else None,
                              limit=limit, batch_size=batch_size)
    table = Table(title=f"{model}" + (f" without layers {drop_list}" if drop_list else ""))
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for name, metrics in results.items():
        for k, v in metrics.items():
            table.add_row(name, k, f"{v:.4f}" if isinstance(v, float) else str(v))
    ui.out_console.print(table)
    for name, metrics in results.items():
        warn_truncated(name, metrics.get("truncated"))
    if out is not None:
        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(results, indent=1) + "\n")


def _harness_log(out: Optional[Path]) -> Path:
    """Where `eval --harness` sends the harness's output: beside --out, else a fresh file in the
    system's temporary folder (its name is printed)."""
    import tempfile

    if out is not None:
        return out.with_name(out.name + ".harness.log")
    fd, name = tempfile.mkstemp(prefix="layercut-harness-", suffix=".log")
    os.close(fd)
    return Path(name)


def warn_truncated(task: str, share: Optional[float]) -> None:
    """One warning when more than TRUNCATION_WARN of a task's answers hit max_new_tokens."""
    from layercut.evaluation import TRUNCATION_WARN

    if isinstance(share, float) and share > TRUNCATION_WARN:
        ui.console.print(f"[bold yellow]warning:[/bold yellow] {task}: {share:.0%} of the answers stopped at "
                         "max_new_tokens and count as wrong: a long answer needs a larger max_new_tokens (a task "
                         "YAML); a looping one ends at no limit", highlight=False, soft_wrap=True)

