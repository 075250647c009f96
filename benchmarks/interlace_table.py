"""The INTERLACE head-to-head (`interlace_head_to_head.py` JSON files) as the README's summary, the
full table and a plot.

    python benchmarks/interlace_table.py runs/h2h/smollm2.json runs/h2h/tiny-llava.json \
        runs/h2h/tiny-llava-nodrop.json --plot docs/interlace_head_to_head.png

Summary: per model, budget and domain, `interlace` healed its own way (interleaved) against the
domain's own ranking (`math` on math, `general` on general) healed with LoRA and interleaved; a
"win" needs disjoint 95 % intervals (ours: the better heal's against INTERLACE's; INTERLACE: its
interval above both of ours). Full: every method with both heals, retention [95 % CI].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HEALS = ("lora", "interleaved")


def cell(v: dict[str, float]) -> str:
    return f"{v['value']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}]"


def summary(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| model | budget | domain | `interlace` + interleaved | domain's own method + LoRA | + interleaved | "
           "which wins |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["budget"], r["layers"]), []).append(r)
    for (model, k, L), rs in groups.items():
        theirs = next(r for r in rs if r["method"] == "interlace" and r["healing"] == "interleaved")
        for d, t in theirs["retention"].items():
            ours = {r["healing"]: r["retention"][d] for r in rs if r["method"] == d and r["healing"] in HEALS}
            if len(ours) < len(HEALS):
                continue
            best = max(ours.values(), key=lambda v: v["value"])
            win = ("ours" if best["lo"] > t["hi"] else "INTERLACE" if t["lo"] > max(v["hi"] for v in ours.values())
                   else "neither (intervals overlap)")
            out.append(f"| {model} | {k}/{L} | {d} | {cell(t)} | `{d}` {cell(ours['lora'])} | "
                       f"{cell(ours['interleaved'])} | {win} |")
    return out


def full(rows: list[dict[str, Any]]) -> list[str]:
    domains = list(rows[0]["retention"])
    out = ["| model | budget | method | dropped | " + " | ".join(f"{d}: {h}" for d in domains
                                                               for h in ("none", *HEALS)) + " |",
           "|---|---|---|---|" + "---|" * (3 * len(domains))]
    by = {(r["model"], r["budget"], r["method"], r["healing"]): r for r in rows}
    for (model, k, method, heal), r in by.items():
        if heal != "none":
            continue
        cells = [cell(by[(model, k, method, h)]["retention"][d]) for d in domains for h in ("none", *HEALS)]
        out.append(f"| {model} | {k}/{r['layers']} | {method} | {', '.join(map(str, r['drop']))} | "
                   + " | ".join(cells) + " |")
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    domains = list(rows[0]["retention"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(domains), len(models), figsize=(4.2 * len(models), 3.2 * len(domains)),
                             squeeze=False, sharey="row")
    width = 0.8 / (len(methods) * 3)
    colours = plt.get_cmap("tab10")
    for j, model in enumerate(models):
        budgets = sorted({r["budget"] for r in rows if r["model"] == model})
        for i, d in enumerate(domains):
            ax = axes[i][j]
            for m_i, m in enumerate(methods):
                for h_i, h in enumerate(("none", *HEALS)):
                    xs, ys, lo, hi = [], [], [], []
                    for b_i, k in enumerate(budgets):
                        r = next((r for r in rows if (r["model"], r["budget"], r["method"], r["healing"])
                                  == (model, k, m, h)), None)
                        if r is None:
                            continue
                        v = r["retention"][d]
                        xs.append(b_i - 0.4 + width * (m_i * 3 + h_i + 0.5))
                        ys.append(v["value"])
                        lo.append(v["value"] - v["lo"])
                        hi.append(v["hi"] - v["value"])
                    ax.bar(xs, ys, width, yerr=[lo, hi], color=colours(m_i), alpha=(0.35, 0.65, 1.0)[h_i],
                           label=f"{m} + {h}" if (i, j) == (0, 0) else None, capsize=1.5, linewidth=0)
            L = next(r["layers"] for r in rows if r["model"] == model)
            ax.set_xticks(range(len(budgets)), [f"k = {k}/{L}" for k in budgets])
            ax.set_title(f"{model}: {d}", fontsize=10)
            if j == 0:
                ax.set_ylabel("retention (95 % CI)")
    fig.legend(loc="lower center", ncol=len(methods), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    rows = [r for f in args.json for r in json.loads(f.read_text())["rows"]]
    models = list(dict.fromkeys(r["model"] for r in rows))
    rows.sort(key=lambda r: (models.index(r["model"]), r["budget"]))  # stable: each file's method order kept
    print("\n".join(summary(rows)))
    print()
    print("\n".join(full(rows)))
    if args.plot:
        plot(rows, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
