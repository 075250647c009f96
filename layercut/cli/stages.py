"""The pipeline stages as commands: score, probe, select, prune and heal."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import (
    BarColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from layercut.cli import ui
from layercut.errors import LayercutError

DEVICE_MAP_HELP = (
    "Spread the model with accelerate: auto | balanced | a JSON file {module: GPU index | 'cpu' | 'disk'}."
)
ALLOW_HELP = (
    "Comma-separated family guards whose layers may be dropped, e.g. cross-attention (Mllama's "
    "cross-attention layers, protected by default)."
)
MAX_TOKENS_HELP = "Pack length-sorted samples into batches of at most this many (padded) tokens, instead of --batch-size rows"


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
    no_sample_stats: bool = typer.Option(False, "--no-sample-stats", help="Leave out each calibration sample's per-layer sums (kept by default, a few KB per sample, for `select --stability`)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Score every decoder layer per calibration domain in one streaming pass."""
    from layercut.io import atomic_file, check_out
    from layercut.scoring import SCOPES

    if scope not in SCOPES:
        raise LayercutError(f"unknown scope '{scope}': use one of {', '.join(SCOPES)}")
    csv = out.with_suffix(".csv")
    for path in (out, csv):
        check_out(path, overwrite)
    ui.writes(out, f" or {csv}")
    _, scores = ui.score_with_progress(
        model, calib, scope=scope, block_tokens=block_tokens, batch_size=batch_size,
        max_length=max_length, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
        max_tokens_per_batch=max_tokens_per_batch,
    )
    for d in scores.domains.values():
        d.per_sample = {} if no_sample_stats else d.per_sample
    with atomic_file(out, overwrite=overwrite) as tmp_json, atomic_file(csv, overwrite=overwrite) as tmp_csv:
        scores.save(tmp_json)
        scores.to_frame().to_csv(tmp_csv, index=False)
    ui.out_console.print(ui.scores_table(scores))
    ui.console.print(f"wrote {out} and {csv}")


def guarded(method: str, guard: bool) -> str:
    """METHOD, or METHOD+guard when --guard asks for it."""
    from layercut.selection import GUARD

    return method + GUARD if guard and not method.endswith(GUARD) else method


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
    allow: Optional[str] = typer.Option(None, help=ALLOW_HELP),
) -> None:
    """Single-drop damage profile: drop each layer alone, calibration NLL per domain; flags critical layers."""
    from layercut import api
    from layercut.io import check_out
    from layercut.probe import RULE

    check_out(out, overwrite)
    ui.writes(out)
    adapter = api.load_model(model, dtype, device_map, allow=allow or ())  # before the bar: errors are one line
    with ui.progress() as bar:
        task = bar.add_task("probe", total=None, unit="drops")
        profile = api.probe(adapter, calib, protect=protect, batch_size=batch_size, max_length=max_length,
                            cache_mem=cache_mem, progress=lambda done, total: bar.update(task, completed=done, total=total))
    profile.save(out)  # written whole (a temporary sibling, renamed)
    table = Table(title=f"Single-drop damage: calibration NLL rise (baseline {profile.baseline['all']:.3f})")
    table.add_column("layer", justify="right")
    for d in profile.nll:
        table.add_column(f"{d}", justify="right")
    table.add_column("critical")
    for i in range(profile.num_layers):
        cells = [("-" if v is None else f"{v:+.3f}") for v in (profile.damage(d)[i] for d in profile.nll)]
        table.add_row(str(i), *cells, "yes" if i in profile.flagged else "")
    ui.out_console.print(table)
    ui.out_console.print(f"critical layers ({RULE}): {', '.join(map(str, profile.flagged)) or 'none'}")
    ui.console.print(f"wrote {out} in {profile.seconds:.0f} s")


def select(
    scores: Optional[Path] = typer.Option(None, help="scores.json from `layercut score`."),
    method: str = typer.Option(..., help="Selection method (see `layercut methods`); with --stability a comma-separated list."),
    budget: Optional[int] = typer.Option(None, help="How many layers to drop."),
    protect: str = typer.Option("default", help="'default' (first+last), 'none', or indices like 0,29."),
    domain: Optional[str] = typer.Option(None, help="Domain for domain/spacing/block methods."),
    alpha: float = typer.Option(0.5, help="Weight of math in `mixed`."),
    min_gap: Optional[int] = typer.Option(None, help="Minimum distance between dropped layers (spacing)."),
    seed: int = typer.Option(0, help="Seed for `random`."),
    model: Optional[str] = typer.Option(None, help="Model (needed by `iterative`)."),
    calib: Optional[str] = typer.Option(None, help="Calibration set (needed by `iterative`)."),
    out: Optional[Path] = typer.Option(None, help="Write the selection (with --stability: the stability) as JSON."),
    probe: Optional[Path] = typer.Option(None, help="probe.json from `layercut probe` (for `damage` and --guard)."),
    guard: bool = typer.Option(False, help="Protect the probe's critical layers first (method NAME+guard)."),
    allow: Optional[str] = typer.Option(None, help=ALLOW_HELP),
    stability: bool = typer.Option(False, help="Instead: how often each method picks each layer when the calibration "
                                   "samples are redrawn (needs a scores file with per-sample statistics)."),
    budgets: Optional[str] = typer.Option(None, help="--stability: budgets, e.g. 2,4,8 or 2:16:2 (default --budget)."),
    replicates: int = typer.Option(200, min=1, help="--stability: resamples of the calibration samples."),
) -> None:
    """Print the ordered list of layers a method would drop (or, with --stability, how stable the pick is)."""
    from layercut import api
    from layercut.io import atomic_file, check_out

    if out is not None:
        check_out(out)
        ui.writes(out)
    if stability:
        return _stability(scores, method, budgets or (None if budget is None else str(budget)), protect, alpha,
                          min_gap, domain, seed, replicates, allow, out)
    if budget is None:
        raise LayercutError("say how many layers to drop: pass --budget K")
    options = {k: v for k, v in dict(domain=domain, min_gap=min_gap).items() if v is not None}
    with ui.progress() as bar:
        task = bar.add_task(method, total=None, unit="candidate drop sets", visible=method.startswith("iterative"))
        sel = api.select(
            str(scores) if scores else None, guarded(method, guard), budget, protect=protect, model=model,
            calib=calib, alpha=alpha, seed=seed, probe=str(probe) if probe else None, allow=allow or (),
            progress=lambda done, total: bar.update(task, completed=done, total=total), **options,
        )
    if out is not None:
        with atomic_file(out) as tmp:
            sel.save(tmp)
    ui.out_console.print(",".join(map(str, sel.drop)))


def _stability(scores: Optional[Path], methods: str, budgets: Optional[str], protect: str, alpha: float,
               min_gap: Optional[int], domain: Optional[str], seed: int, replicates: int, allow: Optional[str],
               out: Optional[Path]) -> None:
    """`select --stability`: the selection-stability tables (and --out stability.json)."""
    from layercut import api
    from layercut.io import atomic_file
    from layercut.regimes.stability import SPECIFIC
    from layercut.sweep import parse_budgets

    if scores is None or budgets is None:
        raise LayercutError("--stability needs --scores and --budgets (e.g. --budgets 2,4,8)")
    options = {k: v for k, v in dict(domain=domain, min_gap=min_gap).items() if v is not None}
    names = [m.strip() for m in methods.split(",") if m.strip()]
    with ui.progress() as bar:
        task = bar.add_task("resamples", total=replicates, unit="resamples")
        st = api.select_stability(str(scores), names, parse_budgets(budgets), protect=protect, allow=allow or (),
                                  replicates=replicates, alpha=alpha, seed=seed,
                                  progress=lambda done, total: bar.update(task, completed=done), **options)
    if out is not None:
        with atomic_file(out) as tmp:
            st.save(tmp)
    ks = list(next(iter(st.picks.values())))
    per = ", ".join(f"{d} {n}" for d, n in st.samples.items())
    ui.out_console.print(f"selection stability over {st.replicates} resamples of the calibration samples ({per} "
                         "per domain, drawn with replacement); Jaccard = |pick ∩ full-data pick| / |pick ∪ full-data pick|")
    table = Table(title="mean Jaccard with the full-data pick")
    table.add_column("method")
    for k in ks:
        table.add_column(f"k={k}", justify="right")
    for m, by in st.jaccard.items():
        table.add_row(m, *[f"{by[k]:.2f}" for k in ks])
    ui.out_console.print(table)
    for m, by in st.frequency.items():
        layers = [i for i in range(st.num_layers) if any(by[k][i] > 0 for k in ks)]
        freq = Table(title=f"{m}: resamples dropping each layer (* full-data pick)")
        freq.add_column("layer", justify="right")
        for k in ks:
            freq.add_column(f"k={k}", justify="right")
        for i in layers:
            freq.add_row(str(i), *[(f"{by[k][i]:.0%}" if by[k][i] else "") + ("*" if i in st.picks[m][k] else "")
                                   for k in ks])
        ui.out_console.print(freq)
    if st.domain_specific:
        first = next(iter(st.domain_specific.values()))
        ui.out_console.print(f"{first['math']} vs {first['general']}: the layers only one of them drops on the full "
                             "data, with the share of resamples in which it is still so; domain-specific when "
                             f"≥ {SPECIFIC:.0%}")
        spec = Table(title=f"{first['math']}-aware vs {first['general']}-aware picks")
        for col in ("k", f"only {first['math']}", f"only {first['general']}", "domain-specific"):
            spec.add_column(col)

        def shares(d: dict, layers: list[int]) -> str:
            return ", ".join(f"{x} ({d['shares'][str(x)]:.0%})" for x in layers) or "-"

        for k, d in st.domain_specific.items():
            spec.add_row(k, shares(d, d["math_only"]), shares(d, d["general_only"]),
                         f"{len(d['beyond_noise'])} of {len(d['shares'])}: {', '.join(map(str, d['beyond_noise'])) or '-'}")
        ui.out_console.print(spec)


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
    allow: Optional[str] = typer.Option(None, help=ALLOW_HELP),
) -> None:
    """Drop layers, save model + processor + card, and verify the reload gives equal logits."""
    from layercut import api
    from layercut.io import check_out

    if drop is None and (method is None or budget is None):
        raise LayercutError("say what to drop: --method NAME --budget K (with --scores), or --drop 3,10,20")
    if drop is not None and method is not None:
        raise LayercutError("--drop and --method exclude each other: use one")
    check_out(out, overwrite)
    ui.writes(out)
    with ui.console.status("pruning, saving and verifying the reload"):
        recipe = api.prune(
            model, calib, out=out, method=guarded(method or "math", guard), budget=budget or 0,
            probe=str(probe) if probe else None,
            scores=str(scores) if scores else None, drop=ui.layer_list(drop, "--drop"), protect=protect, allow=allow or (),
            mergekit=mergekit, overwrite=overwrite, dtype=dtype, device_map=device_map,
            offload_folder=offload_folder, max_tokens_per_batch=max_tokens_per_batch,
        )
    v = recipe.verify
    ui.out_console.print(
        f"dropped layers {recipe.drop} ({recipe.num_layers_before} → {len(recipe.kept)}), "
        f"parameters {recipe.parameters_before:,} → {recipe.parameters_after:,}; "
        f"reload verified (missing weights {v['missing_keys']}, max logit diff {v['max_abs_logit_diff']})"
    )
    ui.console.print(f"wrote {out}")


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
    interleaved: bool = typer.Option(False, "--interleaved", help="Instead of LoRA: fine-tune in full only the layers an INTERLACE selection named (the prune recipe's), all else frozen; try --lr 1e-4."),
    train_layers: Optional[str] = typer.Option(None, help="Instead of LoRA: fine-tune these layers in full (original indices, e.g. 9,14,16), all else frozen.", metavar="LAYERS"),
) -> None:
    """Heal a pruned model (LoRA on its kept layers, or --interleaved), save, verify the reload."""
    from layercut import api
    from layercut.extras import require
    from layercut.io import check_out

    layers = ui.layer_list(train_layers, "--train-layers")
    if not (interleaved or layers):
        require("peft", "healing")  # before the progress bar: a missing extra is one line
    check_out(out, overwrite)
    ui.writes(out)
    bar = ui.Bar(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"), TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=ui.console, redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task("healing", total=steps, loss="-")
        stats = api.heal(
            model, out, data=data, steps=steps, rank=rank, alpha=alpha, lr=lr, seed=seed,
            batch_size=batch_size, max_length=max_length, dtype=dtype, overwrite=overwrite,
            progress=lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4f}"),
            interleaved=interleaved, train_layers=layers,
        )
    before = ", ".join(f"{k} {v:.4f}" for k, v in stats.calib_nll_before.items())
    after = ", ".join(f"{k} {v:.4f}" for k, v in stats.calib_nll_after.items())
    what = (f"layers {stats.train_layers} in full ({stats.trainable_parameters:,} parameters, all else frozen)"
            if stats.mode == "interleaved" else
            f"{stats.layers} layers ({stats.trainable_parameters:,} LoRA parameters, merged)")
    ui.out_console.print(f"healed {what} for {stats.steps} steps in {stats.seconds:.1f} s on {stats.data}; "
                         f"calibration NLL {before} → {after}; reload verified")
    ui.console.print(f"wrote {out}")
