"""A real adaptive sweep against the full sweep of the same spec: cost and conclusions, side by side.

    python benchmarks/adaptive_vs_full.py runs/adaptive/adaptive runs/adaptive/full

Both folders come from `layercut sweep` with the same options, one of them with `--adaptive`.
Printed: document evaluations (the sum over distinct units of the documents each evaluated) and
evaluation seconds (the sum of the cells' own times in cells.jsonl) of each, per task; then how
many of the full sweep's conclusions (per series: k2, k3, every claim's verdict, every budget's
leader set; `bench_adaptive.outcome`) the adaptive one reaches, and every one it does not.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_adaptive import outcome  # noqa: E402

from layercut.report.sweep_folder import read_sweep  # noqa: E402
from layercut.sweep import LOG_FILE  # noqa: E402
from layercut.sweep.log import read_records  # noqa: E402


def cost(folder: Path) -> dict[str, tuple[int, float]]:
    """task -> (document evaluations, seconds), over the units a sweep evaluated (rounds merged)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for rec in read_records(folder / LOG_FILE).values():
        if rec.get("whole"):  # one round of an adaptive unit: counted in its merged record
            continue
        out[rec["task"]][0] += int(rec["metrics"].get("n", 0))
        out[rec["task"]][1] += float(rec["seconds"])
    return {t: (int(n), s) for t, (n, s) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("adaptive", type=Path)
    ap.add_argument("full", type=Path)
    args = ap.parse_args()
    a, f = cost(args.adaptive), cost(args.full)
    print("| task | document evaluations, adaptive / full | fewer | evaluation seconds, adaptive / full |")
    print("|---|---|---|---|")
    for t in f:
        (na, sa), (nf, sf) = a.get(t, (0, 0.0)), f[t]
        print(f"| {t} | {na} / {nf} | {nf / max(na, 1):.2f}x | {sa:.0f} / {sf:.0f} |")
    na, nf = sum(v[0] for v in a.values()), sum(v[0] for v in f.values())
    sa, sf = sum(v[1] for v in a.values()), sum(v[1] for v in f.values())
    print(f"| all | {na} / {nf} | {nf / max(na, 1):.2f}x | {sa:.0f} / {sf:.0f} ({sf / max(sa, 1e-9):.2f}x) |")
    full = outcome(read_sweep(args.full).results)
    got = outcome(read_sweep(args.adaptive).results)
    groups = {"k2/k3": lambda k: k.endswith((" k2", " k3")), "claims": lambda k: k.rsplit(" ", 1)[1].startswith("H"),
              "leader sets": lambda k: "leaders@" in k}
    for name, test in groups.items():
        keys = [k for k in full if test(k)]
        same = [k for k in keys if got.get(k) == full[k]]
        print(f"{name}: {len(same)} of {len(keys)} as the full sweep")
        for k in keys:
            if got.get(k) != full[k]:
                print(f"  differs: {k}: adaptive {got.get(k)!r}, full {full[k]!r}")


if __name__ == "__main__":
    main()
