"""How many document evaluations `sweep --adaptive` saves, and whether it reaches the same verdicts.

    python benchmarks/bench_adaptive.py runs/regimes/sweep runs/demo-vlm/tiny-llava/sweep --orders 200

Replays the adaptive stopping rule (`sweep.adaptive.run_rounds`, the code a real adaptive sweep
runs) offline on full sweeps whose cells store per-document values: for each of `--orders`
random document orders, the rounds "evaluate" a unit by reading its recorded values for that
round's documents, cells stop as the rule says, and the regime analysis runs on what was
evaluated. Printed per sweep: document evaluations used / full, and how often each series'
boundaries k2 and k3, each claim's verdict and each budget's leader set equal the full sweep's
(and how often all of them do at once); for reference, how often the full sweep itself reaches
them again on a bootstrap draw of its documents (a conclusion that moves with the documents
cannot be expected to survive fewer of them). No model is loaded.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from layercut.evaluation import HIGHER_IS_BETTER
from layercut.regimes import analyze
from layercut.report.sweep_folder import read_sweep
from layercut.sweep import LOG_FILE, Unit
from layercut.sweep.adaptive import PRIMARY, Rule, run_rounds
from layercut.sweep.log import merged, read_records


def units_of(results: pd.DataFrame) -> list[Unit]:
    """The (drop set, task) of each row, in row order."""
    drops = [tuple(sorted(int(x) for x in str(d).split(",") if x.strip() and x.strip() not in ("<NA>", "nan")))
             for d in results["drop"]]
    return [Unit(d, str(t)) for d, t in zip(drops, results["task"])]


def replay(results: pd.DataFrame, recorded: dict[str, dict], rule: Rule, seed: int) -> tuple[pd.DataFrame, dict]:
    """One adaptive run on recorded values: (the results table it would give, its state)."""
    units = list(dict.fromkeys(units_of(results)))
    done: dict[str, dict] = {}

    def execute(chunks: list[Unit]) -> None:
        for c in chunks:
            rec = recorded[c.whole.key]
            docs = {m: [[v[i] for i in c.docs], [w[i] for i in c.docs]] for m, (v, w) in rec["docs"].items()}
            metrics = {m: float(np.dot(v, w) / sum(w)) for m, (v, w) in docs.items()}
            metrics["n"] = float(len(c.docs))
            done[c.key] = {"key": c.key, "task": c.task, "drop": list(c.drop), "metrics": metrics, "seconds": 0.0,
                           "heal": 0, "whole": c.whole.key, "part": c.part, "index": list(c.docs),
                           "of": len(next(iter(rec["docs"].values()))[0]), "docs": docs,
                           **({"higher_is_better": rec["higher_is_better"]} if "higher_is_better" in rec else {})}
            done.update(merged({k: r for k, r in done.items() if r.get("whole") == c.whole.key}))

    state = run_rounds(units, rule, seed, lambda t: len(next(iter(recorded[Unit((), t).key]["docs"].values()))[0]),
                       done, execute, HIGHER_IS_BETTER)
    out = results.copy()
    for i, r in enumerate(out.itertuples(index=False)):
        rec = done[units_of(out.iloc[[i]])[0].key]
        if r.metric in rec["docs"]:
            out.iat[i, out.columns.get_loc("value")] = rec["metrics"][r.metric]
        out.iat[i, out.columns.get_loc("n")] = int(rec["metrics"]["n"])
    return out, state


def resampled(results: pd.DataFrame, recorded: dict[str, dict], seed: int) -> pd.DataFrame:
    """The full sweep on a bootstrap draw of each task's documents (the same draw for every cell
    of a task): how much its own conclusions move with the documents, the reference for replay's."""
    rng = np.random.default_rng(seed)
    counts: dict[str, np.ndarray] = {}
    out = results.copy()
    for i, (u, metric) in enumerate(zip(units_of(results), results["metric"])):
        got = recorded[u.key]["docs"].get(metric)
        if got is None:
            continue
        v, w = np.asarray(got[0], dtype=float), np.asarray(got[1], dtype=float)
        c = counts.setdefault(u.task, np.bincount(rng.integers(0, len(v), len(v)), minlength=len(v)))
        out.iat[i, out.columns.get_loc("value")] = float((v * w * c).sum() / max((w * c).sum(), 1e-300))
    return out


def outcome(df: pd.DataFrame) -> dict[str, object]:
    """What a sweep concludes: per series k2, k3, every claim's verdict, every budget's leaders."""
    got: dict[str, object] = {}
    for s in analyze(df).series:
        got[f"{s.key} k2"] = s.k2
        got[f"{s.key} k3"] = s.k3
        for c in s.claims:
            got[f"{s.key} {c.id}"] = c.verdict
        for b in s.budget_stats:
            got[f"{s.key} leaders@{b.budget}"] = tuple(sorted(b.leaders))
    return got


def close_call_reference(results: pd.DataFrame, first: int) -> tuple[int, int]:
    """(document evaluations, full) of a reference rule that knows the full data: a cell whose
    full-data r is within the noise floor of its budget's best (a close call) runs every document,
    every other cell the first round, the unpruned cell every document. Not a bound: a paired sign
    test can separate cells whose r differ by less than the noise floor (which is an unpaired
    threshold), so the real rule may stop a close call early and use fewer documents."""
    used = full = 0
    for s in analyze(results).series:
        metrics = set(results[results["task"] == s.name]["metric"]) if s.kind == "task" else set()
        if s.kind != "task" or s.metric != next((m for m in PRIMARY if m in metrics), None):
            continue  # each task once, on the metric the rule judges
        rows = results[(results["task"] == s.name) & (results["metric"] == s.metric)]
        n = int(rows["n"].max())
        for i, k in enumerate(s.budgets):
            at = rows[rows["budget"] == k]
            r = {u: s.scores[m][i] for u, m in zip(units_of(at), at["method"]) if s.scores[m][i] is not None}
            best = max(r.values())
            for v in r.values():
                full += n
                used += n if k == 0 or best - v <= s.noise_floor else min(first, n)
    return used, full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--first", type=int, default=Rule.first)
    ap.add_argument("--alpha", type=float, default=Rule.alpha)
    ap.add_argument("--keep-worst", action="store_true", help="the budget's worst cell runs to the end")
    args = ap.parse_args()
    rule = Rule(first=args.first, alpha=args.alpha, keep_worst=args.keep_worst)
    for folder in args.sweeps:
        t0 = time.perf_counter()
        sweep = read_sweep(folder)
        results = sweep.results[~sweep.results["task"].astype(str).str.contains(r"\+heal")]
        recorded = read_records(Path(folder) / LOG_FILE)
        full = outcome(results)
        used = total = 0
        same: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        for seed in range(args.orders):
            df, state = replay(results, recorded, rule, seed)
            used, total = used + state["evaluated"], total + state["full"]
            reasons.update(c["reason"] for c in state["cells"].values())
            got = outcome(df)
            for key, value in full.items():
                same[key] += got.get(key) == value
            same["(all at once)"] += all(got.get(k) == v for k, v in full.items())
            same["(verdicts)"] += all(got.get(k) == v for k, v in full.items() if "leaders@" not in k)
        boot: Counter[str] = Counter()  # the full sweep against itself on resampled documents
        for seed in range(args.orders):
            got = outcome(resampled(results, recorded, seed))
            for key, value in full.items():
                boot[key] += got.get(key) == value
            boot["(all at once)"] += all(got.get(k) == v for k, v in full.items())
            boot["(verdicts)"] += all(got.get(k) == v for k, v in full.items() if "leaders@" not in k)
        n = args.orders
        print(f"\n{folder}: {len(set(units_of(results)))} distinct evaluations x documents; {n} document orders; "
              f"first round {rule.first}, alpha {rule.alpha}{', worst cell kept' if rule.keep_worst else ''}")
        print(f"document evaluations: {used / n:.0f} of {total / n:.0f} per sweep "
              f"({total / max(used, 1):.2f}x fewer)")
        o_used, o_full = close_call_reference(results, rule.first)
        print(f"reference: the close calls (within the noise floor of their budget's best) run to the end, every "
              f"other cell stopped after round 1: {o_used} of {o_full} ({o_full / max(o_used, 1):.2f}x fewer)")
        print("why cells stopped (all orders): " + ", ".join(f"{k} {v / sum(reasons.values()):.0%}"
                                                             for k, v in reasons.most_common()))
        groups = {"k2/k3": [k for k in full if k.endswith((" k2", " k3"))],
                  "claims": [k for k in full if k.rsplit(" ", 1)[1].startswith("H")],
                  "leader sets": [k for k in full if "leaders@" in k]}
        for name, keys in groups.items():
            if keys:
                rates = [same[k] / n for k in keys]
                worst = min(keys, key=lambda k: same[k])
                print(f"{name}: same as the full sweep in {np.mean(rates):.1%} of (order, item) pairs; "
                      f"worst {worst} {same[worst] / n:.0%}; full sweep on resampled documents: "
                      f"{np.mean([boot[k] / n for k in keys]):.1%}, its {worst} {boot[worst] / n:.0%}")
        print(f"every k2, k3 and claim as the full sweep: {same['(verdicts)'] / n:.1%} of orders; "
              f"and every leader set too: {same['(all at once)'] / n:.1%}")
        print(f"the full sweep on {n} bootstrap draws of its own documents: every k2, k3 and claim the same in "
              f"{boot['(verdicts)'] / n:.1%}; and every leader set too: {boot['(all at once)'] / n:.1%}")
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
