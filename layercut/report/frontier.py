"""The budget–retention frontier and the pick, as the report shows them and `layercut pick` prints.

The frontier: for every domain of the primary metric and every budget, the best method's
retention r (the score relative to the unpruned model, `regimes.pick.retention`) with its
bootstrap band. The pick: `regimes.pick.choose` for a default target (keep 90 % of the unpruned
score on every unhealed domain) and the command that makes its checkpoint. The numbers come from
`regimes.pick`; this module only lays them out (`frontier_blocks`, in the blocks of
`document.py`), draws `frontier.png` (`plot_frontier`) and writes the commands (`prune_commands`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from layercut.errors import LayercutError
from layercut.regimes.pick import HEAL_TAG, Cell, Pick, Retention, choose, retention, unmet
from layercut.report.plotting import budget_axis, panel_grid, save_png
from layercut.report.sweep_folder import Figure, Sweep
from layercut.sweep.log import parse_layers

DEFAULT_SHARE = 0.90  # the report's target: keep 90 % of the unpruned score on every domain
FIGURE = "frontier.png"


def frontier_blocks(sweep: Sweep, folder: Path, *, share: float = DEFAULT_SHARE, replicates: int = 1000,
                    seed: int = 0) -> list[tuple]:
    """The report's frontier section: a table per budget, the pick for keeping `share` on every
    unhealed domain with its command, and the figure (written into `folder`). Point estimates,
    said so, where the sweep holds no per-document values or `replicates` is 0."""
    why = sweep.no_docs or ("" if replicates else "the report was written with 0 bootstrap resamples")
    ret = None
    if not why:
        try:
            ret = retention(sweep.results, sweep.docs, replicates=replicates, seed=seed)
        except LayercutError as exc:  # some task of the metric has no per-document values: say so
            why = str(exc)
    if ret is None:
        ret = retention(sweep.results, sweep.docs, point=True)
    B: list[tuple] = [("h", 2, "Budget–retention frontier"), ("p", _how(ret, why))]
    rows = []
    for j, k in enumerate(ret.budgets):
        row = [str(k)]
        for d in ret.domains:
            m = best_method(ret, d, j)
            row.append("" if m is None else f"{m} {ret.r[d][m][j]:.3f} {_band(ret.low[d][m][j], ret.high[d][m][j])}")
        rows.append(row)
    B.append(("table", ["k"] + [f"{d}: best method, r [low, high]" for d in ret.domains], rows))
    keep = {d: share for d in ret.domains if HEAL_TAG not in d}
    p = choose(ret, keep) if keep else None
    if p is not None:
        B.append(("p", f"**Pick: keep {100 * share:g} % of the unpruned {ret.metric} on "
                       f"{', '.join(keep)}.** {pick_summary(p)}"))
        if p.chosen is not None:
            B.append(("p", "Make it: " + "; then ".join(f"`{c}`" for c in prune_commands(
                sweep.spec, p.chosen, default_out(sweep.path, p.chosen), keep))
                + f". Another target: `layercut pick --sweep {sweep.path} --keep "
                + ",".join(f"{d}=0.95" for d in keep) + "`."))
    B.append(("fig", plot_frontier(ret, folder, share, p.chosen if p else None)))
    return B


def best_method(ret: Retention, domain: str, j: int) -> str | None:
    """The method with the highest r on `domain` at the budget of index j (method order on a tie)."""
    here = [m for m in ret.methods if ret.r[domain][m][j] is not None]
    return max(here, key=lambda m: ret.r[domain][m][j]) if here else None


def pick_summary(p: Pick) -> str:
    """The pick, its runner-up and the next budget's cost in a few sentences (markdown)."""
    if p.chosen is None:
        why = unmet(p)
        return why[0].upper() + why[1:] + "."
    c = p.chosen
    text = (f"The deepest cut that meets it is **k = {c.budget} with `{c.method}`** (drops "
            f"{', '.join(map(str, c.drop))}): {cell_text(c)}.")
    if p.runner_up is not None:
        r = p.runner_up
        text += (f" Runner-up at k = {r.budget}: `{r.method}` ("
                 + (f"the same layers as `{c.method}`" if r.drop == c.drop else cell_text(r))
                 + ("" if not r.misses else f"; misses {', '.join(r.misses)}") + ").")
    if p.next is not None:
        n = p.next
        text += (f" The next budget, k = {n.budget}, would cost: its best, `{n.method}`, has lower bounds "
                 + ", ".join(f"{d} {n.low[d]:.3f}" for d in p.keep) + f" and misses {', '.join(n.misses)}.")
    else:
        text += " It is the deepest budget swept: sweep larger budgets to see further."
    return text


def cell_text(c: Cell) -> str:
    """'math 0.962 [0.951, 0.973], general 0.931 [0.912, 0.950]'."""
    return ", ".join(f"{d} {c.r[d]:.3f} {_band(c.low[d], c.high[d])}" for d in c.r)


def default_out(sweep_dir: Path, c: Cell) -> Path:
    """Where the printed command puts the checkpoint: beside the sweep, named by method and budget."""
    return Path(sweep_dir).parent / f"pruned-{re.sub(r'[^A-Za-z0-9_.-]+', '-', c.method)}-k{c.budget}"


def trained_layers(results: pd.DataFrame, c: Cell) -> list[int]:
    """The layers a `--heal interleaved` sweep fine-tuned in full for the cell (its `train`)."""
    if "train" not in results.columns:
        return []
    rows = results[(results.method == c.method) & (results.budget == c.budget)]
    return next((layers for layers in map(parse_layers, rows["train"]) if layers), [])


def prune_commands(spec: dict[str, Any], c: Cell, out: Path, keep: dict[str, float],
                   train: list[int] | None = None) -> list[str]:
    """The command(s) that make the picked checkpoint: `layercut prune` with the cell's layers and
    the sweep's own protect / allow / dtype, then `layercut heal` as the sweep healed when the
    target names healed domains (DOMAIN+healN): its steps, seed, learning rate and, for an
    interleaved sweep, the layers it trained (`train`)."""
    cmd = ["layercut", "prune", "--model", str(spec.get("model", "MODEL")), "--drop", ",".join(map(str, c.drop)),
           "--out", str(out)]
    if str(spec.get("protect", "default")) != "default":
        cmd += ["--protect", str(spec["protect"])]
    if spec.get("allow"):
        cmd += ["--allow", ",".join(spec["allow"])]
    if spec.get("dtype", "fp32") != "fp32":
        cmd += ["--dtype", str(spec["dtype"])]
    out_cmds = [shlex.join(cmd)]
    steps = {d.partition(HEAL_TAG)[2] for d in keep if HEAL_TAG in d}
    if steps:
        heal = ["layercut", "heal", "--model", str(out), "--out", f"{out}-heal{steps.pop()}",
                "--steps", str(spec.get("heal_steps", 0)), "--seed", str(spec.get("seed", 0))]
        if spec.get("heal_lr", 5e-4) != 5e-4:
            heal += ["--lr", f"{spec['heal_lr']:g}"]
        if spec.get("heal") == "interleaved" and train:
            heal += ["--train-layers", ",".join(map(str, train))]
        if spec.get("calib"):
            heal += ["--data", str(spec["calib"])]
        out_cmds.append(shlex.join(heal))
    return out_cmds


def plot_frontier(ret: Retention, folder: Path, share: float = DEFAULT_SHARE, chosen: Cell | None = None) -> Figure:
    """One panel per domain: the best method's r at each budget, its band, the target line and,
    where the domain is in the target, the picked cell (which need not be that domain's best)."""
    fig, axes = panel_grid(len(ret.domains), width=5.0, height=3.4)
    for ax, d in zip(axes, ret.domains):
        best = [(k, best_method(ret, d, j), j) for j, k in enumerate(ret.budgets)]
        best = [(k, m, j) for k, m, j in best if m is not None]
        ks, names = [k for k, _, _ in best], [m for _, m, _ in best]
        r, lo, hi = ([getattr(ret, part)[d][m][j] for _, m, j in best] for part in ("r", "low", "high"))
        ax.fill_between(ks, lo, hi, color="#2c7fb8", alpha=0.2, linewidth=0, label="band of the best method")
        ax.plot(ks, r, color="#2c7fb8", marker="o", markersize=4, label="best method's r")
        for k, y, m in zip(ks, r, names):
            ax.annotate(m, (k, y), textcoords="offset points", xytext=(3, 4), fontsize=7, color="#333")
        if chosen is not None and d in chosen.r:
            ax.errorbar([chosen.budget], [chosen.r[d]], yerr=[[chosen.r[d] - chosen.low[d]],
                        [chosen.high[d] - chosen.r[d]]], color="#c0392b", marker="*", markersize=11, capsize=3,
                        linestyle="none", zorder=5, label=f"pick: k={chosen.budget} {chosen.method}")
        ax.axhline(share, color="#c0392b", linestyle=":", linewidth=1.2, label=f"keep {100 * share:g} %")
        ax.axhline(1.0, color="#777", linewidth=0.8, linestyle=":")
        ax.set_ylim(min([0.0, *lo]), max([1.0, *hi]) + 0.08)  # room above 1 for the labels
        ax.set_title(f"domain {d}", fontsize=10)
        ax.set_ylabel(f"{ret.metric} relative to unpruned")
        budget_axis(ax, ret.budgets)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"budget–retention frontier ({ret.metric}): the best method at each budget", fontsize=11)
    save_png(fig, Path(folder) / FIGURE)
    band = (f"the {100 * ret.confidence:g} % one-sided bounds of {ret.replicates} paired bootstrap resamples of the "
            "documents" if ret.replicates else "none: point estimates")
    return Figure(FIGURE, "Budget–retention frontier",
                  f"For each domain, the retention r ({ret.metric} relative to the unpruned model, 1 = unpruned) of "
                  "the best method at each budget, labelled with its name; band: " + band + ". Red dotted: the "
                  f"target of the pick above ({100 * share:g} %); red star: the picked cell with its bounds.")


# --------------------------------------------------------------------------- helpers


def _how(ret: Retention, why: str) -> str:
    if ret.replicates:
        sure = (f"[low, high] are the {100 * (1 - ret.confidence):g} % and {100 * ret.confidence:g} % quantiles of "
                f"{ret.replicates} paired bootstrap resamples of the documents (seed {ret.seed}): each end is a "
                f"one-sided {100 * ret.confidence:g} % bound")
    else:
        sure = f"point estimates only: {why}"
    return (f"For every budget, the method that keeps the most of the unpruned {ret.metric} on each domain "
            f"(retention r as in the regime analysis, the mean over the domain's tasks; 1 = unpruned); {sure}. "
            "A target is met when the lower bound reaches it on every named domain.")


def _band(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"
