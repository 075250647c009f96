"""Wall time of a methods x budgets sweep: layercut's one-load sweep against per-cell checkpoints.

Every cell (method, budget) of the sweep is one drop set, evaluated on one task; by default
5 methods (math, bi, block, last, uniform) x 4 budgets (2, 4, 6, 8) = 20 cells on the default
model (SmolLM2-135M-Instruct, 30 layers) and `nll-math` (per-token NLL of GSM8K gold solutions)
cut to `--limit 4` documents (~880 tokens, ~520 of them scored). Even that small, one evaluation
(~4 s on one thread here) outweighs loading and saving a checkpoint (~1.4 s); `--limit 1` shrinks it
to ~0.8 s. The output says how much of a (b) cell evaluation took. The same sweep is done in one
run, side by side:

  (a) layercut: `layercut.sweep.run_sweep(SweepSpec(...), out)`: the weights are loaded and the
      task prepared once; each distinct drop set is evaluated once through a
      `layercut.surgery.skipped` layer-skip view and its result shared by every cell that chose
      it. Timed from the call to its return (load, prepare, planning, evaluations, and the
      results log and tables it writes after each evaluation).
  (b) the per-cell glue workflow users have today: for every cell, load the model, drop the
      layers (`layercut.surgery.drop_layers`), save a checkpoint (`save_pretrained` of model and
      tokenizer; `--writer prune` uses `layercut.api.prune(...)` instead, which also reloads the
      checkpoint to verify it), then load that checkpoint fresh and evaluate it with the same
      `prepare`/`evaluate`. Every cell, no sharing: that is what a per-cell reload workflow does.
  (b') as (b) without the checkpoint: load the original and drop the layers in memory per cell,
      then evaluate; (b) - (b') is what writing and re-reading checkpoints costs.
  (b'') optional (`--fresh-processes`): (b) as two fresh Python processes per cell (one writes
      the checkpoint, one evaluates it), as a shell loop over a prune script and an evaluation
      CLI would run it; it adds interpreter start-up and imports to every cell.

Layer scores for the score-based methods (math, bi, block) are computed once before anything is
timed, `layercut.api.score(MODEL, "builtin:text:8", max_length=128)`, and the same scores serve
every way ((a) reads them from a scores.json; (b) selects with `layercut.api.select`). The drop
sets of (b) are checked against the ones (a) planned, and every cell's metric values of (b),
(b') (and (b'')) against (a)'s (max |diff|; a layer-skip view should equal a real pruned
checkpoint exactly).

Before timing, one untimed warm-up cell of (b) loads the model from disk into the page cache,
reads the task's documents (cached in process afterwards, for every way alike) and warms the
kernels. Then (a) runs, then the cells of (b') and (b) (and (b'')) alternate, the order rotating
from one cell to the next. Besides wall time the table gives CPU seconds (this process plus its
children), which a busy second core disturbs less. One torch thread (`--threads`, default 1): on
these 2-core machines the other core is usually busy. Checkpoints and the sweep folder live in a
temporary directory (`--tmp-dir` picks where) removed at the end; each cell's checkpoint is
deleted after it is evaluated, outside the timed part.

    python benchmarks/bench_sweep.py [--methods math,bi,block,last,uniform --budgets 2,4,6,8
                                      --task nll-math --limit 4 --writer save --fresh-processes]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from layercut import api
from layercut.evaluation import HIGHER_IS_BETTER, evaluate, prepare
from layercut.models import load
from layercut.surgery import drop_layers
from layercut.sweep import LOG_FILE, SweepSpec, run_sweep

MODEL = "smollm2-135m"
CALIB = "builtin:text:8"
B1, B2 = "b'", "b''"  # the variants' names, for f-strings
WAYS = {
    "a": "layercut run_sweep (one load, layer-skip views, shared drop sets)",
    "b": "per cell: load, drop, save checkpoint; reload it, evaluate",
    "b'": "per cell: load, drop in memory, evaluate (no checkpoint)",
    "b''": "(b) as two fresh processes per cell (write, evaluate)",
}


class Clock:
    """Wall and CPU seconds (this process and its finished children) since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu():
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + c.ru_utime + c.ru_stime

    def read(self):
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


# ---- the ways -------------------------------------------------------------------------------


def way_a(args, scores_path, folder):
    """One run_sweep; per cell its metrics and drop set, plus the distinct sets it evaluated."""
    spec = SweepSpec(model=MODEL, methods=args.methods, budgets=args.budgets, tasks=[args.task],
                     scores=str(scores_path), limit=args.limit, batch_size=args.batch_size)
    gc.collect()
    clock = Clock()
    df = run_sweep(spec, folder)
    wall, cpu = clock.read()
    metrics, drops = {}, {}
    for row in df.itertuples():
        cell = (row.method, int(row.budget))
        metrics.setdefault(cell, {})[row.metric] = float(row.value)
        drops[cell] = sorted(int(i) for i in row.drop.split(",") if i)
    units = [json.loads(line) for line in (folder / LOG_FILE).read_text().splitlines() if line.strip()]
    return {"metrics": metrics, "drops": drops, "wall": wall, "cpu": cpu, "units": len(units),
            "eval": sum(u["seconds"] for u in units)}


def _evaluate_fresh(args, folder):
    adapter = load(str(folder))
    prepared = prepare(args.task, adapter, limit=args.limit)
    return evaluate(adapter, prepared, batch_size=args.batch_size)


def _write(args, drop, ckpt):
    if args.writer == "prune":
        api.prune(MODEL, drop=drop, out=ckpt)
        return
    adapter = load(MODEL)
    drop_layers(adapter, drop)
    adapter.model.save_pretrained(ckpt)
    adapter.processor.save_pretrained(ckpt)


def cell_b(args, drop, ckpt):
    """Write a pruned checkpoint, then load it fresh and evaluate it."""
    gc.collect()
    clock = Clock()
    _write(args, drop, ckpt)
    gc.collect()
    w = clock.read()
    metrics = _evaluate_fresh(args, ckpt)
    wall, cpu = clock.read()
    return metrics, {"wall": wall, "cpu": cpu, "write": w[0], "reload+eval": wall - w[0]}


def cell_b1(args, drop):
    """Load the original, drop in memory, evaluate."""
    gc.collect()
    clock = Clock()
    adapter = load(MODEL)
    drop_layers(adapter, drop)
    t_load = clock.read()[0]
    prepared = prepare(args.task, adapter, limit=args.limit)
    metrics = evaluate(adapter, prepared, batch_size=args.batch_size)
    wall, cpu = clock.read()
    return metrics, {"wall": wall, "cpu": cpu, "load+drop": t_load, "eval": wall - t_load}


def cell_b2(args, drop, ckpt):
    """(b) as two fresh Python processes: one writes the checkpoint, one evaluates it."""
    common = [sys.executable, __file__, "--threads", str(args.threads), "--task", args.task,
              "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--writer", args.writer,
              "--ckpt", str(ckpt)]
    clock = Clock()
    subprocess.run(common + ["--mode", "write", "--drop", ",".join(map(str, drop))],
                   check=True, capture_output=True, text=True)
    w = clock.read()
    done = subprocess.run(common + ["--mode", "eval"], check=True, capture_output=True, text=True)
    wall, cpu = clock.read()
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    return metrics, {"wall": wall, "cpu": cpu, "write": w[0], "reload+eval": wall - w[0]}


def child(args):
    """--mode write|eval: one step of (b'') in its own process."""
    torch.set_num_threads(args.threads)
    if args.mode == "write":
        _write(args, [int(i) for i in args.drop.split(",") if i], Path(args.ckpt))
    else:
        print(json.dumps({k: float(v) for k, v in _evaluate_fresh(args, Path(args.ckpt)).items()}))


# ---- the comparison -------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="math,bi,block,last,uniform", help="comma-separated methods")
    p.add_argument("--budgets", default="2,4,6,8", help="comma-separated layer counts to drop")
    p.add_argument("--task", default="nll-math", help="evaluation task (see `layercut tasks`)")
    p.add_argument("--limit", type=int, default=4, help="documents evaluated per cell")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--writer", choices=["save", "prune"], default="save",
                   help="(b) writes checkpoints with load+drop_layers+save_pretrained, or api.prune (adds a verify reload)")
    p.add_argument("--fresh-processes", action="store_true", help="also time (b''): (b) in two fresh processes per cell")
    p.add_argument("--tmp-dir", default=None, help="where the temporary checkpoints go (default: the system's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, same in every process")
    p.add_argument("--mode", choices=["bench", "write", "eval"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--drop", default="", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode != "bench":
        return child(args)
    torch.set_num_threads(args.threads)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.budgets = [int(k) for k in args.budgets.split(",") if k.strip()]
    cells = [(m, k) for m in args.methods for k in args.budgets]
    ways = ["a", "b", "b'"] + (["b''"] if args.fresh_processes else [])

    with tempfile.TemporaryDirectory(prefix="layercut-bench-sweep-", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        scores = api.score(MODEL, CALIB, max_length=128)
        scores.save(tmp / "scores.json")
        t_score = time.perf_counter() - t0
        print(f"scores ({CALIB}, max_length 128): {t_score:.1f} s (not timed)", flush=True)
        drops = {(m, k): sorted(api.select(scores, m, k).drop) for m, k in cells}

        # Untimed warm-up: page cache, the task's documents, kernels.
        warm_metrics, warm = cell_b(args, drops[cells[0]], tmp / "warmup")
        shutil.rmtree(tmp / "warmup")
        tokens = int(warm_metrics.get("tokens", 0))
        print(f"warm-up cell (b) {cells[0]}: {warm['wall']:.1f} s (not timed)", flush=True)

        a = way_a(args, tmp / "scores.json", tmp / "sweep")
        print(f"(a) run_sweep: {a['wall']:.1f} s for {len(cells)} cells, {a['units']} distinct drop sets "
              f"evaluated ({a['eval']:.1f} s in evaluate)", flush=True)

        runs = {w: {} for w in ways if w != "a"}
        results = {w: {} for w in ways if w != "a"}
        for i, (m, k) in enumerate(cells):
            order = list(runs)[i % len(runs):] + list(runs)[: i % len(runs)]
            for w in order:
                ckpt = tmp / f"ckpt-{m}-{k}"
                if w == "b":
                    results[w][(m, k)], runs[w][(m, k)] = cell_b(args, drops[(m, k)], ckpt)
                elif w == "b'":
                    results[w][(m, k)], runs[w][(m, k)] = cell_b1(args, drops[(m, k)])
                else:
                    results[w][(m, k)], runs[w][(m, k)] = cell_b2(args, drops[(m, k)], ckpt)
                shutil.rmtree(ckpt, ignore_errors=True)  # not timed
            print(f"cell {i + 1}/{len(cells)} {m} k={k}: "
                  + ", ".join(f"({w}) {runs[w][(m, k)]['wall']:.1f} s" for w in runs), flush=True)
        ckpt_mib = None
        if cells:  # the size of one checkpoint, for the record
            _write(args, drops[cells[0]], tmp / "size")
            ckpt_mib = sum(f.stat().st_size for f in (tmp / "size").rglob("*") if f.is_file()) / 2**20

    # ---- report ----
    total = {"a": (a["wall"], a["cpu"])}
    for w, per_cell in runs.items():
        total[w] = (sum(r["wall"] for r in per_cell.values()), sum(r["cpu"] for r in per_cell.values()))
    n = len(cells)
    metric_names = [mt for mt in HIGHER_IS_BETTER if all(mt in a["metrics"].get(c, {}) for c in cells)]
    same_drops = sum(a["drops"].get(c) == drops[c] for c in cells)
    diffs = {w: max((abs(a["metrics"][c][mt] - float(results[w][c][mt])) for c in cells for mt in metric_names),
                    default=float("nan")) for w in results}

    def mean(w, key):
        return sum(r[key] for r in runs[w].values()) / n

    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    console.print(
        f"\nModel {MODEL}, {len(args.methods)} methods ({', '.join(args.methods)}) x {len(args.budgets)} "
        f"budgets ({', '.join(map(str, args.budgets))}) = {n} cells; task {args.task} with --limit "
        f"{args.limit} ({tokens} scored tokens per cell; prepare + evaluate is {mean(B1, 'eval'):.2f} s of "
        f"(b)'s {total['b'][0] / n:.2f} s per cell), "
        f"batch size {args.batch_size}. Scores: api.score({MODEL!r}, {CALIB!r}, max_length=128), once, "
        f"not timed ({t_score:.0f} s). Checkpoints written with "
        f"{'api.prune (incl. its verify reload)' if args.writer == 'prune' else 'drop_layers + save_pretrained'}"
        f"{f', {ckpt_mib:.0f} MiB each at the first cell' if ckpt_mib else ''}. torch threads: {args.threads}."
    )
    table = Table(title=f"Sweep of {n} cells: total time per way")
    for col in ("way", "total s", "s / cell", "×(a)", "CPU s", "CPU ×(a)", "where the time goes (mean s per cell)"):
        table.add_column(col, justify="left" if col in ("way", "where the time goes (mean s per cell)") else "right")
    detail = {
        "a": f"evaluate {a['eval'] / n:.2f} ({a['units']} distinct sets, {a['eval']:.1f} s in all); "
             f"load, prepare, plan, tables {(a['wall'] - a['eval']) / n:.2f}",
    }
    if "b" in runs:
        detail["b"] = f"write {mean('b', 'write'):.2f}; reload + prepare + evaluate {mean('b', 'reload+eval'):.2f}"
    if "b'" in runs:
        detail["b'"] = f"load + drop {mean(B1, 'load+drop'):.2f}; prepare + evaluate {mean(B1, 'eval'):.2f}"
    if "b''" in runs:
        detail["b''"] = f"write process {mean(B2, 'write'):.2f}; evaluate process {mean(B2, 'reload+eval'):.2f}"
    for w in ways:
        wall, cpu = total[w]
        table.add_row(f"({w}) {WAYS[w]}", f"{wall:.1f}", f"{wall / n:.2f}", f"{wall / total['a'][0]:.2f}",
                      f"{cpu:.1f}", f"{cpu / total['a'][1]:.2f}", detail[w])
    console.print(table)

    cell_table = Table(title=f"Per cell ({', '.join(metric_names)}; shared: (a) evaluated this drop set for an earlier cell)")
    for col in ("method", "k", "dropped", "shared", *(f"{mt} ({w})" for mt in metric_names for w in ways),
                *(f"({w}) s" for w in runs)):
        cell_table.add_column(col, justify="left" if col in ("method", "dropped", "shared") else "right")
    seen = set()
    for c in cells:
        key = tuple(a["drops"].get(c, []))
        shared = key in seen
        seen.add(key)
        vals = []
        for mt in metric_names:
            vals.append(f"{a['metrics'][c][mt]:.4f}")
            vals += [f"{float(results[w][c][mt]):.4f}" for w in runs]
        cell_table.add_row(c[0], str(c[1]), " ".join(map(str, drops[c])), "yes" if shared else "", *vals,
                           *(f"{runs[w][c]['wall']:.1f}" for w in runs))
    console.print(cell_table)

    ratio = total["b"][0] / total["a"][0]
    console.print(f"\nDistinct drop sets: {a['units']} of {n} cells ({n - a['units']} cells reused a set "
                  "another cell had chosen; (a) evaluated each distinct set once, (b) and (b') every cell).")
    console.print(f"Drop sets: (b)'s api.select equals (a)'s plan in {same_drops}/{n} cells.")
    for w in results:
        console.print(f"Same metrics, (a) vs ({w}), every cell: max |diff| = {diffs[w]:.3g} "
                      f"({'identical' if diffs[w] == 0 else 'NOT identical'})")
    console.print("\nTarget:")
    console.print(f"  (b)/(a) >= 5x: {'yes' if ratio >= 5 else 'no'} ({ratio:.2f}x wall, "
                  f"{total['b'][1] / total['a'][1]:.2f}x CPU; (b')/(a) {total[B1][0] / total['a'][0]:.2f}x"
                  + (f"; (b'')/(a) {total[B2][0] / total['a'][0]:.2f}x" if B2 in total else "") + ")")


if __name__ == "__main__":
    main()
