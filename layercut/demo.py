"""`layercut demo`: the whole pipeline on the built-in default model, offline, on CPU.

SmolLM2-135M-Instruct is scored on the built-in math vs general text sets, pruned with the
math-aware method, the reload is verified, and a short greedy answer is shown before and after.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table

PROMPTS = (
    "Question: Tom has 3 boxes with 4 apples each. How many apples does he have?\nAnswer:",
    "The library is a quiet place where people",
)


def _generate(adapter: Any, prompt: str, new_tokens: int = 24) -> str:
    tok = adapter.tokenizer
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = adapter.model.generate(
            **enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


SWEEP_METHODS = ["math", "bi", "block", "last", "uniform", "spacing"]
SWEEP_TASKS = ["nll-math", "nll-general"]


def run_demo(
    out: Path,
    budget: int = 4,
    n_per_domain: int = 24,
    console: Console | None = None,
    progress: Callable[[], Any] | None = None,
    sweep: bool = True,
    sweep_budgets: str = "0:12:2",
    sweep_limit: int = 4,
) -> dict[str, Any]:
    """Run the demo into `out` (replaced) and return what it measured."""
    from layercut import api, models, zoo
    from layercut.cli.ui import score_with_progress, scores_table

    console = console or Console()
    t0 = time.perf_counter()
    console.rule("[bold]layercut demo")
    console.print(f"model: [bold]{zoo.DEFAULT_MODEL}[/bold] (built once into {zoo.cache_dir()})")
    adapter = api.load_model(zoo.DEFAULT_MODEL)
    L = adapter.num_layers
    params_before = models.parameter_count(adapter.model)
    console.print(f"loaded {adapter.family.name} with {L} decoder layers, {params_before:,} parameters")

    calib = f"builtin:text:{n_per_domain}"
    _, scores = score_with_progress(adapter, calib, max_length=256, batch_size=8)
    t_score = time.perf_counter() - t0
    console.print(scores_table(scores))

    table = Table(title=f"What each method would drop at budget {budget}")
    table.add_column("method")
    table.add_column("layers")
    picks = {}
    for method in ("math", "general", "mixed", "bi", "block", "last", "uniform", "spacing"):
        picks[method] = api.select(scores, method, budget).drop
        table.add_row(method, ", ".join(map(str, picks[method])))
    console.print(table)

    before = [_generate(adapter, p) for p in PROMPTS]
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scores.save(out / "scores.json")
    scores.to_frame().to_csv(out / "scores.csv", index=False)
    recipe = api.prune(
        adapter, scores=scores, method="math", budget=budget, out=out / "pruned", mergekit=True
    )
    after = [_generate(adapter, p) for p in PROMPTS]

    console.print(
        f"pruned with [bold]math[/bold]: dropped layers {recipe.drop}; "
        f"decoder layers {L} → {len(recipe.kept)}; parameters {recipe.parameters_before:,} → "
        f"{recipe.parameters_after:,} (−{100 * (1 - recipe.parameters_after / recipe.parameters_before):.1f}%)"
    )
    v = recipe.verify
    console.print(
        f"reload check: {v['missing_keys']} missing weights, max logit difference "
        f"{v['max_abs_logit_diff']} → saved to {out / 'pruned'}"
    )
    gen = Table(title="Greedy continuation, before → after")
    gen.add_column("prompt")
    gen.add_column(f"{L} layers")
    gen.add_column(f"{len(recipe.kept)} layers")
    for p, b, a in zip(PROMPTS, before, after):
        gen.add_row(p.replace("\n", " "), b, a)
    console.print(gen)
    result = {"scores": scores, "recipe": recipe, "before": before, "after": after}
    if sweep:
        result.update(_sweep(out, console, progress, sweep_budgets, sweep_limit))
    total = time.perf_counter() - t0
    console.print(f"done in {total:.0f} s (scoring {t_score:.0f} s); outputs in {out}")
    result["seconds"] = total
    return result


def _sweep(out: Path, console: Console, progress: Callable[[], Any] | None, budgets: str, limit: int) -> dict[str, Any]:
    """A small methods x budgets sweep on teacher-forced NLL, then the regime report."""
    from layercut import api, zoo
    from layercut.regimes import analyze
    from layercut.report import write_report
    from layercut.sweep import SweepSpec, parse_budgets

    t0 = time.perf_counter()
    spec = SweepSpec(
        model=zoo.DEFAULT_MODEL, methods=SWEEP_METHODS, budgets=parse_budgets(budgets),
        tasks=SWEEP_TASKS, scores=str(out / "scores.json"), limit=limit,
    )
    console.rule(f"sweep: {len(spec.methods)} methods x {len(spec.budgets)} budgets on {', '.join(spec.tasks)}")
    if progress is not None:
        with progress() as bar:
            task = bar.add_task("sweep", total=None, unit="evaluations")
            df = api.sweep(spec, out / "sweep", progress=lambda d, t: bar.update(task, completed=d, total=t))
    else:
        df = api.sweep(spec, out / "sweep")
    for grid in _budget_grids(df[df.task == "nll-math"],
                              "nll-math (mean NLL of GSM8K gold solutions; lower is better)", console.width):
        console.print(grid)
    folder = write_report(out / "sweep")
    analysis = analyze(df)
    for s in analysis.domain_series():
        spans = ", ".join(f"{r.name} {r.start}–{r.end}" for r in s.regimes if r.present)
        claims = "; ".join(f"{c.id} {c.verdict}" for c in s.claims)
        console.print(f"regimes on {s.name} ({s.metric}): {spans or 'none found'} ({claims})")
    seconds = time.perf_counter() - t0
    console.print(f"sweep and report in {seconds:.0f} s: {folder / 'report.html'}")
    return {"sweep": df, "analysis": analysis, "sweep_seconds": seconds}


# --- `layercut demo --vlm`: the paper's experiment on the zoo's tiny VLM ---------------------

VLM_METHODS = ["math", "general", "mixed", "mixed-rank", "bi", "block", "last", "uniform",
               "spacing", "random", "hybrid"]  # every method but `iterative` (hours on a CPU)
VLM_TASKS = ["math-vision", "general-vision", "math-vision-nll", "general-vision-nll"]
SCOPES = ("all", "text", "image")
VLM_MODELS = ("tiny-llava", "tiny-llava-nodrop")  # trained with LayerDrop, and the control without


def run_vlm_demo(
    out: Path,
    models: tuple[str, ...] = VLM_MODELS,
    console: Console | None = None,
    progress: Callable[[], Any] | None = None,
    budgets: str = "0:14:2",
    limit: int = 40,
    n_per_domain: int = 32,
    methods: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The VLM experiment (`vlm_experiment`) on each of `models` (zoo names or folders), each in
    OUT/NAME, then the regimes, verdicts and leaders side by side (printed, and
    OUT/comparison.md). `out` is replaced."""
    console = console or Console()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    runs = {Path(m).name: vlm_experiment(out / Path(m).name, m, console, progress, budgets, limit,
                                         n_per_domain, methods) for m in models}
    if len(runs) > 1:
        from layercut.regimes.bootstrap import Uncertainty
        from layercut.report.document import render_markdown

        side = {m: (r["analysis"], Uncertainty.load(r["report"] / "uncertainty.json")
                    if (r["report"] / "uncertainty.json").is_file() else None) for m, r in runs.items()}
        rows = side_by_side(side)
        for table in comparison_tables(rows):
            console.print(table)
        cols = list(rows[0])
        block = ("table", cols, [[r.get(c, "") for c in cols] for r in rows])
        (out / "comparison.md").write_text(render_markdown([block]))
        console.print(f"side by side: {out / 'comparison.md'}")
    return runs


def side_by_side(runs: dict[str, tuple[Any, Any]]) -> list[dict[str, str]]:
    """One row per (series, model): each regime's budgets and leaders, and H1-H3 with the share
    of bootstrap resamples in which each holds (when the sweep has per-document values)."""
    rows = []
    keys = [s.key for s in next(iter(runs.values()))[0].series]
    for key in keys:
        for model, (analysis, unc) in runs.items():
            s = next((s for s in analysis.series if s.key == key), None)
            if s is None:
                continue
            row = {"series": key, "model": model}
            for r in s.regimes:
                row[f"regime {r.index}"] = (f"k = {r.start}–{r.end}: {', '.join(r.leaders)}"
                                            if r.present else "not found")
            shares = unc.verdicts.get(key, {}) if unc is not None else {}
            for c in s.claims:
                p = f" (P {shares[c.id]:.2f})" if c.id in shares else ""
                row[c.id] = c.verdict + p
            row["mean r, k = 2 / 4 / 8"] = " / ".join(_mean_r(s, k) for k in (2, 4, 8))
            rows.append(row)
    return rows


def comparison_tables(rows: list[dict[str, str]]) -> list[Table]:
    """`side_by_side` rows as one table per series with the models as columns and the fields as
    rows: the wide form (a column per field) cuts every cell to '…' in an 80-column terminal."""
    tables = []
    for key in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == key]
        table = Table(title=f"{key} on each model (P: share of 1000 bootstrap resamples in which the claim holds)")
        table.add_column("")
        for r in mine:
            table.add_column(r["model"], overflow="fold")
        for field in [f for f in mine[0] if f not in ("series", "model")]:
            table.add_row(field, *[r.get(field, "") for r in mine])
        tables.append(table)
    return tables


def _mean_r(s: Any, budget: int) -> str:
    if budget not in s.budgets:
        return "–"
    i = s.budgets.index(budget)
    vals = [v[i] for v in s.scores.values() if v[i] is not None]
    return f"{sum(vals) / len(vals):.2f}" if vals else "–"


def vlm_experiment(
    out: Path,
    model: str,
    console: Console,
    progress: Callable[[], Any] | None,
    budgets: str,
    limit: int,
    n_per_domain: int,
    methods: list[str] | None,
) -> dict[str, Any]:
    """Score `model` on math-vision vs general-vision calibration (scopes all, text, image),
    sweep every method x budget on both families (choice accuracy and gold-answer NLL, `limit`
    questions per task), and write the regime report into the new folder `out`."""
    from layercut import api, models
    from layercut.cli.ui import score_with_progress, scores_table
    from layercut.data import builtin
    from layercut.regimes import analyze
    from layercut.report import write_report
    from layercut.sweep import SweepSpec, parse_budgets

    t0 = time.perf_counter()
    console.rule(f"[bold]layercut demo --vlm: {model}")
    out.mkdir(parents=True)
    adapter = api.load_model(model)
    console.print(f"model: [bold]{model}[/bold] ({adapter.family.name}, {adapter.num_layers} decoder "
                  f"layers, {models.parameter_count(adapter.model):,} parameters)")
    calib = builtin.build_calib(out / "calib.jsonl", kind="vision", n_per_domain=n_per_domain)
    samples = api.calibration(str(calib))
    by_scope = {}
    for scope in SCOPES:
        _, by_scope[scope] = score_with_progress(adapter, samples, scope=scope, batch_size=8)
        by_scope[scope].save(out / f"scores-{scope}.json")
    by_scope["all"].save(out / "scores.json")
    t_score = time.perf_counter() - t0
    console.print(scores_table(by_scope["all"], title="Layer scores on math-vision (math) vs "
                               "general-vision (general) calibration, all tokens"))
    image_vs_text = Table(title="Mean cosine over layers by token scope")
    image_vs_text.add_column("domain")
    for scope in SCOPES:
        image_vs_text.add_column(scope, justify="right")
    for d in by_scope["all"].domains:
        image_vs_text.add_row(d, *[f"{sum(by_scope[s].domains[d].cosine) / by_scope[s].num_layers:.4f}"
                                   for s in SCOPES])
    console.print(image_vs_text)

    spec = SweepSpec(model=model, methods=methods or VLM_METHODS, budgets=parse_budgets(budgets),
                     tasks=VLM_TASKS, scores=str(out / "scores.json"), limit=limit)
    console.rule(f"sweep: {len(spec.methods)} methods x {len(spec.budgets)} budgets x {len(spec.tasks)} tasks")
    console.print(f"tasks {', '.join(spec.tasks)}, {limit} questions each", highlight=False)
    t1 = time.perf_counter()
    sweep_dir = out / "sweep"
    if progress is not None:
        with progress() as bar:
            task = bar.add_task("sweep", total=None, unit="evaluations")
            df = api.sweep(spec, sweep_dir, progress=lambda d, t: bar.update(task, completed=d, total=t))
    else:
        df = api.sweep(spec, sweep_dir)
    for scope in SCOPES:
        shutil.copyfile(out / f"scores-{scope}.json", sweep_dir / f"scores-{scope}.json")
    t_sweep = time.perf_counter() - t1
    for task_name, label in (("math-vision", "math-vision choice accuracy"),
                             ("general-vision", "general-vision choice accuracy")):
        for grid in _budget_grids(df[(df.task == task_name) & (df.metric == "accuracy")],
                                  f"{label} ({limit} held-out questions; higher is better)", console.width):
            console.print(grid)
    folder = write_report(sweep_dir)
    analysis = analyze(df)
    for s in analysis.series:
        spans = ", ".join(f"{r.name} {r.start}–{r.end}" for r in s.regimes if r.present)
        claims = "; ".join(f"{c.id} {c.verdict}" for c in s.claims)
        console.print(f"regimes on {s.key}: {spans or 'none found'} ({claims})")
    total = time.perf_counter() - t0
    console.print(f"done in {total / 60:.1f} min (scoring {t_score:.0f} s, sweep {t_sweep / 60:.1f} min); "
                  f"report: {folder / 'report.html'}")
    return {"scores": by_scope, "sweep": df, "analysis": analysis, "report": folder,
            "seconds": total, "seconds_scoring": t_score, "seconds_sweep": t_sweep}


def _budget_grids(rows: Any, title: str, width: int = 80) -> list[Table]:
    """One metric of a sweep as budget x method tables, the methods split over as many tables as
    it takes for each to fit `width` columns (no value is cut to '0.…' in a narrow terminal)."""
    table = rows.pivot_table(index="budget", columns="method", values="value")
    methods = list(table.columns)
    groups: list[list[str]] = [[]]
    used = len("budget") + 4  # the budget column, its padding and the table's borders
    for m in methods:
        need = max(len(str(m)), 5) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = len("budget") + 4
        groups[-1].append(m)
        used += need
    grids = []
    for i, group in enumerate(groups):
        grid = Table(title=title if len(groups) == 1 else f"{title} ({i + 1}/{len(groups)})")
        grid.add_column("budget", justify="right")
        for m in group:
            grid.add_column(str(m), justify="right", no_wrap=True)
        for k, row in table.iterrows():
            grid.add_row(str(k), *[f"{row[m]:.2f}" for m in group])
        grids.append(grid)
    return grids
