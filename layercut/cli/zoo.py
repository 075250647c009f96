"""`layercut zoo list|build|eval|train`: the built-in models by name (layercut/zoo/)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from layercut.cli import ui
from layercut.errors import LayercutError

zoo_app = typer.Typer(no_args_is_help=True, help="Built-in models: list, build, evaluate, train.")


def _entry(name: str):
    from layercut import zoo

    if name not in zoo.ZOO:
        raise LayercutError(f"unknown zoo model '{name}': use one of {', '.join(zoo.ZOO)}")
    return zoo.ZOO[name]


@zoo_app.command("list")
def list_() -> None:
    """The zoo's models and whether they are built in the cache."""
    from layercut import zoo

    table = Table(title=f"layercut zoo (cache: {zoo.cache_dir()})")
    for col in ("name", "built", "description"):
        table.add_column(col)
    for name, e in zoo.ZOO.items():
        built = {"built": "yes", "stale": "stale: rebuilt on next use", "missing": ""}[zoo.state(name)]
        table.add_row(name, built, e.description)
    ui.out_console.print(table)


@zoo_app.command("build")
def build(
    name: str = typer.Argument(..., help="A zoo name (see `layercut zoo list`)."),
    rebuild: bool = typer.Option(False, help="Replace a folder already in the cache."),
) -> None:
    """Write a zoo model as a normal HF folder into the cache (from_pretrained works on it)."""
    import shutil

    from layercut import zoo

    _entry(name)
    path = zoo.cache_dir() / name
    if rebuild and path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    folder = zoo.resolve(name)
    ui.out_console.print(f"{name}: {folder} ({time.perf_counter() - t0:.0f} s)")


@zoo_app.command("train")
def train(
    name: str = typer.Argument(..., help="The zoo model to train (tiny-llava, tiny-llava-nodrop)."),
    out: Path = typer.Option(..., help="Folder for the weights, the log and the built model."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, min=1, help="torch threads (1 was fastest on a busy 2-core CPU)."),
    stage1_steps: Optional[int] = typer.Option(None, help="Override the recipe (smoke runs)."),
    stage2_steps: Optional[int] = typer.Option(None, help="Override the recipe (smoke runs)."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="Held-out questions per task at the end."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Train a zoo model from scratch here (seeded); prints held-out accuracy per task."""
    from dataclasses import replace

    from layercut.io import atomic_dir, check_out
    from layercut.zoo import train as trainer

    _entry(name)
    if name not in trainer.RECIPES:
        raise LayercutError(f"'{name}' is not trained here: `zoo train` knows {', '.join(trainer.RECIPES)}")
    check_out(out, overwrite)
    ui.writes(out)
    cfg = replace(trainer.RECIPES[name], seed=seed, threads=threads)
    for k, v in (("stage1_steps", stage1_steps), ("stage2_steps", stage2_steps),
                 ("eval_limit", eval_limit)):
        if v is not None:
            cfg = replace(cfg, **{k: v})
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with ui.progress() as bar:
            result = trainer.train(tmp, cfg, log=bar.console.print, progress=_Bar(bar), name=name)
    ui.out_console.print(gate_table(result["eval"], title=f"{name}: held-out choice accuracy per task"))
    ui.out_console.print(f"trained in {result['seconds'] / 60:.1f} min; weights {out / f'{name}.safetensors'}")


@zoo_app.command("eval")
def eval_(
    name: str = typer.Argument("tiny-llava", help="The zoo VLM to check (tiny-llava, tiny-llava-nodrop)."),
    limit: int = typer.Option(20, min=2, help="Held-out questions per task (five tasks per family)."),
    budget: int = typer.Option(2, min=1, help="Layers dropped for the pruning gate."),
    metrics: str = typer.Option("choice,nll,generate", help="Metrics shown true vs shuffled."),
    threads: int = typer.Option(1, min=1, help="torch threads."),
    out: Optional[Path] = typer.Option(None, help="Write everything measured as JSON."),
) -> None:
    """Held-out metrics (true vs shuffled images), the best 2-layer drop, and the gates."""
    import torch

    from layercut import api, zoo
    from layercut.io import atomic_file, check_out
    from layercut.zoo import gates

    _entry(name)
    if name not in zoo.VLMS:
        raise LayercutError(f"`zoo eval` checks the trained VLMs: use {' or '.join(zoo.VLMS)}, not {name}")
    kinds = tuple(k.strip() for k in metrics.split(",") if k.strip())
    bad = [k for k in kinds if k not in ("choice", "nll", "generate")]
    if bad or "choice" not in kinds:
        raise LayercutError(f"--metrics '{metrics}': use choice plus any of nll, generate")
    if out is not None:
        check_out(out)
        ui.writes(out)
    torch.set_num_threads(threads)
    adapter = api.load_model(name)
    with ui.console.status("evaluating (true vs shuffled images, then the 2-layer drops)"):
        res = gates.gates(adapter, limit=limit, budget=budget, kinds=kinds, log=ui.console.print,
                          gate_pruned=name != zoo.tinyvlm.NODROP)
    best = res["best"]
    cmd = f"layercut zoo eval {name} --limit {limit}"
    for kind in kinds:
        ui.out_console.print(gate_table(
            res["unpruned"], kind=kind, pruned=res["pruned"],
            title=f"{name}: held-out {kind} {_KIND_METRIC[kind]} ({limit} per task; pruned = "
                  f"without layers {best['drop']}, {', '.join(best['methods'])})"))
    table = Table(title=f"gates ({cmd})")
    for col in ("family", "gate", "value", "result"):
        table.add_column(col)
    for g in res["gates"]:
        miss = "" if g["passed"] else f" by {g['threshold'] - g['value']:.3f}"
        result = ("measured, not gated" if g["passed"] is None else
                  "[green]pass[/green]" if g["passed"] else f"[red]MISS{miss}[/red]")
        table.add_row(g["family"], g["gate"], f"{g['value']:.3f}", result)
    ui.out_console.print(table)
    ui.out_console.print(f"checked in {res['seconds'] / 60:.1f} min")
    if out is not None:
        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(res, indent=1) + "\n")


_KIND_METRIC = {"choice": "accuracy (candidate log-likelihood)", "nll": "mean NLL of the gold "
                "answer (lower is better)", "generate": "greedy exact match"}


class _Bar:
    """rich Progress with the 'unit' field our bar layout shows."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def add_task(self, description: str, total: int):
        return self.bar.add_task(description, total=total, unit="steps")

    def update(self, task, **kwargs) -> None:
        self.bar.update(task, **kwargs)


def gate_table(ev: dict, title: str, pruned: Optional[dict] = None, kind: str = "choice") -> Table:
    """Per task: true vs shuffled images (and the pruned model's, when given)."""
    table = Table(title=title)
    for col in ("family", "task", "true image", "shuffled", "true − shuffled"):
        table.add_column(col, justify="right" if col != "task" and col != "family" else "left")
    if pruned is not None:
        table.add_column("pruned (true)", justify="right")
    for family, res in ev.items():
        t, s = res[kind]["true"], res[kind]["shuffled"]
        for task in [k for k in t if k != "all"] + ["all"]:
            row = [family if task == "all" else "", task, f"{t[task]:.3f}", f"{s[task]:.3f}",
                   f"{t[task] - s[task]:+.3f}"]
            if pruned is not None:
                row.append(f"{pruned[family][kind]['true'][task]:.3f}")
            table.add_row(*row, end_section=task == "all")
    return table
