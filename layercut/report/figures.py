"""The report's PNG figures: `draw_figures` picks the ones a sweep gets and draws them into the report
folder, one `_plot_*` function per figure (the list is in the package docstring). matplotlib is
imported inside the functions, with no pyplot state."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from layercut.errors import LayercutError
from layercut.probe import DamageProfile
from layercut.regimes import Analysis, SeriesAnalysis
from layercut.regimes.bootstrap import Uncertainty, cell_key
from layercut.report.plotting import (
    budget_axis,
    legend_handles,
    method_styles,
    panel_grid,
    save_png,
    shade_regimes,
)
from layercut.report.sweep_folder import (
    Figure,
    Sweep,
    direction,
    layer_count,
    protected_layers,
)
from layercut.scoring import LayerScores
from layercut.sweep.log import parse_layers
from layercut.selection import select


def draw_figures(sweep: Sweep, a: Analysis, folder: Path, u: Uncertainty | None = None) -> list[Figure]:
    styles = method_styles(a)
    figs: list[Figure] = []
    for metric in dict.fromkeys(s.metric for s in a.series):
        series = [s for s in a.series if s.metric == metric]
        figs.append(_plot_curves(series, metric, styles, folder, u))
        figs.append(_plot_spread(series, metric, folder))
    if sweep.scores is not None:
        figs.append(_plot_layer_scores(sweep.scores, protected_layers(sweep), folder))
        if any(d.block_samples for d in sweep.scores.domains.values()):
            figs.append(_plot_block_distance(sweep.scores, protected_layers(sweep), folder))
    if sweep.scope_scores:
        figs.append(_plot_scope_scores(sweep.scope_scores, protected_layers(sweep), folder))
    if sweep.probe is not None:
        figs.append(_plot_damage(sweep.probe, sweep.scores, folder))
    if "drop" in sweep.results.columns:
        fig = _plot_dropped(sweep, a, styles, folder)
        if fig is not None:
            figs.append(fig)
    return figs


def _plot_curves(series: list[SeriesAnalysis], metric: str, styles: dict[str, dict], folder: Path,
                 u: Uncertainty | None = None) -> Figure:
    fig, axes = panel_grid(len(series), width=5.0, height=3.6)
    for ax, s in zip(axes, series):
        shade_regimes(ax, s)
        for m in s.methods:
            y = np.array([np.nan if v is None else v for v in s.values[m]], dtype=float)
            ax.plot(s.budgets, y, label=m, **styles[m])
            band = [u.intervals.get(cell_key(m, k, s.name, metric)) for k in s.budgets] if u and s.kind == "task" else []
            if band and all(b is not None for b in band):
                ax.fill_between(s.budgets, [b[0] for b in band], [b[1] for b in band], color=styles[m]["color"],
                                alpha=0.12, linewidth=0, zorder=1)
        ax.axhline(s.baseline, color="#777", linewidth=0.8, linestyle=":", zorder=1)
        if s.kind == "task":
            n = f", n={s.n}" if s.n else ""
            ax.set_title(f"task {s.name} [{s.domain}]{n}", fontsize=10)
            ax.set_ylabel(f"{metric} ({direction(s)})")
        else:
            ax.set_title(f"domain {s.name}: mean of {len(s.tasks)} task(s)", fontsize=10)
            ax.set_ylabel(f"{metric} relative to unpruned")
        budget_axis(ax, s.budgets)
    handles = [h for h in legend_handles(series, styles)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle(f"{metric} vs budget per method (shading: regimes 1 ranking-sensitive, 2 converging, "
                 "3 structure-dominated)", fontsize=11)
    name = f"curves_{_slug(metric)}.png"
    save_png(fig, folder / name)
    return Figure(name, f"{metric} vs budget",
                  f"{metric} after dropping k decoder layers, one line per method (dashed: contiguous drops; "
                  "squares: spacing-aware; circles: ranking methods). Dotted grey line: the unpruned model. Shaded "
                  "bands: the regimes found by the change-point rule (blue 1 ranking-sensitive, amber 2 "
                  "converging, rose 3 structure-dominated); an absent regime has no band. Domain panels average "
                  "the score relative to the unpruned model over the domain's tasks (1 = unpruned)."
                  + (f" Light bands around a task's lines: the central {u.confidence:.0%} of {u.replicates} paired "
                     "bootstrap resamples of its documents." if u else ""))


def _plot_spread(series: list[SeriesAnalysis], metric: str, folder: Path) -> Figure:
    fig, axes = panel_grid(len(series), width=5.0, height=3.4)
    for ax, s in zip(axes, series):
        shade_regimes(ax, s)
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
        budget_axis(ax, s.budgets)
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
    save_png(fig, folder / name)
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
    save_png(fig, folder / "layer_scores.png")
    return Figure("layer_scores.png", "Per-domain layer scores",
                  "Mean cosine similarity between each decoder layer's input and output, per calibration domain "
                  "(left), and 1 − cosine on a log scale (right). Domain methods drop the layers with the highest "
                  "cosine of their domain; where the domain curves cross, the domains disagree on which layers "
                  "are redundant. Grey columns: protected layers.")


def _plot_scope_scores(by_scope: dict[str, LayerScores], protect: list[int], folder: Path) -> Figure:
    """One panel per domain, one line per token scope (text / image / all ...)."""
    domains = list(dict.fromkeys(d for sc in by_scope.values() for d in sc.domains))
    fig, axes = panel_grid(len(domains), width=5.4, height=3.8, ncols=len(domains))
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
    save_png(fig, folder / "layer_scores_scopes.png")
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
    save_png(fig, folder / "damage.png")
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
    save_png(fig, folder / "block_distance.png")
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
        drops.setdefault(str(m), {})[int(k)] = parse_layers(g["drop"].iloc[0])
    seen = [i for per in drops.values() for d in per.values() for i in d]
    L = layer_count(sweep) or (max(seen) + 2 if seen else 0)
    if not L:
        return None
    protect = set(protected_layers(sweep))
    budgets = a.budgets
    methods = [m for m in a.methods if m in drops]
    fig, axes = panel_grid(len(methods), width=max(3.2, 0.16 * L + 1.0), height=max(1.6, 0.24 * len(budgets) + 1.0),
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
    save_png(fig, folder / "dropped_layers.png")
    return Figure("dropped_layers.png", "Dropped layers",
                  "For each method, one row per budget and one column per decoder layer; filled cells are the layers "
                  "dropped at that budget. Contiguous methods show one growing block, spacing-aware ones "
                  "evenly spread cells, ranking methods whatever their scores pick.")


# --------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "metric"
