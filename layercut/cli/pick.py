"""`layercut pick`: the practitioner's answer from a finished sweep, the deepest cut and the method
that keep the asked share of the unpruned score on every named domain with confidence, and the
command that makes that checkpoint. The numbers are `regimes.pick`'s; this only shows them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from layercut.cli import ui

if TYPE_CHECKING:  # pandas and numpy load only when the command runs
    from layercut.regimes.pick import Cell


def pick(
    sweep: Path = typer.Option(..., help="A folder written by `layercut sweep`.", metavar="DIR"),
    keep: str = typer.Option(..., help="Shares of the unpruned score to keep, e.g. math=0.95,general=0.90 (each in (0, 1]; healed series: DOMAIN+healN).", metavar="LIST"),
    metric: Optional[str] = typer.Option(None, help="Metric to judge by (default: the regime analysis' primary metric)."),
    replicates: int = typer.Option(1000, min=1, help="Paired bootstrap resamples of the documents."),
    seed: int = typer.Option(0, help="Seed of the resampling."),
    point_estimates: bool = typer.Option(False, help="Judge the point values alone, without a lower bound (for a sweep without per-document values)."),
    out: Optional[Path] = typer.Option(None, help="Folder the printed prune command writes (default: beside the sweep, pruned-METHOD-kK)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as one JSON object, and nothing else, on stdout."),
) -> None:
    """The deepest cut (and method) that keeps a share of the unpruned score on every named domain."""
    from layercut.regimes.pick import parse_keep
    from layercut.regimes.pick import pick as choose_cut
    from layercut.report.frontier import default_out, prune_commands, trained_layers
    from layercut.report.sweep_folder import read_sweep

    target = parse_keep(keep)  # a bad --keep is one line before anything is read
    s = read_sweep(sweep)
    how = "point estimates" if point_estimates else f"{replicates} bootstrap resamples"
    with ui.console.status(f"retention of every cell ({how})"):
        p = choose_cut(s.results, s.docs, target, metric=metric, replicates=replicates, seed=seed,
                       point=point_estimates)
    c = p.chosen
    folder = out or default_out(s.path, c)
    commands = prune_commands(s.spec, c, folder, target, trained_layers(s.results, c))
    if as_json:
        answer = {"sweep": str(s.path), "model": s.spec.get("model"), **p.to_dict(), "out": str(folder),
                  "commands": commands}
        ui.out_console.file.write(json.dumps(answer) + "\n")
        return
    say = ui.out_console.print
    say(f"target: keep {', '.join(f'{d} ≥ {v:g}' for d, v in target.items())} of the unpruned {p.metric}",
        highlight=False, markup=False)
    say(f"r [low, high], each end a one-sided {_pct(p.confidence)} bound over {p.replicates} paired resamples"
        if p.replicates else "r alone: point estimates, no lower bound", highlight=False, markup=False)
    say(f"pick: k = {c.budget} with {c.method}, dropping layers {','.join(map(str, c.drop))}", highlight=False,
        markup=False)
    table = Table(show_lines=False)
    table.add_column("cell")
    for d, v in target.items():
        table.add_column(f"{d} ≥ {v:g}", justify="right")
    for role, cell in (("pick", c), ("runner-up", p.runner_up), ("next", p.next)):
        if cell is not None:
            table.add_row(f"{role}: k={cell.budget} {cell.method}",
                          *[_value(cell, d, bool(p.replicates)) for d in target])
    say(table)
    if p.runner_up is not None and p.runner_up.drop == c.drop:
        say(f"runner-up {p.runner_up.method} drops the same layers as {c.method}", highlight=False, markup=False)
    elif p.runner_up is not None and p.runner_up.misses:
        say(f"runner-up {p.runner_up.method} misses {', '.join(p.runner_up.misses)} at k = {c.budget}",
            highlight=False, markup=False)
    if p.next is None:
        say(f"k = {c.budget} is the deepest budget swept: sweep larger budgets to see further", highlight=False,
            markup=False)
    else:
        n = p.next
        say(f"next budget k = {n.budget} ({n.method}) misses "
            + ", ".join(f"{d} ({n.low[d]:.3f} < {target[d]:g})" for d in n.misses), highlight=False, markup=False)
    say("make it:", highlight=False, markup=False)
    for command in commands:
        say(f"  {command}", highlight=False, markup=False, soft_wrap=True)


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


def _value(cell: Cell, domain: str, bounds: bool) -> str:
    """'0.962 [0.951, 0.973]' (r alone without bounds), red where it misses the target."""
    text = f"{cell.r[domain]:.3f}" + (f" [{cell.low[domain]:.3f}, {cell.high[domain]:.3f}]" if bounds else "")
    return f"[red]{text}[/red]" if domain in cell.misses else text
