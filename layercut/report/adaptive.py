"""The report's section on an adaptive sweep (`sweep --adaptive`): for every cell, how many
documents it used and why it stopped, and what the rounds saved against a full sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from layercut.sweep.log import parse_layers
from layercut.sweep.adaptive import ADAPTIVE_FILE, REASONS, Rule
from layercut.sweep.spec import Unit

SHORT = {"behind": "behind", "broken": "broken", "tied": "tied", "decided": "lead", "all": "all",
         "": "running"}


def adaptive_section(folder: Path, results: pd.DataFrame) -> list[tuple]:
    """Report blocks (see report.document) for an adaptive sweep folder; [] for a full sweep."""
    path = Path(folder) / ADAPTIVE_FILE
    if not path.is_file() or results.empty:
        return []
    state = json.loads(path.read_text())
    rule = Rule(**state["rule"])
    saved = state["full"] / max(state["evaluated"], 1)
    B: list[tuple] = [("h", 2, "Adaptive evaluation: documents per cell")]
    B.append(("p", (
        f"Documents came in rounds (first {rule.first}, then doubling) in one seeded order per task shared by "
        f"every cell; {state['evaluated']:,} document evaluations instead of {state['full']:,} for the full sweep "
        f"(**{saved:.2f}× fewer**). A cell stopped when it was behind its budget's leader beyond doubt "
        f"(exact sign test on the paired documents), tied with it within {rule.tie:.0%} of the unpruned score "
        f"(0/1 metrics), or broken (nll over {rule.broken:g}× the unpruned model's); each look at level "
        f"α/R (α = {rule.alpha}, R = the task's rounds), so over all its rounds a cell's decision errs with "
        "probability at most α. Every value, interval and verdict in this report is computed from the documents "
        "each cell evaluated.")))
    cells = state["cells"]
    for task, info in state["tasks"].items():
        rows = results[(results["task"] == task)].drop_duplicates(["method", "budget"])
        if rows.empty:
            continue
        methods = list(dict.fromkeys(rows["method"]))
        table = []
        for budget, at in rows.groupby("budget", sort=True):
            line = [str(int(budget))]
            for m in methods:
                hit = at[at["method"] == m]
                if hit.empty:
                    line.append("")
                    continue
                drop = tuple(parse_layers(hit["drop"].iloc[0]))
                cell = cells.get(Unit(drop, task).key)
                n = int(hit["n"].iloc[0])
                line.append(f"{n} ref" if not drop else f"{n} {SHORT.get(cell['reason'], cell['reason'])}"
                            if cell else str(n))
            table.append(line)
        B.append(("p", f"`{task}`: {info['documents']} documents in rounds {info['rounds']}, judged on "
                       f"`{info['metric'] or 'no per-document metric (every document)'}`."))
        B.append(("table", ["k"] + methods, table))
    B.append(("ul", [f"**{SHORT[k]}**: {v}" for k, v in REASONS.items() if k in SHORT]))
    return B
