"""`layercut report`: a sweep folder in, SWEEP_DIR/report/ out.

The folder gets PNG plots, `report.md` (tables that point at the PNGs), one self-contained
`report.html` (the same document with every image inlined as a data URI: mail it, open it
offline) and `analysis.json` (the `regimes.Analysis` behind every number). The regimes, their
boundaries and the claim verdicts come from `layercut.regimes`; this file only draws and writes.
It is written to a temporary sibling and renamed, so a re-run replaces it whole or not at all.

Plots (matplotlib, no pyplot state):
  curves_<metric>.png   metric vs budget per method, one panel per task and per domain, the three
                        regimes shaded
  spread_<metric>.png   spread across methods vs budget with the noise floor and the half-peak
                        line, Kendall tau to the next budget on the right axis
  layer_scores.png      cosine per layer per domain, and 1 - cosine on a log scale (scores.json)
  block_distance.png    Gromov angular distance d(start, size) heatmaps (scores.json)
  dropped_layers.png    per method: budgets x layers, the dropped layers filled in
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layercut import regimes
from layercut.errors import LayercutError
from layercut.io import atomic_dir
from layercut.regimes import Analysis, SeriesAnalysis
from layercut.scoring import LayerScores
from layercut.probe import DamageProfile
from layercut.selection import GUARD, select
from layercut.sweep import HEAL_TAG

REPORT_DIR = "report"
DPI = 110
REGIME_COLOURS = {1: "#d6e6f5", 2: "#fdf0c8", 3: "#f6d2d2"}  # blue, amber, rose: light enough for lines on top
VERDICT_CLASS = {regimes.HOLDS: "holds", regimes.FAILS: "fails", regimes.UNTESTABLE: "untestable"}


@dataclass
class Sweep:
    """What a sweep folder holds."""

    path: Path
    results: pd.DataFrame  # the tidy results table
    spec: dict[str, Any]  # sweep.json ({} when absent)
    scores: LayerScores | None  # scores.json, when present
    # scores-<scope>.json beside it (e.g. text / image / all on a VLM), when present
    scope_scores: dict[str, LayerScores] = field(default_factory=dict)
    probe: DamageProfile | None = None  # probe.json (single-drop damage), when present


@dataclass
class Figure:
    """One PNG of the report."""

    file: str
    title: str
    caption: str


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Analyse the sweep in `sweep_dir` and write the report folder (default SWEEP_DIR/report,
    replaced if it exists); returns that folder. Open `report.html` inside it."""
    sweep = read_sweep(sweep_dir)
    analysis = regimes.analyze(sweep.results)
    out = Path(out) if out is not None else sweep.path / REPORT_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        figures = _figures(sweep, analysis, tmp)
        blocks = _document(sweep, analysis, figures)
        (tmp / "report.md").write_text(_markdown(blocks))
        (tmp / "report.html").write_text(_html(blocks, tmp, _title(sweep)))
        analysis.save(tmp / "analysis.json")
    return out


def read_sweep(sweep_dir: str | Path) -> Sweep:
    """The results table (parquet, else csv), sweep.json and scores.json of a sweep folder."""
    path = Path(sweep_dir)
    if not path.is_dir():
        raise LayercutError(f"sweep folder '{path}' not found: run `layercut sweep --out {path}` first")
    parquet, csv = path / "results.parquet", path / "results.csv"
    if parquet.is_file():
        results = pd.read_parquet(parquet)
    elif csv.is_file():
        results = pd.read_csv(csv, dtype={"drop": "string", "method": str, "task": str, "domain": str})
    else:
        raise LayercutError(f"no results.parquet or results.csv in '{path}': run `layercut sweep` (it writes them)")
    if "drop" in results.columns:
        results["drop"] = results["drop"].astype("string").fillna("").astype(str)
    spec: dict[str, Any] = {}
    if (path / "sweep.json").is_file():
        try:
            spec = json.loads((path / "sweep.json").read_text())
        except json.JSONDecodeError:
            raise LayercutError(f"'{path / 'sweep.json'}' is not valid JSON: re-run `layercut sweep`") from None
    scores = LayerScores.load(path / "scores.json") if (path / "scores.json").is_file() else None
    scope_scores = {p.stem[len("scores-"):]: LayerScores.load(p)
                    for p in sorted(path.glob("scores-*.json"))}
    probe = DamageProfile.load(path / "probe.json") if (path / "probe.json").is_file() else None
    return Sweep(path, results, spec, scores, scope_scores, probe)


# --------------------------------------------------------------------------- the document

# A document is a list of blocks, rendered twice (markdown and HTML):
#   ("h", level, text) ("p", text) ("ul", [text]) ("table", header, rows) ("fig", Figure)
# Text may hold **bold** and `code`.


def _document(sweep: Sweep, a: Analysis, figures: list[Figure]) -> list[tuple]:
    spec = sweep.spec
    B: list[tuple] = [("h", 1, _title(sweep))]
    L = _num_layers(sweep)
    facts = [
        f"**model** {spec.get('model', 'unknown')}" + (f" · {L} decoder layers" if L else ""),
        f"**methods** {', '.join(a.methods)}",
        f"**budgets** (layers dropped) {', '.join(map(str, a.budgets))}",
        "**tasks** " + ", ".join(f"{t} ({d})" for t, d in _task_domains(sweep.results)),
    ]
    if _protect(sweep) or "protected" in spec:
        facts.append(f"**protected layers** {', '.join(map(str, _protect(sweep))) or 'none'}")
    facts.append(f"**primary metric** {a.primary_metric} · {len(sweep.results)} result rows · "
                 f"families: contiguous = {', '.join(a.families['contiguous'])}; "
                 f"spacing-aware = {', '.join(a.families['spacing-aware'])}")
    B.append(("ul", facts))

    # Summary: the primary metric's domain series first.
    B.append(("h", 2, "Summary"))
    summary = []
    for s in a.domain_series() or [s for s in a.series if s.metric == a.primary_metric]:
        parts = [_regime_span(s.regime(i)) for i in (1, 2, 3)]
        verdicts = "; ".join(f"{c.id} **{c.verdict}**" for c in s.claims)
        summary.append(f"`{s.key}`: regime 1 {parts[0]}, regime 2 {parts[1]}, regime 3 {parts[2]}. {verdicts}.")
    B.append(("ul", summary))
    k = regimes.hybrid_threshold(a)
    if k is None:
        B.append(("p", ("**Hybrid threshold: none.** No domain reaches the structure-dominated regime inside the "
                        "swept budgets, so `hybrid` should keep ranking by its domain throughout (sweep larger "
                        "budgets to locate a switch).")))
    else:
        B.append(("p", (f"**Hybrid threshold: k = {k}.** The earliest start of the structure-dominated regime over "
                        f"the domain series of {a.primary_metric}: `hybrid` ranks by its domain below {k} layers "
                        f"dropped and spaces its drops from {k} on.")))
    used = _options(spec).get("hybrid_threshold")
    if "hybrid" in a.methods and used is not None:
        found = _options(spec).get("hybrid_threshold_found", True)
        how = ("found by the same analysis on the other methods' results" if found else
               "no structure-dominated regime was found then, so hybrid ranked at every budget")
        same = ("consistent with the above" if used == k or (k is None and not found) else
                "it differs from the above because the hybrid's own rows enter this analysis (they change ε and "
                "can lead)")
        B.append(("p", f"The sweep ran `hybrid` with threshold k = {used} ({how}); {same}."))

    B.append(("h", 2, "How the regimes are found"))
    B.extend(("p", para) for para in a.rule)

    B.append(("h", 2, "Regime boundaries"))
    B.append(("p", ("Budgets are numbers of decoder layers dropped. k2 and k3 are the first budgets of regimes 2 "
                    "and 3; ε is the noise floor in units of the unpruned score (0.05 = 5 %).")))
    rows = []
    for s in a.series:
        rows.append([f"`{s.key}`", f"{s.noise_floor:.3f} ({s.noise['source']})"]
                    + [_regime_cell(s.regime(i)) for i in (1, 2, 3)] + [_opt(s.k2), _opt(s.k3)])
    B.append(("table", ["series", "ε", "1 ranking-sensitive", "2 converging", "3 structure-dominated", "k2", "k3"],
              rows))

    B.append(("h", 2, "Claims"))
    B.append(("table", ["series", "H1 method matters at low k", "H2 convergence", "H3 structure at high k"],
              [[f"`{s.key}`"] + [c.verdict for c in s.claims] for s in a.series]))
    for s in a.series:
        B.append(("p", f"**{s.key}**"))
        B.append(("ul", [f"**{c.id}** ({c.statement}): **{c.verdict}** — {c.reason}" for c in s.claims]))

    B.append(("h", 2, "Who leads where"))
    B.append(("p", ("Leaders: the highest mean r (score relative to unpruned) over the regime's budgets. Lead count: "
                    "budgets of the regime at which the method had the best score (ties count for all).")))
    rows = []
    for s in a.series:
        for i in (1, 2, 3):
            rg = s.regime(i)
            if not rg.present:
                continue
            ranked = sorted(rg.mean_score.items(), key=lambda kv: -kv[1])
            rows.append([f"`{s.key}`", f"{i} {rg.name}", _span(rg.budgets),
                         ", ".join(f"{m} ({v:.3f})" for m, v in ranked if m in rg.leaders),
                         ", ".join(f"{m} {v:.3f}" for m, v in ranked),
                         ", ".join(f"{m} {c}" for m, c in sorted(rg.lead_counts.items(), key=lambda kv: -kv[1])),
                         _num(rg.mean_tau)])
    B.append(("table", ["series", "regime", "budgets", "leader(s)", "mean r of every method", "lead counts",
                        "mean τ to next k"], rows))

    parents = _hybrid_parents(spec)
    hybrid = regimes.compare_hybrid(a, "hybrid", parents)
    if hybrid:
        B.append(("h", 2, "Hybrid vs its parents"))
        B.append(("p", (f"`hybrid` against `{parents[0]}` (its domain ranking) and `{parents[1]}` (spacing-constrained) "
                        "at every budget. Δ = hybrid − the better parent, oriented so that positive means hybrid is "
                        "better, in metric units (domain series: relative to unpruned); 'within noise' compares "
                        "|Δ r| with the series' ε.")))
        for key in dict.fromkeys(r.series for r in hybrid):
            s = next(x for x in a.series if x.key == key)
            rows = [[str(r.budget), _num(r.hybrid)] + [_num(r.parents.get(p)) for p in parents]
                    + [r.best_parent or "", _signed(r.delta),
                       "" if r.within_noise is None else ("yes" if r.within_noise else "no"),
                       _opt(s.budget_stats[s.budgets.index(r.budget)].regime)] for r in hybrid if r.series == key]
            B.append(("p", f"**{key}**"))
            B.append(("table", ["k", "hybrid"] + list(parents) + ["better parent", "Δ", "within noise", "regime"],
                      rows))

    if sweep.probe is not None:
        B.extend(_guard_section(sweep, a))
    B.extend(_heal_section(sweep, a))

    B.append(("h", 2, "Figures"))
    for f in figures:
        B.append(("fig", f))

    B.append(("h", 2, "Per-budget detail"))
    B.append(("p", ("spread and std are across methods in the metric's units (domain series: relative to "
                    "unpruned); rel. spread is max − min of r; τ_b compares the methods' order at k with the "
                    "next budget (empty where undefined, e.g. all tied); near-best: within ε of the best.")))
    for s in a.series:
        unit = "relative to unpruned" if s.kind == "domain" else f"{s.metric}, {_direction(s)}"
        B.append(("h", 3, f"{s.key} ({unit}; ε = {s.noise_floor:.3f})"))
        rows = [[str(b.budget), str(b.methods), f"{b.spread:.4g}", f"{b.std:.4g}", f"{b.rel_spread:.3f}",
                 _num(b.tau_next), ", ".join(b.leaders), ", ".join(b.near_best), _opt(b.regime)]
                for b in s.budget_stats]
        B.append(("table", ["k", "methods", "spread", "std", "rel. spread", "τ_b(k, next)", "leader(s)",
                            "near-best", "regime"], rows))
    return B


def _guard_section(sweep: Sweep, a: Analysis) -> list[tuple]:
    """The probe's critical layers, and every guarded method against its unguarded self."""
    probe = sweep.probe
    B: list[tuple] = [("h", 2, "Critical-layer guard")]
    damage = probe.damage("all")
    cos_rank = {}
    if sweep.scores is not None:
        pooled = sweep.scores.combined().cosine
        order = sorted(range(len(pooled)), key=lambda i: -pooled[i])  # rank 1 = most redundant by cosine
        cos_rank = {i: order.index(i) + 1 for i in range(len(pooled))}
    flagged = ", ".join(f"{i} (+{damage[i]:.3f} nats" + (f", cosine rank {cos_rank[i]}" if cos_rank else "") + ")"
                        for i in probe.flagged) or "none"
    B.append(("p", (f"Single-drop damage: each layer dropped alone, calibration NLL per domain (unpruned "
                    f"{probe.baseline['all']:.3f} nats on all domains; {probe.seconds:.0f} s). Critical layers "
                    f"({probe.rule}): **{flagged}**. A `+guard` method protects them before it chooses.")))
    res = sweep.results[sweep.results.metric == a.primary_metric]
    pairs = [m for m in res.method.unique() if m + GUARD in set(res.method)]
    if not pairs:
        return B
    B.append(("p", (f"Guarded vs unguarded, {a.primary_metric} per task at every budget; Δ = guarded − "
                    "unguarded, oriented so that positive means the guard helped.")))
    for task in res.task.unique():
        t = res[res.task == task]
        higher = bool(t.higher_is_better.iloc[0])
        rows = []
        for k in sorted(t.budget.unique()):
            row = [str(k)]
            for m in pairs:
                v = t[(t.method == m) & (t.budget == k)].value
                g = t[(t.method == m + GUARD) & (t.budget == k)].value
                if v.empty or g.empty:
                    row.append("")
                    continue
                delta = (g.iloc[0] - v.iloc[0]) * (1 if higher else -1)
                row.append(f"{v.iloc[0]:.4g} (same)" if delta == 0 else
                           f"{v.iloc[0]:.4g} → {g.iloc[0]:.4g} ({delta:+.3g})")
            rows.append(row)
        B.append(("p", f"**{task}** ({'higher' if higher else 'lower'} is better)"))
        B.append(("table", ["k"] + [f"{m} → {m}{GUARD}" for m in pairs], rows))
    return B


def _heal_section(sweep: Sweep, a: Analysis) -> list[tuple]:
    """Healed cells (`--heal-steps`, task TASK+healN): does healing change who wins at each budget?"""
    res = sweep.results[sweep.results.metric == a.primary_metric]
    healed = [t for t in res.task.unique() if HEAL_TAG in t and t.split(HEAL_TAG)[0] in set(res.task)]
    if not healed:
        return []
    steps = sweep.spec.get("heal_steps", "?")
    B: list[tuple] = [("h", 2, "Before and after healing"),
                      ("p", (f"Every cell was also evaluated after {steps} LoRA steps on the calibration data "
                             "(`TASK+heal` series; their regimes are in the tables above). Winner: the best "
                             f"method by {a.primary_metric} at each budget (ties listed together)."))]
    for task in healed:
        base = task.split(HEAL_TAG)[0]
        rows, changed = [], 0
        for k in sorted(res.budget.unique()):
            cells = []
            for t in (base, task):
                x = res[(res.task == t) & (res.budget == k)]
                if x.empty:
                    cells.append(("", float("nan")))
                    continue
                best = x.value.max() if bool(x.higher_is_better.iloc[0]) else x.value.min()
                cells.append((", ".join(sorted(x[x.value == best].method)), best))
            same = cells[0][0] == cells[1][0]
            changed += not same
            rows.append([str(k), f"{cells[0][0]} ({cells[0][1]:.4g})", f"{cells[1][0]} ({cells[1][1]:.4g})",
                         "" if same else "changed"])
        B.append(("p", f"**{base}**: the winner changes at {changed} of {len(rows)} budgets after healing."))
        B.append(("table", ["k", "winner before", "winner after healing", ""], rows))
    return B


def _markdown(blocks: list[tuple]) -> str:
    out: list[str] = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            header, rows = b[1], b[2]
            cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")
            lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
            out.append("\n".join(lines) if rows else "_(none)_")
        elif b[0] == "fig":
            f = b[1]
            out.append(f"### {f.title}\n\n![{f.title}]({f.file})\n\n{f.caption}")
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple], folder: Path, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>" if b[2]
                        else "<p><em>(none)</em></p>")
        elif b[0] == "fig":
            f = b[1]
            data = base64.b64encode((folder / f.file).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(f.title)}" src="data:image/png;base64,{data}">'
                        f"<figcaption><b>{html.escape(f.title)}.</b> {_inline(f.caption)}</figcaption></figure>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1280px;
       margin: 2em auto; padding: 0 1.5em; color: #1d1d1f; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #e5e5e5; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tbody tr:nth-child(even) { background: #fafafa; }
td.holds { background: #dff3e0; font-weight: 600; }
td.fails { background: #f9dede; font-weight: 600; }
td.untestable { background: #eeeeee; color: #555; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; font-size: 90%; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #e5e5e5; }
figcaption { font-size: 13px; color: #444; margin-top: .4em; }
"""


def _inline(text: str) -> str:
    t = html.escape(str(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _td(cell: Any) -> str:
    cls = VERDICT_CLASS.get(str(cell))
    return f'<td class="{cls}">{_inline(cell)}</td>' if cls else f"<td>{_inline(cell)}</td>"


# --------------------------------------------------------------------------- the figures


def _figures(sweep: Sweep, a: Analysis, folder: Path) -> list[Figure]:
    styles = _styles(a)
    figs: list[Figure] = []
    for metric in dict.fromkeys(s.metric for s in a.series):
        series = [s for s in a.series if s.metric == metric]
        figs.append(_plot_curves(series, metric, styles, folder))
        figs.append(_plot_spread(series, metric, folder))
    if sweep.scores is not None:
        figs.append(_plot_layer_scores(sweep.scores, _protect(sweep), folder))
        if any(d.block_samples for d in sweep.scores.domains.values()):
            figs.append(_plot_block_distance(sweep.scores, _protect(sweep), folder))
    if sweep.scope_scores:
        figs.append(_plot_scope_scores(sweep.scope_scores, _protect(sweep), folder))
    if sweep.probe is not None:
        figs.append(_plot_damage(sweep.probe, sweep.scores, folder))
    if "drop" in sweep.results.columns:
        fig = _plot_dropped(sweep, a, styles, folder)
        if fig is not None:
            figs.append(fig)
    return figs


def _plot_curves(series: list[SeriesAnalysis], metric: str, styles: dict[str, dict], folder: Path) -> Figure:
    fig, axes = _grid(len(series), width=5.0, height=3.6)
    for ax, s in zip(axes, series):
        _shade(ax, s)
        for m in s.methods:
            y = np.array([np.nan if v is None else v for v in s.values[m]], dtype=float)
            ax.plot(s.budgets, y, label=m, **styles[m])
        ax.axhline(s.baseline, color="#777", linewidth=0.8, linestyle=":", zorder=1)
        if s.kind == "task":
            n = f", n={s.n}" if s.n else ""
            ax.set_title(f"task {s.name} [{s.domain}]{n}", fontsize=10)
            ax.set_ylabel(f"{metric} ({_direction(s)})")
        else:
            ax.set_title(f"domain {s.name}: mean of {len(s.tasks)} task(s)", fontsize=10)
            ax.set_ylabel(f"{metric} relative to unpruned")
        _budget_axis(ax, s.budgets)
    handles = [h for h in _legend_handles(series, styles)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle(f"{metric} vs budget per method (shading: regimes 1 ranking-sensitive, 2 converging, "
                 "3 structure-dominated)", fontsize=11)
    name = f"curves_{_slug(metric)}.png"
    _save(fig, folder / name)
    return Figure(name, f"{metric} vs budget",
                  f"{metric} after dropping k decoder layers, one line per method (dashed: contiguous drops; "
                  "squares: spacing-aware; circles: ranking methods). Dotted grey line: the unpruned model. Shaded "
                  "bands: the regimes found by the change-point rule (blue 1 ranking-sensitive, amber 2 "
                  "converging, rose 3 structure-dominated); an absent regime has no band. Domain panels average "
                  "the score relative to the unpruned model over the domain's tasks (1 = unpruned).")


def _plot_spread(series: list[SeriesAnalysis], metric: str, folder: Path) -> Figure:
    fig, axes = _grid(len(series), width=5.0, height=3.4)
    for ax, s in zip(axes, series):
        _shade(ax, s)
        pct = 100.0
        ks = [b.budget for b in s.budget_stats]
        ax.plot(ks, [pct * b.rel_spread for b in s.budget_stats], color="#1d1d1f", marker="o", markersize=4,
                label="spread (max − min)")
        ax.plot(ks, [pct * b.rel_std for b in s.budget_stats], color="#555", linestyle="--", linewidth=1,
                label="std across methods")
        ax.axhline(pct * s.noise_floor, color="#c0392b", linestyle=":", linewidth=1.2, label="noise floor ε")
        peak = s.claim("H1").numbers.get("peak_spread")
        if peak is not None and peak > s.noise_floor:
            ax.axhline(pct * peak / 2, color="#2c7fb8", linestyle="-.", linewidth=1, label="half of peak S*/2")
        ax.set_ylabel("% of unpruned score")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{s.kind} {s.name}", fontsize=10)
        _budget_axis(ax, s.budgets)
        tw = ax.twinx()
        taus = [np.nan if b.tau_next is None else b.tau_next for b in s.budget_stats]
        tw.plot(ks, taus, color="#8e44ad", marker="D", markersize=3.5, linewidth=0.9, alpha=0.85,
                label="Kendall τ_b (k vs next k)")
        tw.set_ylim(-1.05, 1.05)
        tw.set_ylabel("τ_b", color="#8e44ad")
        tw.tick_params(axis="y", colors="#8e44ad", labelsize=8)
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle(f"{metric}: spread across methods vs budget (relative to the unpruned score)", fontsize=11)
    name = f"spread_{_slug(metric)}.png"
    _save(fig, folder / name)
    return Figure(name, f"{metric}: spread across methods",
                  "How far apart the methods are at each budget, as a percentage of the unpruned score (left axis): "
                  "max − min (black) and the standard deviation (dashed). Red dotted: the noise floor ε (the range "
                  "equally good methods would exceed 5 % of the time). Blue dash-dot: half the peak spread, the "
                  "threshold of the converging regime. Purple (right axis): Kendall τ_b between the methods' "
                  "ranking at k and at the next budget (1 = same order, missing = undefined, e.g. all tied).")


def _plot_layer_scores(scores: LayerScores, protect: list[int], folder: Path) -> Figure:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(12, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = np.arange(scores.num_layers)
    for name, d in scores.domains.items():
        cos = np.array(d.cosine)
        left.plot(layers, cos, marker="o", markersize=3, label=name)
        right.plot(layers, np.clip(1.0 - cos, 1e-6, None), marker="o", markersize=3, label=name)
    for ax in (left, right):
        for p in protect:
            ax.axvspan(p - 0.5, p + 0.5, color="#bbb", alpha=0.35, linewidth=0)
        ax.set_xlabel("decoder layer ℓ")
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.5, scores.num_layers - 0.5)
    left.set_ylabel("cosine(x_ℓ, y_ℓ), mean over tokens")
    left.set_title("layer input vs output similarity (high = layer changes little)", fontsize=10)
    right.set_yscale("log")
    right.set_ylabel("1 − cosine (log scale)")
    right.set_title("the same as 1 − cosine, to separate layers near 1", fontsize=10)
    left.legend(title="domain", fontsize=9)
    fig.suptitle(f"per-domain layer scores ({scores.model or 'model'}, token scope: {scores.scope}; grey: protected "
                 "layers)", fontsize=11)
    _save(fig, folder / "layer_scores.png")
    return Figure("layer_scores.png", "Per-domain layer scores",
                  "Mean cosine similarity between each decoder layer's input and output, per calibration domain "
                  "(left), and 1 − cosine on a log scale (right). Domain methods drop the layers with the highest "
                  "cosine of their domain; where the domain curves cross, the domains disagree on which layers "
                  "are redundant. Grey columns: protected layers.")


def _plot_scope_scores(by_scope: dict[str, LayerScores], protect: list[int], folder: Path) -> Figure:
    """One panel per domain, one line per token scope (text / image / all ...)."""
    domains = list(dict.fromkeys(d for sc in by_scope.values() for d in sc.domains))
    fig, axes = _grid(len(domains), width=5.4, height=3.8, ncols=len(domains))
    for ax, name in zip(axes, domains):
        for scope, sc in by_scope.items():
            if name not in sc.domains:
                continue
            cos = np.array(sc.domains[name].cosine)
            ax.plot(np.arange(len(cos)), cos, marker="o", markersize=3, label=scope)
        for p in protect:
            ax.axvspan(p - 0.5, p + 0.5, color="#bbb", alpha=0.35, linewidth=0)
        ax.set_title(f"domain {name}", fontsize=10)
        ax.set_xlabel("decoder layer ℓ")
        ax.set_ylabel("cosine(x_ℓ, y_ℓ)")
        ax.grid(alpha=0.3)
        ax.legend(title="token scope", fontsize=8)
    fig.suptitle("per-layer scores by token scope (grey: protected layers)", fontsize=11)
    _save(fig, folder / "layer_scores_scopes.png")
    return Figure("layer_scores_scopes.png", "Per-layer scores by token scope",
                  "Mean cosine of each decoder layer's input and output over the image tokens, the text "
                  "tokens and all tokens of each calibration domain. Where the image and text curves part, "
                  "a layer treats the two kinds of token differently, and a text-only calibration would "
                  "rank it differently from one that sees the images.")


def _plot_damage(probe: DamageProfile, scores: LayerScores | None, folder: Path) -> Figure:
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(12, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = np.arange(probe.num_layers)
    for name in probe.nll:
        d = np.array([np.nan if v is None else v for v in probe.damage(name)], dtype=float)
        left.plot(layers, d, marker="o", markersize=3, label=name)
    for i in probe.flagged:
        left.axvspan(i - 0.5, i + 0.5, color="#f6d2d2", alpha=0.8, linewidth=0)
    left.set_yscale("symlog", linthresh=0.05)
    left.set_ylabel("NLL rise when dropped alone (nats)")
    left.set_title("single-drop damage (rose: critical layers)", fontsize=10)
    left.legend(title="domain", fontsize=9)
    if scores is not None:
        for name, d in scores.domains.items():
            right.plot(layers, np.clip(1.0 - np.array(d.cosine), 1e-6, None), marker="o", markersize=3, label=name)
        for i in probe.flagged:
            right.axvspan(i - 0.5, i + 0.5, color="#f6d2d2", alpha=0.8, linewidth=0)
        right.set_yscale("log")
        right.set_ylabel("1 − cosine (log scale)")
        right.set_title("what the cosine scores say about the same layers", fontsize=10)
        right.legend(title="domain", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("decoder layer ℓ")
        ax.grid(alpha=0.3)
        ax.set_xlim(-0.5, probe.num_layers - 0.5)
    fig.suptitle(f"single-drop damage beside the cosine profile ({probe.model or 'model'})", fontsize=11)
    _save(fig, folder / "damage.png")
    return Figure("damage.png", "Single-drop damage beside the cosine scores",
                  "Left: how much the calibration NLL rises when each layer alone is dropped, per domain "
                  f"(symlog scale); rose columns: the critical layers ({probe.rule}). Right: 1 − cosine per "
                  "domain for the same layers. A layer with ordinary cosine but high damage is one that cosine "
                  "ranking would cut and should not.")


def _plot_block_distance(scores: LayerScores, protect: list[int], folder: Path) -> Figure:
    from matplotlib.figure import Figure as MplFigure

    L = scores.num_layers
    panels = [(n, n, d) for n, d in scores.domains.items() if d.block_samples]
    if len(panels) > 1:
        panels = [("all domains pooled (what method block uses)", None, scores.combined())] + panels
    fig = MplFigure(figsize=(4.6 * len(panels) + 0.8, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    vmax = max(max(max(row) for row in d.block_distance if row) for _, _, d in panels)
    image = None
    for ax, (name, domain, d) in zip(axes, panels):
        grid = np.full((L, L), np.nan)
        for l, row in enumerate(d.block_distance):
            grid[l, : len(row)] = row
        image = ax.imshow(grid, origin="upper", aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                          extent=(0.5, L + 0.5, L - 0.5, -0.5), interpolation="nearest")
        picks = []
        for n in range(1, L):
            try:  # the very selection `block` makes, so the circles can never disagree with it
                sel = select(scores, "block", n, protect=protect, domain=domain)
            except LayercutError:  # no room for n contiguous unprotected layers
                continue
            picks.append((n, sel.params["start"]))
        if picks:
            ax.scatter([n for n, _ in picks], [l for _, l in picks], s=14, facecolors="none", edgecolors="white",
                       linewidths=1.0, label="block chosen by method block")
        ax.set_xlabel("block size n (layers)")
        ax.set_ylabel("start layer ℓ")
        ax.set_title(name, fontsize=10)
    axes[0].legend(loc="lower left", fontsize=8, framealpha=0.8)
    fig.colorbar(image, ax=list(axes), label="angular distance d(ℓ, n)", shrink=0.9)
    tokens = "the last token of each sample" if scores.block_tokens == "last" else "every in-scope token"
    fig.suptitle(f"Gromov block distance d(ℓ, n) = arccos(cos(x_ℓ, x_ℓ+n))/π on {tokens} (low = the block "
                 "changes the hidden state little)", fontsize=11)
    _save(fig, folder / "block_distance.png")
    return Figure("block_distance.png", "Block distance heatmap",
                  "Angular distance between the input of layer ℓ and the input of layer ℓ+n (Gromov et al.), for "
                  "every start ℓ (rows) and block size n (columns); blank: the block would run past the last "
                  "layer. Circles: for each size, the start with the smallest distance that avoids protected "
                  "layers, i.e. the contiguous block the `block` method drops.")


def _plot_dropped(sweep: Sweep, a: Analysis, styles: dict[str, dict], folder: Path) -> Figure | None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    df = sweep.results
    drops: dict[str, dict[int, list[int]]] = {}
    for (m, k), g in df.groupby(["method", "budget"], sort=False):
        drops.setdefault(str(m), {})[int(k)] = _layers(g["drop"].iloc[0])
    seen = [i for per in drops.values() for d in per.values() for i in d]
    L = _num_layers(sweep) or (max(seen) + 2 if seen else 0)
    if not L:
        return None
    protect = set(_protect(sweep))
    budgets = a.budgets
    methods = [m for m in a.methods if m in drops]
    fig, axes = _grid(len(methods), width=max(3.2, 0.16 * L + 1.0), height=max(1.6, 0.24 * len(budgets) + 1.0),
                      ncols=4)
    for ax, m in zip(axes, methods):
        grid = np.zeros((len(budgets), L))
        grid[:, sorted(i for i in protect if i < L)] = 2
        for r, k in enumerate(budgets):
            for i in drops[m].get(k, []):
                if 0 <= i < L:
                    grid[r, i] = 1
            if k not in drops[m]:
                grid[r, :] = 3
        cmap = ListedColormap(["#ffffff", styles[m]["color"], "#c9c9c9", "#f2f2f2"])
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(budgets)), [str(k) for k in budgets], fontsize=7)
        step = max(1, L // 8)
        ax.set_xticks(range(0, L, step), [str(i) for i in range(0, L, step)], fontsize=7)
        ax.set_xticks(np.arange(-0.5, L, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, len(budgets), 1), minor=True)
        ax.grid(which="minor", color="#e3e3e3", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("budget k", fontsize=8)
    fig.legend(handles=[Patch(facecolor="#444", label="dropped (method colour)"),
                        Patch(facecolor="#fff", edgecolor="#999", label="kept"),
                        Patch(facecolor="#c9c9c9", label="protected"),
                        Patch(facecolor="#f2f2f2", label="not evaluated")],
               loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"dropped layers per method and budget ({L} decoder layers)", fontsize=11)
    _save(fig, folder / "dropped_layers.png")
    return Figure("dropped_layers.png", "Dropped layers",
                  "For each method, one row per budget and one column per decoder layer; filled cells are the layers "
                  "dropped at that budget. Contiguous methods show one growing block, spacing-aware ones "
                  "evenly spread cells, ranking methods whatever their scores pick.")


# --------------------------------------------------------------------------- helpers


def _grid(n: int, width: float, height: float, ncols: int = 3):
    from matplotlib.figure import Figure as MplFigure

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = MplFigure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white")


def _styles(a: Analysis) -> dict[str, dict]:
    """One colour per method for every figure; line style and marker by family."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors) + list(colormaps["Dark2"].colors) + list(colormaps["Set1"].colors)
    out = {}
    for i, m in enumerate(a.methods):
        style = {"color": palette[i % len(palette)], "linewidth": 1.6, "marker": "o", "markersize": 4,
                 "linestyle": "-"}
        if m in a.families["contiguous"]:
            style |= {"linestyle": "--", "marker": "v"}
        elif m in a.families["spacing-aware"]:
            style |= {"marker": "s"}
        if m == "hybrid":
            style |= {"linewidth": 2.6, "marker": "*", "markersize": 7}
        out[m] = style
    return out


def _legend_handles(series: list[SeriesAnalysis], styles: dict[str, dict]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    methods = list(dict.fromkeys(m for s in series for m in s.methods))
    handles = [Line2D([], [], label=m, **styles[m]) for m in methods]
    handles += [Patch(facecolor=REGIME_COLOURS[i], edgecolor="#bbb", label=f"regime {i}: {regimes.REGIME_NAMES[i]}")
                for i in (1, 2, 3)]
    return handles


def _shade(ax: Any, s: SeriesAnalysis) -> None:
    """Shade each present regime from half-way to the previous budget to half-way to the next."""
    ks = s.budgets
    for rg in s.regimes:
        if not rg.present:
            continue
        i, j = ks.index(rg.start), ks.index(rg.end)
        lo = (ks[i] + ks[i - 1]) / 2 if i > 0 else ks[i] - 0.5
        hi = (ks[j] + ks[j + 1]) / 2 if j + 1 < len(ks) else ks[j] + 0.5
        ax.axvspan(lo, hi, color=REGIME_COLOURS[rg.index], zorder=0, linewidth=0)
        ax.text((lo + hi) / 2, 0.98, str(rg.index), transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=8, color="#555")


def _budget_axis(ax: Any, budgets: list[int]) -> None:
    ax.set_xlabel("budget k (decoder layers dropped)")
    step = max(1, math.ceil(len(budgets) / 12))
    ax.set_xticks(budgets[::step])
    ax.set_xlim(budgets[0] - 0.5, budgets[-1] + 0.5)
    ax.grid(alpha=0.25)


def _title(sweep: Sweep) -> str:
    model = sweep.spec.get("model")
    return f"layercut sweep report: {model}" if model else f"layercut sweep report: {sweep.path.name}"


def _num_layers(sweep: Sweep) -> int | None:
    if "num_layers" in sweep.spec:
        return int(sweep.spec["num_layers"])
    return sweep.scores.num_layers if sweep.scores is not None else None


def _protect(sweep: Sweep) -> list[int]:
    """The resolved protected layers of sweep.json (`protected`; `protect` when it is a list)."""
    layers = sweep.spec.get("protected")
    if not isinstance(layers, list):
        layers = sweep.spec.get("protect")
    return [int(i) for i in layers] if isinstance(layers, list) else []


def _options(spec: dict[str, Any]) -> dict[str, Any]:
    options = spec.get("options")
    return options if isinstance(options, dict) else {}


def _hybrid_parents(spec: dict[str, Any]) -> tuple[str, str]:
    """The hybrid's ranking domain (sweep.json options.domain, default math) and spacing."""
    return str(_options(spec).get("domain") or "math"), "spacing"


def _task_domains(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["task"].astype(str), df["domain"].astype(str))))


def _layers(s: Any) -> list[int]:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return []
    return [int(x) for x in str(s).split(",") if x.strip() and x.strip() != "<NA>"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "metric"


def _direction(s: SeriesAnalysis) -> str:
    return "higher is better" if s.higher_is_better else "lower is better"


def _span(budgets: list[int]) -> str:
    if not budgets:
        return "—"
    return f"k={budgets[0]}" if len(budgets) == 1 else f"k={budgets[0]}–{budgets[-1]}"


def _regime_span(rg: regimes.Regime) -> str:
    return _span(rg.budgets) if rg.present else "absent"


def _regime_cell(rg: regimes.Regime) -> str:
    return _span(rg.budgets) if rg.present else f"absent: {rg.note}"


def _opt(x: Any) -> str:
    return "—" if x is None else str(x)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.3f}"
