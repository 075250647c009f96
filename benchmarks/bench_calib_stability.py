"""How many calibration samples per domain a selection needs before its pick settles.

    python benchmarks/bench_calib_stability.py runs/m/scores.json --draws 4,8,16,32,64 --budgets 2,4,8

From one scores.json that keeps per-sample statistics (`layercut score` does by default), an
m-out-of-n bootstrap over the calibration samples (`regimes.stability.selection_stability(...,
draw=m)`) re-selects as if each domain had m samples, for every m of `--draws`: per method and
budget, the mean Jaccard of the pick with the full-data pick. A pick is stable at m when that
mean is at least 0.9; "samples needed" is the smallest m from which it stays so over the larger
draws ("> n" when even the largest draw is short). Then, at the full sample count, how many of the
layers where the math-aware and general-aware picks differ are beyond calibration noise (they
differ the same way in at least 95 % of resamples). No model is loaded.
"""

from __future__ import annotations

import argparse
import time

from typing import Any

from layercut import api
from layercut.regimes.stability import SPECIFIC, STABLE
from layercut.scoring import LayerScores


def shares(d: dict[str, Any], layers: list[int]) -> str:
    return ", ".join(f"{x} ({d['shares'][str(x)]:.0%})" for x in layers) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores")
    ap.add_argument("--methods", default="math,general,mixed,bi")
    ap.add_argument("--budgets", default="2,4,8")
    ap.add_argument("--draws", default="4,8,16,32,64", help="calibration samples per domain to replay")
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    scores = LayerScores.load(args.scores)
    methods = args.methods.split(",")
    budgets = [int(k) for k in args.budgets.split(",")]
    draws = [int(m) for m in args.draws.split(",")]
    per = ", ".join(f"{d} {s.samples}" for d, s in scores.domains.items())
    print(f"{args.scores}: {scores.num_layers} layers, {per} calibration samples, {args.replicates} resamples per draw")
    jac: dict[int, dict[str, dict[str, float]]] = {}
    print("| samples per domain | " + " | ".join(f"{m} k={k}" for m in methods for k in budgets) + " |")
    print("|---:|" + "---:|" * (len(methods) * len(budgets)))
    for m in draws:
        t0 = time.perf_counter()
        st = api.select_stability(scores, methods, budgets, replicates=args.replicates, seed=args.seed, draw=m)
        jac[m] = st.jaccard
        print(f"| {m} | " + " | ".join(f"{st.jaccard[me][str(k)]:.2f}" for me in methods for k in budgets) + " |")
        print(f"<!-- draw {m}: {time.perf_counter() - t0:.0f} s -->")
    print(f"\nsamples per domain needed for mean Jaccard ≥ {STABLE} (smallest draw from which it stays so):")
    print("| method | " + " | ".join(f"k={k}" for k in budgets) + " |")
    print("|---|" + "---:|" * len(budgets))
    for me in methods:
        cells = []
        for k in budgets:
            ok = [m for i, m in enumerate(draws) if all(jac[x][me][str(k)] >= STABLE for x in draws[i:])]
            cells.append(str(ok[0]) if ok else f"> {draws[-1]}")
        print(f"| {me} | " + " | ".join(cells) + " |")
    st = api.select_stability(scores, methods, budgets, replicates=args.replicates, seed=args.seed)
    if st.domain_specific:
        print(f"\nmath-aware vs general-aware picks at the full sample count (domain-specific: differs the same "
              f"way in ≥ {SPECIFIC:.0%} of resamples):")
        print("| k | only math (share) | only general (share) | beyond noise |")
        print("|---:|---|---|---|")
        for k, d in st.domain_specific.items():
            print(f"| {k} | {shares(d, d['math_only'])} | {shares(d, d['general_only'])} | "
                  f"{len(d['beyond_noise'])} of {len(d['shares'])} |")


if __name__ == "__main__":
    main()
