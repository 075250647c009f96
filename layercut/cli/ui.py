"""What the commands and the demo show: two consoles (tables and results on stdout, progress and
messages on stderr), the one progress-bar layout, the layer-scores table, and scoring with a
live tokens/s bar.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from layercut.errors import LayercutError

console = Console(stderr=True)
out_console = Console()
_interrupt_note: Callable[[], str] = lambda: "nothing was written"


def pin_consoles() -> None:
    """Tie the consoles to copies of the streams the command started with, so that sending a
    harness's output to OUT/harness.log (`evaluation.harness.quiet`, which redirects file
    descriptors 1 and 2) leaves our progress and results on the console."""
    import sys

    def pinned(stream: Any) -> Any:
        try:
            fd = os.dup(stream.fileno())
        except (AttributeError, OSError, ValueError):  # not a real file (a test's capture): as it is
            return stream
        return os.fdopen(fd, "w", encoding=getattr(stream, "encoding", None) or "utf-8",
                         errors=getattr(stream, "errors", None) or "strict", buffering=1)

    console.file, out_console.file = pinned(sys.stderr), pinned(sys.stdout)


def error(message: str) -> None:
    """The one line a refused command prints."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def writes(out: Any, what: str = "") -> None:
    """Say what a Ctrl-C leaves: this command's outputs appear whole or not at all."""
    on_interrupt(lambda: f"nothing was written to {out}{what}")


def on_interrupt(note: Callable[[], str]) -> None:
    """What the interrupted line says (a function: asked only when Ctrl-C comes)."""
    global _interrupt_note
    _interrupt_note = note


def interrupted() -> None:
    """The one line of a Ctrl-C."""
    try:
        note = _interrupt_note()
    except Exception:  # what to say must not fail the exit
        note = "stopped"
    console.print(f"interrupted: {note}", highlight=False, soft_wrap=True, markup=False)


def quiet_libraries() -> None:
    """Offline, and no transformers warnings or progress bars between ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class Bar(Progress):
    """A rich Progress that vanishes when an error or Ctrl-C stops it: the line that says why
    stays alone."""

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:  # and without the blank line Progress.stop adds off a terminal
            self.live.transient = True
            self.live.stop()
            return
        super().__exit__(exc_type, exc, tb)


def progress() -> Progress:
    """A progress bar on stderr; each task carries a `unit` field (samples, evaluations, ...)."""
    return Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        redirect_stdout=False,  # others' prints go where they go (a harness's: to its log)
        redirect_stderr=False,
    )


def layer_list(value: Optional[str], what: str) -> Optional[list[int]]:
    """'3,10,20' -> [3, 10, 20]; None stays None."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LayercutError(f"{what} '{value}': give comma-separated layer indices like 3,10,20") from None


def scores_table(scores: Any, title: str = "Layer scores (mean cosine of layer input vs output)") -> Table:
    """Per-domain cosine per layer ('-' where no token was scored), the difference of the first
    two domains, and which guard (e.g. cross-attention) holds a layer, where the family has any."""
    names = list(scores.domains)
    guards = {i: name for name, layers in scores.meta.get("family_guards", {}).items() for i in layers}
    table = Table(title=title, show_lines=False)
    table.add_column("layer", justify="right")
    for n in names:
        table.add_column(f"cos {n}", justify="right")
    if len(names) >= 2:
        table.add_column(f"{names[0]} − {names[1]}", justify="right")
    if guards:
        table.add_column("guarded (--allow)")
    for i in range(scores.num_layers):
        vals = [scores.domains[n].cosine[i] if scores.domains[n].tokens[i] else None for n in names]
        row = [str(i)] + ["-" if v is None else f"{v:.4f}" for v in vals]
        if len(names) >= 2:
            row.append("-" if None in vals[:2] else f"{vals[0] - vals[1]:+.4f}")
        if guards:
            row.append(guards.get(i, ""))
        table.add_row(*row)
    return table


def score_with_progress(model: Any, calib: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`api.score` with a rich progress bar over calibration samples; (adapter, scores)."""
    from layercut import api

    samples = api.calibration(calib)  # a bad file fails before the model loads
    adapter = api.load_model(model, kwargs.pop("dtype", "fp32"), kwargs.pop("device_map", None),
                             kwargs.pop("offload_folder", None))
    start, tokens = time.perf_counter(), 0

    def advance(batch: Any) -> None:
        nonlocal tokens
        tokens += batch.tokens
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        bar.update(task, advance=batch.samples, description=f"scoring {rate:,.0f} tokens/s")

    with progress() as bar:
        task = bar.add_task("scoring", total=len(samples), unit="samples")
        scores = api.score(adapter, samples, progress=advance, **kwargs)
    if not isinstance(calib, list):  # the name the user gave, not "in-memory"
        scores.meta["calibration"] = str(calib)
    for line in scores.nonfinite_report():
        console.print(f"[bold yellow]warning:[/bold yellow] {line}", highlight=False, soft_wrap=True)
    for line in scores.unobserved_report():
        console.print(f"note: {line}", highlight=False, soft_wrap=True)
    return adapter, scores
