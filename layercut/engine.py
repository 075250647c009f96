"""Many drop sets on one teacher-forced task, at the cost of their distinct work.

A configuration that drops set D runs the kept layers K = (0..L-1) minus D in order. Two
configurations whose kept sequences start alike compute the same hidden states up to where they
part; in particular every configuration equals the unpruned model up to its first dropped layer.
So the kept sequences are sorted into a trie order (lexicographic), and the hidden states at each
branch point of the trie, i.e. after the longest prefix a configuration shares with the next one,
are kept while later configurations need them. A configuration starts from the deepest stored
state on its path and runs only the layers after it; the LM head is applied only at the scored
positions. Every layer gets the keyword arguments it received in one unpruned forward pass
(attention mask, position embeddings, ...: captured per layer, since layer types differ), never
a KV cache, so the numbers are those of the plain forward of the pruned model. A layer the
model's forward leaves out of a batch (where its family says so: Mllama's cross-attention layers
without an image) is left out of that batch here too.

Memory: stored states (the embedding output, always, and branch points) are bounded by
`cache_mem` bytes. When a state would pass the limit it is not stored and later configurations
recompute from a shallower one; results are the same, only slower.

`mode="prefix"` keeps only states on the unpruned path (each configuration runs from its first
dropped layer): the simpler shortcut, kept for comparison.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from layercut.errors import LayercutError

MODES = ("trie", "prefix")
DEFAULT_CACHE_FRACTION = 0.5  # of the memory available when the engine starts


def parse_mem(text: str | int | None) -> int | None:
    """'2GiB', '500MB', '0.5' (a fraction of available RAM), bytes as int; None = default."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?i?[bB]?)\s*", str(text))
    if not m:
        raise LayercutError(f"--cache-mem '{text}': use a size like 2GiB or 500MB, or a fraction like 0.25")
    value, unit = float(m.group(1)), m.group(2).lower().rstrip("b").rstrip("i")
    if not unit and value <= 1:
        return int(value * _available())
    return int(value * 1024 ** " kmgt".index(unit or " "))


def _available() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def supports(prepared: Any) -> bool:
    """Teacher-forced tasks only: generation keeps the plain layer-skip view."""
    return prepared.task.kind in ("nll", "choice")


class SharedWork:
    """Teacher-forced batches (a task's rows or calibration text) on one model, ready to evaluate
    many drop sets; `for_task` and `for_calibration` build it."""

    def __init__(self, adapter: Any, batches: list[Any], finish: Callable[[list[tuple[float, int]]], dict],
                 cache_mem: int | str | None = None, mode: str = "trie") -> None:
        """`batches`: `batching.TeacherBatch`es; `finish`: metrics from the per-row (log-prob sum,
        tokens) of one configuration."""
        if mode not in MODES:
            raise LayercutError(f"unknown engine mode '{mode}': use {' or '.join(MODES)}")
        self.adapter, self.batches, self.finish, self.mode = adapter, batches, finish, mode
        limit = parse_mem(cache_mem)
        self.cache_mem = limit if limit is not None else int(DEFAULT_CACHE_FRACTION * _available())
        self.n_rows = sum(len(b.index) for b in self.batches)
        self.layer_calls = 0  # layer forward passes (per batch) since creation: the work done
        # Layers every configuration keeps from the start (e.g. where Qwen3-VL's decoder loop adds
        # deepstack features after a layer): the root state is the input of the first one after.
        self.root = tuple(_leading(sorted(adapter.protected_layers())))
        # per batch, per layer: (args, kwargs), or None where the model left the layer out
        self._calls: list[list[tuple[tuple, dict] | None]] = []
        root: list[torch.Tensor] = []
        with torch.no_grad():
            for b in self.batches:
                h, calls = self._capture(b)
                root.append(h)
                self._calls.append(calls)
        self._store: dict[tuple[int, ...], list[torch.Tensor]] = {self.root: root}
        self._bytes = sum(t.numel() * t.element_size() for t in root)

    @classmethod
    def for_task(cls, adapter: Any, prepared: Any, batch_size: int = 8,
                 cache_mem: int | str | None = None, mode: str = "trie") -> "SharedWork":
        """A prepared teacher-forced task (nll or choice), batched as the plain evaluation does."""
        from layercut.evaluation.teacher import (
            packed_batches,
            teacher_batches,
            teacher_metrics,
            teacher_rows,
        )

        if not supports(prepared):
            raise LayercutError(f"task '{prepared.task.name}' generates text: evaluate it with a layer-skip view")
        if prepared.task.kind == "choice" and _packing_agrees(adapter, prepared):
            batches = packed_batches(adapter, prepared, batch_size)
        else:
            batches = list(teacher_batches(adapter, teacher_rows(prepared), batch_size))
        return cls(adapter, batches, lambda scored: teacher_metrics(prepared, scored), cache_mem, mode)

    @classmethod
    def for_calibration(cls, adapter: Any, batches: list[Any], cache_mem: int | str | None = None,
                        mode: str = "trie") -> "SharedWork":
        """Calibration batches (`data.encode.Batch`): metrics are the mean next-token NLL per domain."""
        from layercut.evaluation.teacher import domain_nll, token_batches

        teacher, domains = token_batches(adapter, batches)
        return cls(adapter, teacher, lambda scored: domain_nll(scored, domains), cache_mem, mode)

    # -- one unpruned pass per batch: the root state and every layer's arguments ---------------

    def _capture(self, batch: Any) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        from layercut.evaluation.batching import logits_at

        layers = self.adapter.layers
        calls: list[Any] = [None] * len(layers)
        state: dict[str, torch.Tensor] = {}

        def pre(i: int):
            def hook(module: Any, args: tuple, kwargs: dict) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                if i == len(self.root):
                    state["root"] = hidden
                calls[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})
            return hook

        def post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            state["last"] = output[0] if isinstance(output, tuple) else output

        handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
        handles.append(layers[-1].register_forward_hook(post, with_kwargs=True))
        try:
            rows, cols = batch.rows, batch.cols
            if not len(rows):  # nothing scored: still capture, with one position of logits
                rows = cols = torch.zeros(1, dtype=torch.long, device=batch.inputs["input_ids"].device)
            logits, _ = logits_at(self.adapter, batch.inputs, rows, cols, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        left_out = {i for i, c in enumerate(calls) if c is None}
        if left_out - self.adapter.skipped_layers(batch.inputs) or not {"root", "last"} <= set(state):
            raise LayercutError(f"model '{self.adapter.source}' skipped decoder layers in its own forward: "
                                "evaluate it with --engine plain")
        # The engine's own tail must give the model's logits, or its numbers would not be the model's.
        mine = self._head(state["last"], rows, cols)
        if mine.shape != logits.shape or not torch.allclose(mine.float(), logits.float(), atol=1e-4, rtol=1e-4):
            raise LayercutError(f"model '{self.adapter.source}': the final norm + LM head do not reproduce "
                                "its logits; evaluate it with --engine plain")
        return state["root"], calls

    def _head(self, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.adapter.head(hidden[rows, cols])

    # -- evaluation ---------------------------------------------------------------------------

    def run(self, drops: Iterable[Iterable[int]]) -> Iterator[tuple[tuple[int, ...], dict[str, float], float]]:
        """(drop set, metrics, seconds) for each distinct drop set, in trie order, as each finishes."""
        for drop, scored, seconds in self.row_scores(drops):
            metrics = self.finish(scored)
            yield drop, {k: float(v) for k, v in metrics.items()}, seconds

    def row_scores(self, drops: Iterable[Iterable[int]]) -> Iterator[tuple[tuple[int, ...], list[tuple[float, int]], float]]:
        """(drop set, per-row (sum of log-probabilities, tokens), seconds), as `run` goes."""
        L = self.adapter.num_layers
        keep = {tuple(i for i in range(L) if i not in set(d)): tuple(sorted(set(d))) for d in drops}
        order = sorted(keep)
        for kept in order:
            if kept[:len(self.root)] != self.root:
                raise LayercutError(f"drop set {keep[kept]} removes a layer this model never drops "
                                    f"({', '.join(map(str, self.root))})")
        wanted = self._branch_points(order)
        t0 = time.perf_counter()
        with torch.no_grad():
            for n, kept in enumerate(order):
                scored = self._evaluate(kept, wanted)
                self._evict(order[n + 1] if n + 1 < len(order) else None)
                t1 = time.perf_counter()
                yield keep[kept], scored, t1 - t0
                t0 = t1

    def _branch_points(self, order: list[tuple[int, ...]]) -> set[tuple[int, ...]]:
        """Prefixes whose state a later configuration starts from."""
        if self.mode == "prefix":
            return {k[:_unpruned_depth(k)] for k in order}
        points = set()
        for a, b in itertools.pairwise(order):
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            points.add(a[:n])
        return points

    def _start(self, kept: tuple[int, ...]) -> int:
        """Depth of the deepest stored state on this configuration's path."""
        top = _unpruned_depth(kept) if self.mode == "prefix" else len(kept)
        for p in range(top, len(self.root), -1):
            if kept[:p] in self._store:
                return p
        return len(self.root)

    def _evaluate(self, kept: tuple[int, ...], wanted: set[tuple[int, ...]]) -> list[tuple[float, int]]:
        from layercut.evaluation.teacher import batch_scores

        p = self._start(kept)
        hidden = list(self._store[kept[:p]])
        layers = self.adapter.layers
        for q in range(p, len(kept)):
            j = kept[q]
            for b, h in enumerate(hidden):
                if self._calls[b][j] is None:
                    continue  # the model leaves this layer out for this batch (e.g. Mllama without an image)
                args, kwargs = self._calls[b][j]
                out = layers[j](h, *args, **kwargs)
                hidden[b] = out[0] if isinstance(out, tuple) else out
            self.layer_calls += len(hidden)
            prefix = kept[:q + 1]
            if prefix in wanted and prefix not in self._store:
                size = sum(t.numel() * t.element_size() for t in hidden)
                if self._bytes + size <= self.cache_mem:
                    self._store[prefix] = list(hidden)
                    self._bytes += size
        scored: list[tuple[float, int]] = [(0.0, 0)] * self.n_rows
        for b, h in zip(self.batches, hidden):
            if not len(b.rows):
                continue
            for i, res in zip(b.index, batch_scores(b, self._head(h, b.rows, b.cols))):
                scored[i] = res
        return scored

    def _evict(self, following: tuple[int, ...] | None) -> None:
        """Drop stored states no later configuration can start from (the root always stays):
        in trie order, a state useless to the next configuration is useless to all later ones."""
        for prefix in [k for k in self._store if k != self.root and (following is None or following[:len(k)] != k)]:
            self._bytes -= sum(t.numel() * t.element_size() for t in self._store.pop(prefix))


def _packing_agrees(adapter: Any, prepared: Any, tol: float = 1e-4) -> bool:
    """Whether packing a choice item's candidates after one context (`teacher.packed_batches`)
    gives this model's plain-row log-likelihoods, checked on the first item with two or more
    candidates. Families whose position ids the model derives itself (e.g. multimodal RoPE)
    may not take it: any error or mismatch keeps plain rows."""
    import math

    from layercut.evaluation.batching import Prepared, logits_at
    from layercut.evaluation.teacher import (
        batch_scores,
        packed_batches,
        score_continuations,
    )

    item = next((it for it in prepared.items if len(it.continuations) > 1), None)
    if item is None:
        return False
    one = Prepared(task=prepared.task, items=[item])
    try:
        with torch.no_grad():
            (batch,) = packed_batches(adapter, one, 1)
            logits, _ = logits_at(adapter, batch.inputs, batch.rows, batch.cols, use_cache=False)
            packed = batch_scores(batch, logits)
            plain = score_continuations(adapter, [(item.context, c) for c in item.continuations], 1)
    except Exception:  # noqa: BLE001 (a family that rejects 4-D masks or position ids: plain rows)
        return False
    return all(n == m and math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b))
               for (a, n), (b, m) in zip(packed, plain))


def _leading(indices: list[int]) -> Iterator[int]:
    """0, 1, 2, ... for as long as `indices` (sorted) has them."""
    for n, i in enumerate(indices):
        if i != n:
            return
        yield i


def _unpruned_depth(kept: tuple[int, ...]) -> int:
    """How many leading layers a kept sequence shares with the unpruned model (its first drop)."""
    n = 0
    while n < len(kept) and kept[n] == n:
        n += 1
    return n


# --- calibration loss of many drop sets, for `iterative` -----------------------------------


class BatchedLoss:
    """A calibration loss, loss(drop) -> float, that also scores many drop sets in one call
    (`many`): `iterative` hands it each greedy round whole."""

    def __init__(self, many: Callable[[list[list[int]]], list[float]], engine: Any) -> None:
        self.many, self.engine = many, engine  # engine: the SharedWork behind it (its counters)

    def __call__(self, drop: list[int]) -> float:
        return self.many([drop])[0]


def calibration_loss_fn(
    adapter: Any, samples: list[Any], batch_size: int = 8, max_length: int = 512,
    engine: str = "trie", cache_mem: int | str | None = None,
) -> Callable[[list[int]], float]:
    """loss(drop) = mean calibration NLL of the model viewed without `drop` (for `iterative`).

    With engine "trie" (or "prefix") it is a `BatchedLoss` whose `many(drops)` evaluates one
    greedy round's candidates at the cost of their distinct work (`SharedWork`): each candidate
    shares the layers before it with the others. "plain" runs a layer-skip view per drop set;
    both give the same numbers."""
    from layercut import surgery
    from layercut.data.encode import encode_batches
    from layercut.evaluation.teacher import token_nll

    batches = list(encode_batches(adapter, samples, batch_size=batch_size, max_length=max_length))

    def loss(drop: list[int]) -> float:
        with surgery.skipped(adapter, drop):
            return token_nll(adapter, batches)["all"]

    if engine == "plain":
        return loss
    try:
        work = SharedWork.for_calibration(adapter, batches, cache_mem=cache_mem, mode=engine)
    except LayercutError:  # a model the engine cannot reproduce: the plain views, same numbers
        return loss

    def many(drops: list[list[int]]) -> list[float]:
        got = {drop: metrics["all"] for drop, metrics, _ in work.run(drops)}
        return [got[tuple(sorted(set(d)))] for d in drops]

    return BatchedLoss(many, work)
