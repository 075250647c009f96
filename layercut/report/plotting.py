"""The look every figure of the report shares: a matplotlib figure of panels saved at `DPI`, one
style per method, the regimes shaded in `REGIME_COLOURS` and the budget axis. matplotlib is
imported inside the functions, so importing the report does not load it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from layercut import regimes
from layercut.regimes import Analysis, SeriesAnalysis

DPI = 110
REGIME_COLOURS = {1: "#d6e6f5", 2: "#fdf0c8", 3: "#f6d2d2"}  # blue, amber, rose: light enough for lines on top


def panel_grid(n: int, width: float, height: float, ncols: int = 3):
    from matplotlib.figure import Figure as MplFigure

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = MplFigure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def save_png(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white")


def method_styles(a: Analysis) -> dict[str, dict]:
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


def legend_handles(series: list[SeriesAnalysis], styles: dict[str, dict]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    methods = list(dict.fromkeys(m for s in series for m in s.methods))
    handles = [Line2D([], [], label=m, **styles[m]) for m in methods]
    handles += [Patch(facecolor=REGIME_COLOURS[i], edgecolor="#bbb", label=f"regime {i}: {regimes.REGIME_NAMES[i]}")
                for i in (1, 2, 3)]
    return handles


def shade_regimes(ax: Any, s: SeriesAnalysis) -> None:
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


def budget_axis(ax: Any, budgets: list[int]) -> None:
    ax.set_xlabel("budget k (decoder layers dropped)")
    step = max(1, math.ceil(len(budgets) / 12))
    ax.set_xticks(budgets[::step])
    ax.set_xlim(budgets[0] - 0.5, budgets[-1] + 0.5)
    ax.grid(alpha=0.25)
