"""How many documents a sweep needs before its regime verdicts settle.

    python benchmarks/bench_regime_stability.py runs/regimes32/sweep --draws 8,16,32

From one sweep whose cells store per-document values, an m-out-of-n paired bootstrap
(`regimes.bootstrap(..., draw=m)`) replays the regime analysis as if each task had m documents,
for every m of `--draws`: per series, the most frequent boundaries k2 / k3 and the share of
resamples that found them, and the share in which H1, H2 and H3 hold. A boundary is settled when
its modal share is high and stops moving as m grows. The largest m (= the documents the sweep
has) is the ordinary bootstrap the report shows. No model is loaded: seconds, not minutes.
"""

from __future__ import annotations

import argparse
import time

from layercut.regimes.bootstrap import NONE, bootstrap
from layercut.report.sweep_folder import read_sweep


def modal(shares: dict[str, float]) -> str:
    k, p = max(shares.items(), key=lambda kv: kv[1])
    return f"{'none' if k == NONE else k} ({p:.0%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep")
    ap.add_argument("--draws", default="8,16,32", help="documents per task to replay")
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sweep = read_sweep(args.sweep)
    if not sweep.docs:
        raise SystemExit(f"{args.sweep}: {sweep.no_docs or 'no per-document values'}: rerun the sweep")
    n = {len(v[0]) for v in sweep.docs.values()}
    print(f"{args.sweep}: {len(sweep.results)} cells, {sorted(n)} documents per task, "
          f"{args.replicates} resamples per draw")
    print("| documents | series | k2 (share) | k3 (share) | P(H1) | P(H2) | P(H3) |")
    print("|---:|---|---|---|---:|---:|---:|")
    for m in (int(x) for x in args.draws.split(",")):
        t0 = time.perf_counter()
        u = bootstrap(sweep.results, sweep.docs, replicates=args.replicates, seed=args.seed, draw=m)
        for key, b in u.boundaries.items():
            if not key.startswith("domain:"):
                continue
            v = u.verdicts[key]
            print(f"| {m} | {key} | {modal(b['k2'])} | {modal(b['k3'])} | {v['H1']:.2f} | "
                  f"{v['H2']:.2f} | {v['H3']:.2f} |")
        print(f"<!-- draw {m}: {time.perf_counter() - t0:.0f} s -->")


if __name__ == "__main__":
    main()
