"""What layercut knows and ships: models, methods, tasks, the built-in calibration sets, and the
demo that runs the whole pipeline on the built-in default model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from layercut.cli import ui
from layercut.errors import LayercutError


def tasks_() -> None:
    """The built-in evaluation tasks."""
    from layercut.evaluation import TASKS

    table = Table(title="Evaluation tasks")
    for col in ("task", "domain", "kind", "image", "examples"):
        table.add_column(col)
    for name, spec in TASKS.items():
        table.add_row(name, spec.domain, spec.kind, "yes" if spec.image else "", str(spec.limit or ""))
    ui.out_console.print(table)


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
    from layercut.io import check_out

    check_out(out, overwrite)
    ui.writes(out)
    path = builtin.build_calib(out, kind=kind, n_per_domain=n, seed=seed, split=split, overwrite=overwrite)
    counts = {d: len(s) for d, s in by_domain(load_calib(path)).items()}
    ui.out_console.print(f"wrote {path}: " + ", ".join(f"{d} {c}" for d, c in counts.items()))


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
    ui.out_console.print(table)
    for name, entry in zoo.ZOO.items():
        ui.out_console.print(f"built-in: [bold]{name}[/bold] — {entry.description}")


def methods() -> None:
    """The selection methods."""
    from layercut.selection import METHODS

    table = Table(title="Selection methods")
    table.add_column("method")
    table.add_column("what it drops")
    for name, entry in METHODS.items():
        table.add_row(name, entry.description)
    ui.out_console.print(table)


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs (replaced)."),
    budget: int = typer.Option(4, help="Layers to drop."),
    n: int = typer.Option(24, min=1, help="Calibration samples per domain."),
    sweep: bool = typer.Option(True, help="Also run a small sweep and write the regime report."),
    sweep_budgets: str = typer.Option("0:12:2", help="Budgets of the demo sweep."),
    sweep_limit: int = typer.Option(4, min=1, help="Documents per task in the demo sweep."),
    vlm: bool = typer.Option(False, "--vlm", help="Instead: the math-vision vs general-vision experiment "
                             "on the zoo's tiny-llava (scores by scope, every method x budgets 0..14, report)."),
    vlm_limit: int = typer.Option(40, help="--vlm: held-out questions per task in the sweep."),
    vlm_models: str = typer.Option("tiny-llava,tiny-llava-nodrop", help="--vlm: the VLMs to run it on, "
                                   "side by side (zoo names or folders; default: the zoo's VLM trained "
                                   "with LayerDrop, and the one without)."),
) -> None:
    """Score, select and prune the built-in default model, then sweep and report; offline, on CPU."""
    from layercut import zoo
    from layercut.demo import run_demo, run_vlm_demo
    from layercut.io import check_out

    names = tuple(m.strip() for m in vlm_models.split(",") if m.strip())
    if vlm and (not names or any(m not in zoo.VLMS and not Path(m).is_dir() for m in names)):
        raise LayercutError(f"--vlm-models '{vlm_models}': use any of {', '.join(zoo.VLMS)} or "
                            "model folders")
    if vlm:
        out = Path("runs/demo-vlm") if out == Path("runs/demo") else out
    check_out(out, overwrite=True)  # the demo replaces its folder; the place must take it
    ui.on_interrupt(lambda: f"{out} holds what the demo finished so far (the next `layercut demo` replaces it)"
                    if out.exists() else f"nothing was written to {out}")
    if vlm:
        run_vlm_demo(out, names, console=ui.out_console, progress=ui.progress, limit=vlm_limit)
        return
    run_demo(out, budget=budget, n_per_domain=n, console=ui.out_console, progress=ui.progress,
             sweep=sweep, sweep_budgets=sweep_budgets, sweep_limit=sweep_limit)


