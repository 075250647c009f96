"""The `layercut` application: which command is which function, and how errors end.

Every bad input becomes one line on stderr and exit code 2 (a `LayercutError`); outputs are
written to a temporary sibling and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from layercut.cli import info, stages, sweeps, ui
from layercut.cli.zoo import zoo_app
from layercut.errors import LayercutError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The `layercut` command line: score, select, prune, heal, calib, models, demo.")
for command in (stages.score, stages.probe, stages.select, stages.prune, stages.heal, sweeps.sweep,
                sweeps.report):
    app.command()(command)
app.command("eval")(sweeps.eval_)
app.command("tasks")(info.tasks_)
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets: build the built-in ones.")
calib_app.command("build")(info.calib_build)
app.add_typer(calib_app, name="calib")
for command in (info.models, info.methods, info.demo):
    app.command()(command)
app.add_typer(zoo_app, name="zoo")


def main() -> None:
    ui.quiet_libraries()
    try:
        app(standalone_mode=False)
    except LayercutError as exc:
        ui.console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        ui.console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise
