"""The `layercut` command line: score, probe, select, prune, heal, sweep, report, eval, calib,
models, methods, tasks, demo and zoo.

Every bad input becomes one line on stderr and exit code 2 (a `LayercutError`); outputs are
written to a temporary sibling and renamed, so a failed command leaves nothing behind.

- `app`: the typer application, its command table and `main` (the entry point's error handling).
- `stages`: one command per pipeline stage — score, probe, select, prune, heal.
- `sweeps`: sweep, report and eval.
- `info`: what layercut knows (models, methods, tasks), calib build, and the demo.
- `zoo`: the built-in models (list, build, eval, train).
- `ui`: consoles, progress bars and tables shared by every command and the demo.
This package's `__init__` imports nothing at load time, so `layercut.cli.ui` is cheap to import.
"""

from __future__ import annotations


def main() -> None:
    """The `layercut` console script."""
    import sys

    try:
        from layercut.cli.app import main as run

        run()
    except KeyboardInterrupt:  # Ctrl-C while the libraries still import: nothing was started
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
