"""The `layercut` application: which command is which function, and how errors end.

Every bad input becomes one line on stderr and exit code 2 (a `LayercutError`); outputs are
written to a temporary sibling and renamed, so a failed command leaves nothing behind.
"""

from __future__ import annotations

import sys

import typer

from layercut.cli import info, pick, stages, sweeps, ui, zoo
from layercut.cli.zoo import zoo_app
from layercut.errors import LayercutError

def compact(command):
    """Help that reads at 80 columns: short metavars (N, X, PATH, TEXT) instead of typer's
    `<int range>`, and off-by-default switches as one flag (--overwrite, not --overwrite
    --no-overwrite), so the names and the descriptions keep their room."""
    import inspect

    for name, p in inspect.signature(command).parameters.items():
        info = p.default
        if not isinstance(info, typer.models.OptionInfo):
            continue
        kind = str(p.annotation)
        if "bool" in kind:
            if info.default is False and not info.param_decls:
                info.param_decls = ("--" + name.replace("_", "-"),)
            continue
        if info.metavar is None:
            info.metavar = ("N" if "int" in kind else "X" if "float" in kind else "PATH" if "Path" in kind
                            else "TEXT")
    return command


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The `layercut` command line: score, select, prune, heal, calib, models, demo.")
for command in (stages.score, stages.probe, stages.select, stages.prune, stages.heal, sweeps.sweep,
                sweeps.report, pick.pick):
    app.command()(compact(command))
app.command("eval")(compact(sweeps.eval_))
app.command("tasks")(info.tasks_)
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets: build the built-in ones.")
calib_app.command("build")(compact(info.calib_build))
app.add_typer(calib_app, name="calib")
for command in (info.models, info.methods, info.demo):
    app.command()(compact(command))
for command in (zoo.build, zoo.train, zoo.eval_):
    compact(command)  # registered by zoo's decorators; typer reads the options when it runs
app.add_typer(zoo_app, name="zoo")


def main() -> None:
    """Run the command named by sys.argv. How it ends: 0 done; 2 a bad input or option (one line
    on stderr naming the fix; typer's usage errors too, e.g. an option out of its range); 130
    interrupted (Ctrl-C: one line saying what was kept, outputs are never left half-written)."""
    ui.pin_consoles()
    ui.quiet_libraries()
    try:
        code = app(standalone_mode=False)
    except LayercutError as exc:
        ui.error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        ui.interrupted()
        sys.exit(130)
    except Exception as exc:
        kinds = {c.__name__ for c in type(exc).__mro__}  # click's or typer's own copy of click
        if "Abort" in kinds:
            ui.interrupted()
            sys.exit(130)
        if "ClickException" in kinds:
            ui.error(usage_message(exc))
            sys.exit(getattr(exc, "exit_code", 2))
        if "Exit" in kinds:
            sys.exit(getattr(exc, "exit_code", 0))
        raise
    if code == 130:  # typer turns Ctrl-C inside a command into Exit(130) and returns its code
        ui.interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def usage_message(exc: Exception) -> str:
    """A click/typer usage error as one line: what is wrong, the allowed range of an int option,
    and where the help is."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    param, ctx = getattr(exc, "param", None), getattr(exc, "ctx", None)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        allowed = (f"from {low} to {high}" if low is not None and high is not None
                   else f"{low} or more" if low is not None else f"{high} or less")
        message = message.rstrip(".") + f" (allowed: {allowed})"
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`layercut --help`"
    return f"{message.rstrip('.')}: see {where}"
