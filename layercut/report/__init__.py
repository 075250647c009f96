"""`layercut report`: a sweep folder in, SWEEP_DIR/report/ out.

The folder gets PNG plots, `report.md` (tables that point at the PNGs), one self-contained
`report.html` (the same document with every image inlined as a data URI: mail it, open it
offline) and `analysis.json` (the `regimes.Analysis` behind every number). The regimes, their
boundaries and the claim verdicts come from `layercut.regimes`; this package only draws and writes.
It is written to a temporary sibling and renamed, so a re-run replaces it whole or not at all.

Plots (matplotlib, no pyplot state):
  curves_<metric>.png   metric vs budget per method, one panel per task and per domain, the three
                        regimes shaded
  spread_<metric>.png   spread across methods vs budget with the noise floor and the half-peak
                        line, Kendall tau to the next budget on the right axis
  layer_scores.png      cosine per layer per domain, and 1 - cosine on a log scale (scores.json)
  block_distance.png    Gromov angular distance d(start, size) heatmaps (scores.json)
  dropped_layers.png    per method: budgets x layers, the dropped layers filled in
  frontier.png          per domain: the best retention per budget with its bootstrap band, the
                        target share and the deepest cut that keeps it (`frontier`, as `layercut pick`)

- `sweep_folder`: `read_sweep` and its `Sweep` (results table, sweep.json, scores, probe), and
  the small readers of them that the figures and the document share.
- `plotting`: the look every figure shares (panels, method styles, regime shading, budget axis).
- `figures`: which figures a sweep gets (`draw_figures`), one `_plot_*` function per PNG.
- `document`: the document as blocks (`build_document`) and its two writers, `render_markdown` and `render_html`.
- `frontier`: the budget-retention frontier and the pick; `adaptive`: documents per cell of an
  adaptive sweep and why each stopped. Both append their sections to the document.
"""

from __future__ import annotations

from pathlib import Path

from layercut import regimes
from layercut.io import atomic_dir
from layercut.report.adaptive import adaptive_section
from layercut.report.document import build_document, render_html, render_markdown
from layercut.report.frontier import frontier_blocks
from layercut.report.figures import draw_figures
from layercut.report.sweep_folder import Sweep, read_sweep, sweep_title

__all__ = ["REPORT_DIR", "Sweep", "read_sweep", "write_report"]

REPORT_DIR = "report"


def write_report(sweep_dir: str | Path, out: str | Path | None = None, *, replicates: int = 1000,
                 seed: int = 0) -> Path:
    """Analyse the sweep in `sweep_dir` and write the report folder (default SWEEP_DIR/report,
    replaced if it exists); returns that folder. Open `report.html` inside it.

    With per-document values in the sweep's cells, a paired bootstrap of `replicates` resamples
    (`regimes.bootstrap`, seeded) gives every cell an interval, every boundary a distribution and
    every verdict a probability (uncertainty.json); `replicates=0` skips it."""
    from layercut.regimes.bootstrap import bootstrap

    sweep = read_sweep(sweep_dir)
    analysis = regimes.analyze(sweep.results)
    u = bootstrap(sweep.results, sweep.docs, replicates=replicates, seed=seed) if sweep.docs and replicates else None
    if u is not None:
        u.annotate(analysis)  # each claim's bootstrap share into analysis.json
    if sweep.docs and not replicates:
        sweep.no_docs = "the report was written with 0 bootstrap resamples"
    out = Path(out) if out is not None else sweep.path / REPORT_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        figures = draw_figures(sweep, analysis, tmp, u)
        blocks = build_document(sweep, analysis, figures, u)
        blocks += adaptive_section(sweep.path, sweep.results)
        blocks += frontier_blocks(sweep, tmp, replicates=replicates, seed=seed)
        (tmp / "report.md").write_text(render_markdown(blocks))
        (tmp / "report.html").write_text(render_html(blocks, tmp, sweep_title(sweep)))
        analysis.save(tmp / "analysis.json")
        if u is not None:
            u.save(tmp / "uncertainty.json")
    return out
