"""Adaptive sweeps: each task's documents in rounds, and a cell stops once it is decided.

Every task gets one seeded order of its n documents, shared by every cell, so that comparisons
stay paired; round j brings the documents up to m_j = first * 2^j (the last round: all n). The
unpruned model (budget 0) is the reference and always sees all n. After each round the rule
looks, per task and budget, at the distinct drop sets still running, on the task's primary
metric (`primary`):
  behind   the budget's leader (best mean so far) is better beyond doubt: a one-sided exact sign
           test on the paired per-document differences rejects "this cell is at least as good"
           (for 0/1 metrics this is McNemar's exact test on the documents where they differ);
  broken   a lower-is-better metric (nll) more than `broken` times the unpruned model's on the
           same documents, beyond doubt: the sign test on x_cell - broken * x_unpruned;
  tied     a 0/1 metric whose cell and leader differ on so few documents that the Clopper-Pearson
           upper bound of that share is within the noise floor (`tie` x the unpruned score): the
           mean difference cannot exceed the share of documents that differ;
  decided  the leader, once every other cell of its budget has stopped;
  all      the cell ran out of documents (the close calls and the leaders get there).

Why the verdicts stay valid although the rule looks after every round: the rounds are fixed
before any document is seen (m_j depends on n and `first` only), so a cell is looked at R times
at most; every test runs at level alpha / R, and by the union bound the chance that any look at
a cell errs is at most alpha (a Bonferroni spending of alpha over the rounds). The tests are
exact (binomial), so no normal approximation enters. The price: a decision needs a lopsided
sign count (at R = 4, alpha = 0.05: 8 of 8 documents, 10 of 11, ...), so only clear cases stop
early; the rest get every document, as in a full sweep.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from layercut.sweep.spec import Unit

ADAPTIVE_FILE = "adaptive.json"
FIRST = 8  # documents in the first round
ALPHA = 0.05
BROKEN = 2.0  # nll at this many times the unpruned model's: broken
TIE = 0.02  # the analysis' fixed noise floor: 2 % of the unpruned score
PRIMARY = ("accuracy", "acc", "exact_match", "score", "nll")  # the first with per-document values leads
REASONS = {"behind": "behind its budget's leader beyond doubt", "broken": "broken beyond doubt",
           "tied": "tied with its budget's leader within the noise floor",
           "decided": "leader, the rest of its budget decided", "all": "every document",
           "reference": "the unpruned reference: every document"}


def schedule(n: int, first: int = FIRST) -> list[int]:
    """Documents evaluated after each round: first, 2 first, 4 first, ..., n."""
    sizes = []
    m = max(1, first)
    while m < n:
        sizes.append(m)
        m *= 2
    return sizes + [n]


def order(n: int, seed: int | list[int]) -> list[int]:
    """The seeded order of a task's documents that every cell follows."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def sign_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(Binomial(wins + losses, 1/2) >= wins)."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2.0 ** n


def cp_upper(k: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson upper bound at level delta for k successes in n trials."""
    if n == 0 or k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection on P(Binomial(n, p) <= k) = delta
        mid = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * mid ** i * (1 - mid) ** (n - i) for i in range(k + 1))
        lo, hi = (mid, hi) if cdf > delta else (lo, mid)
    return hi


@dataclass
class Rule:
    """The stopping rule's settings (saved in sweep.json: a resumed sweep keeps them)."""

    first: int = FIRST
    alpha: float = ALPHA
    broken: float = BROKEN
    tie: float = TIE
    keep_worst: bool = False  # the budget's worst cell runs on: it sets the spread S(k) the regimes read

    def delta(self, n: int) -> float:
        """The level of each look: alpha spent evenly over the rounds a task of n documents has."""
        return self.alpha / len(schedule(n, self.first))


@dataclass
class Cell:
    """One drop set on one task: its primary metric per document, in the task's shared order
    (evaluated documents only: a prefix of the order)."""

    values: np.ndarray
    stopped: str = ""  # a REASONS key once decided
    at: int = 0  # documents it had when it stopped
    methods: list[str] = field(default_factory=list)


def decide(cells: dict[str, Cell], reference: np.ndarray | None, higher: bool, binary: bool,
           rule: Rule, n: int) -> None:
    """One look at one budget of one task: mark the running cells the rule stops (in place).

    `reference`, the unpruned model's values on all n documents in the same order; `binary`,
    whether the metric is 0/1 per document (the tie rule needs it)."""
    running = {k: c for k, c in cells.items() if not c.stopped}
    if not running:
        return
    m = min(len(c.values) for c in running.values())
    delta = rule.delta(n)
    sign = 1.0 if higher else -1.0
    leader = max(running, key=lambda k: sign * float(np.mean(running[k].values[:m])))
    lead = running[leader].values[:m]
    base = None if reference is None else reference[:m]
    worst = min(cells, key=lambda k: sign * float(np.mean(cells[k].values))) if rule.keep_worst else None
    for key, c in running.items():
        x = c.values[:m]
        if key == worst:
            continue
        if key != leader:
            d = sign * (lead - x)
            if sign_p(int((d > 0).sum()), int((d < 0).sum())) <= delta:
                c.stopped = "behind"
            elif binary and base is not None and \
                    cp_upper(int((d != 0).sum()), m, delta) <= rule.tie * abs(float(np.mean(reference))):
                c.stopped = "tied"
        if not c.stopped and not higher and base is not None:
            over = x - rule.broken * base
            if sign_p(int((over > 0).sum()), int((over < 0).sum())) <= delta:
                c.stopped = "broken"
        if c.stopped:
            c.at = m
    rest = [k for k, c in running.items() if k != leader and not c.stopped]
    if not rest and len(cells) > 1 and not running[leader].stopped:
        running[leader].stopped, running[leader].at = "decided", m
    if m >= n:
        for c in running.values():
            if not c.stopped:
                c.stopped, c.at = "all", m


def task_order(n: int, seed: int, task: str) -> list[int]:
    """The order of one task's documents: seeded by the sweep's seed and the task's name."""
    return order(n, [seed, zlib.crc32(task.encode())])


def primary(record: dict[str, Any]) -> str | None:
    """The metric a task's cells are judged on: the first of PRIMARY with per-document values."""
    return next((m for m in PRIMARY if m in record.get("docs", {})), None)


def run_rounds(units: list[Unit], rule: Rule, seed: int, count: Callable[[str], int], done: dict[str, dict],
               execute: Callable[[list[Unit]], None], directions: dict[str, bool],
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate whole units (drop set, task) round by round, stopping cells by `decide`.

    `count(task)`: the task's documents; `done`: the results log's records (merged per unit,
    updated by `execute`, which evaluates and logs chunk units); `directions`: metric -> higher
    is better, for metrics a record does not say. Everything is recomputed from the log, so a
    resumed sweep takes the same decisions and evaluates only what is missing. Returns what
    ADAPTIVE_FILE holds."""
    tasks = list(dict.fromkeys(u.task for u in units))
    n = {t: count(t) for t in tasks}
    orders = {t: task_order(n[t], seed, t) for t in tasks}
    rounds = {t: schedule(n[t], rule.first) for t in tasks}
    cells: dict[str, Cell] = {}
    metric: dict[str, str | None] = {}
    full = sum(n[u.task] for u in units)
    for j in range(max(len(r) for r in rounds.values())):
        todo = []
        for u in units:
            t = u.task
            if j >= len(rounds[t]) or (u.key in cells and cells[u.key].stopped):
                continue
            if not u.drop:  # the reference: every document at once
                if j == 0:
                    todo.append(Unit(u.drop, t, docs=tuple(range(n[t])), part=0))
                continue
            lo = rounds[t][j - 1] if j else 0
            todo.append(Unit(u.drop, t, docs=tuple(sorted(orders[t][lo:rounds[t][j]])), part=j))
        for t in tasks:  # one task's round at a time: its drop sets still share layer prefixes
            missing = [c for c in todo if c.task == t and c.key not in done]
            if progress is not None:
                progress(_evaluated(done, units) + _saved(cells, n, units), full)
            if missing:
                execute(missing)
        for t in tasks:
            if j >= len(rounds[t]):
                continue
            m = rounds[t][j]
            ref = done.get(Unit((), t).key)
            metric[t] = primary(ref) if ref else primary(done.get(next(u for u in units if u.task == t).key, {}))
            key = metric[t]
            by_budget: dict[int, dict[str, Cell]] = {}
            for u in units:
                if u.task != t or not u.drop:
                    continue
                cell = cells.setdefault(u.key, Cell(np.empty(0)))
                if not cell.stopped:
                    cell.values = _in_order(done.get(u.key), key, orders[t])[:m] if key else np.empty(0)
                by_budget.setdefault(len(u.drop), {})[u.key] = cell
            if key is None:  # nothing per document to judge on: every document, as a full sweep
                for cell in (c for g in by_budget.values() for c in g.values() if not c.stopped and m >= n[t]):
                    cell.stopped, cell.at = "all", m
                continue
            higher = (ref or {}).get("higher_is_better", {}).get(key, directions.get(key, True))
            reference = _in_order(ref, key, orders[t]) if ref else None
            binary = reference is not None and bool(np.isin(reference, (0.0, 1.0)).all())
            for group in by_budget.values():
                decide(group, reference, higher, binary, rule, n[t])
    if progress is not None:
        progress(full, full)
    return {"rule": asdict(rule), "evaluated": _evaluated(done, units), "full": full,
            "tasks": {t: {"documents": n[t], "rounds": rounds[t], "metric": metric.get(t)} for t in tasks},
            "cells": {k: {"reason": c.stopped, "documents": c.at} for k, c in cells.items()}}


def _in_order(record: dict | None, metric: str | None, order_: list[int]) -> np.ndarray:
    """A unit's per-document values of `metric` in the task's order, evaluated documents only."""
    if not record or metric not in record.get("docs", {}):
        return np.empty(0)
    values, weights = record["docs"][metric]
    return np.asarray([values[i] for i in order_ if weights[i] > 0], dtype=float)


def _evaluated(done: dict[str, dict], units: list[Unit]) -> int:
    return sum(int(done[u.key]["metrics"].get("n", 0)) for u in units if u.key in done)


def _saved(cells: dict[str, Cell], n: dict[str, int], units: list[Unit]) -> int:
    """Documents the stopped cells will never need (so a progress bar can end at the full count)."""
    return sum(n[u.task] - cells[u.key].at for u in units if u.key in cells and cells[u.key].stopped)
