"""The report as a document: `build_document` lays the sweep and its analysis out as blocks, and
`render_markdown` and `render_html` render them (report.md points at the PNGs, report.html inlines them as
data URIs)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from layercut import regimes
from layercut.regimes import Analysis
from layercut.regimes.bootstrap import Uncertainty
from layercut.report.sweep_folder import (
    Figure,
    Sweep,
    direction,
    layer_count,
    protected_layers,
    spec_options,
    sweep_title,
)
from layercut.report.uncertainty import (
    NO_DOCS,
    boundary_blocks,
    claim_blocks,
    difference_blocks,
    method_blocks,
    verdict_share,
)
from layercut.selection import GUARD
from layercut.sweep import HEAL_TAG

VERDICT_CLASS = {regimes.HOLDS: "holds", regimes.FAILS: "fails", regimes.UNTESTABLE: "untestable"}

# A document is a list of blocks, rendered twice (markdown and HTML):
#   ("h", level, text) ("p", text) ("ul", [text]) ("table", header, rows) ("fig", Figure)
# Text may hold **bold** and `code`.


def build_document(sweep: Sweep, a: Analysis, figures: list[Figure], u: Uncertainty | None = None) -> list[tuple]:
    spec = sweep.spec
    B: list[tuple] = [("h", 1, sweep_title(sweep))]
    L = layer_count(sweep)
    facts = [
        f"**model** {spec.get('model', 'unknown')}" + (f" · {L} decoder layers" if L else ""),
        f"**methods** {', '.join(a.methods)}",
        f"**budgets** (layers dropped) {', '.join(map(str, a.budgets))}",
        "**tasks** " + ", ".join(f"{t} ({d})" for t, d in _task_domains(sweep.results)),
    ]
    if protected_layers(sweep) or "protected" in spec:
        facts.append(f"**protected layers** {', '.join(map(str, protected_layers(sweep))) or 'none'}")
    facts.append(f"**primary metric** {a.primary_metric} · {len(sweep.results)} result rows · "
                 f"families: contiguous = {', '.join(a.families['contiguous'])}; "
                 f"spacing-aware = {', '.join(a.families['spacing-aware'])}")
    B.append(("ul", facts))

    # Summary: the primary metric's domain series first.
    B.append(("h", 2, "Summary"))
    summary = []
    for s in a.domain_series() or [s for s in a.series if s.metric == a.primary_metric]:
        parts = [_regime_span(s.regime(i)) for i in (1, 2, 3)]
        verdicts = "; ".join(f"{c.id} **{c.verdict}**{verdict_share(u, s.key, c.id)}" for c in s.claims)
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
    used = spec_options(spec).get("hybrid_threshold")
    if "hybrid" in a.methods and used is not None:
        found = spec_options(spec).get("hybrid_threshold_found", True)
        how = ("found by the same analysis on the other methods' results" if found else
               "no structure-dominated regime was found then, so hybrid ranked at every budget")
        same = ("consistent with the above" if used == k or (k is None and not found) else
                "it differs from the above because the hybrid's own rows enter this analysis (they change ε and "
                "can lead)")
        B.append(("p", f"The sweep ran `hybrid` with threshold k = {used} ({how}); {same}."))

    B.extend(_truncation_section(sweep))

    B.append(("h", 2, "How the regimes are found"))
    B.extend(("p", para) for para in a.rule)
    B.extend(method_blocks(u, sweep.no_docs or NO_DOCS))

    B.append(("h", 2, "Regime boundaries"))
    B.append(("p", ("Budgets are numbers of decoder layers dropped. k2 and k3 are the first budgets of regimes 2 "
                    "and 3; ε is the noise floor in units of the unpruned score (0.05 = 5 %).")))
    rows = []
    for s in a.series:
        rows.append([f"`{s.key}`", f"{s.noise_floor:.3f} ({s.noise['source']})"]
                    + [_regime_cell(s.regime(i)) for i in (1, 2, 3)] + [_opt(s.k2), _opt(s.k3)])
    B.append(("table", ["series", "ε", "1 ranking-sensitive", "2 converging", "3 structure-dominated", "k2", "k3"],
              rows))
    B.extend(boundary_blocks(a, u))

    B.append(("h", 2, "Claims"))
    B.append(("table", ["series", "H1 method matters at low k", "H2 convergence", "H3 structure at high k"],
              [[f"`{s.key}`"] + [s.claim(h).verdict for h in ("H1", "H2", "H3")] for s in a.series]))
    B.extend(claim_blocks(a, u))
    B.extend(_ours_blocks(a, u))
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

    B.extend(difference_blocks(u))

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
        unit = "relative to unpruned" if s.kind == "domain" else f"{s.metric}, {direction(s)}"
        B.append(("h", 3, f"{s.key} ({unit}; ε = {s.noise_floor:.3f})"))
        rows = [[str(b.budget), str(b.methods), f"{b.spread:.4g}", f"{b.std:.4g}", f"{b.rel_spread:.3f}",
                 _num(b.tau_next), ", ".join(b.leaders), ", ".join(b.near_best), _opt(b.regime)]
                for b in s.budget_stats]
        B.append(("table", ["k", "methods", "spread", "std", "rel. spread", "τ_b(k, next)", "leader(s)",
                            "near-best", "regime"], rows))
    return B


def _ours_blocks(a: Analysis, u: Uncertainty | None) -> list[tuple]:
    """H4 and H5 (the paper's claims about its own method), defined, with their shares."""
    ids = ("H4", "H5")
    p = "" if u is None else f" (P: the share of the {u.replicates} resamples in which it holds)"
    rows = [[f"`{s.key}`"] + [s.claim(h).verdict + ("" if u is None or h not in u.verdicts.get(s.key, {})
                                                   else f" (P {u.verdicts[s.key][h]:.2f})") for h in ids]
            for s in a.series]
    return [("p", "**The paper's claims about its own method**, each measure lower-is-better:"),
            ("ul", list(regimes.DEFINITIONS)),
            ("table", ["series", "H4 ours most stable in regime 1" + p, "H5 ours ≥ structure-aware − ε later"], rows)]


def _truncation_section(sweep: Sweep) -> list[tuple]:
    """Generation tasks: the share of answers cut at max_new_tokens per method and budget (cut
    answers count as wrong), with a warning when any cell is above TRUNCATION_WARN."""
    from layercut.evaluation import TRUNCATION_WARN

    if not sweep.truncated:
        return []
    methods = list(dict.fromkeys(m for m, _, _ in sweep.truncated))
    over = {k: v for k, v in sweep.truncated.items() if v > TRUNCATION_WARN}
    B: list[tuple] = [("h", 2, "Answers cut at max_new_tokens")]
    if over:
        (m, k, t), worst = max(over.items(), key=lambda kv: kv[1])
        B.append(("p", (f"**Warning: {len(over)} of {len(sweep.truncated)} generation cells cut more than "
                        f"{TRUNCATION_WARN:.0%} of their answers** (worst: `{m}` at k = {k} on `{t}`, {worst:.0%}). "
                        "A cut answer counts as wrong: where answers are long, the limit, not the model, lowers "
                        "the accuracy (raise the task's max_new_tokens and re-run those cells); where they loop, "
                        "no limit would end them.")))
    else:
        B.append(("p", f"Every generation cell cut at most {TRUNCATION_WARN:.0%} of its answers."))
    for task in dict.fromkeys(t for _, _, t in sweep.truncated):
        budgets = sorted({k for _, k, t in sweep.truncated if t == task})
        rows = [[str(k)] + [_share(sweep.truncated.get((m, k, task))) for m in methods] for k in budgets]
        B.append(("p", f"**{task}**: share of answers cut"))
        B.append(("table", ["k"] + methods, rows))
    return B


def _share(x: float | None) -> str:
    return "" if x is None else f"{x:.0%}"


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
    how = ("steps of interleaved fine-tuning (one layer per dropped layer trained in full, everything else "
           "frozen; the layers are the results table's `train`)" if sweep.spec.get("heal") == "interleaved"
           else "LoRA steps")
    B: list[tuple] = [("h", 2, "Before and after healing"),
                      ("p", (f"Every cell was also evaluated after {steps} {how} on the calibration data "
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


def render_markdown(blocks: list[tuple]) -> str:
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


def render_html(blocks: list[tuple], folder: Path, title: str) -> str:
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


# --------------------------------------------------------------------------- helpers


def _hybrid_parents(spec: dict[str, Any]) -> tuple[str, str]:
    """The hybrid's ranking domain (sweep.json options.domain, default math) and spacing."""
    return str(spec_options(spec).get("domain") or "math"), "spacing"


def _task_domains(df: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(df["task"].astype(str), df["domain"].astype(str))))


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
