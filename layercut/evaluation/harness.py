"""Tasks of the big harnesses (lm-eval, lmms-eval) run on a layercut model as it is now.

A sweep names one `HARNESS:TASK` (e.g. `lm-eval:gsm8k`, `lmms-eval:mathvista_testmini`), with
`@DOMAIN` to say which domain it counts towards (default: "math" when the name says math, gsm,
arithmetic, geometry or chart, else "general"). `prepare` loads the task once: its task manager
(the harness's own tasks and `include_path`, a folder of task YAML files that may read local
JSON/JSONL files), its documents, and a check that it can run here (no LLM judge, no data to
download). `run` evaluates it on the model as it is now (e.g. inside `surgery.skipped`) through
the harness's own `simple_evaluate`, handed the loaded task objects instead of names, so no
cell reloads a dataset; the seeds are the harness's defaults for every cell, so a cell equals a
fresh harness run on the pruned checkpoint.

lm-eval gets the model object through its `HFLM` wrapper (with the tokenizer object: without it
`HFLM` asks the hub); lmms-eval through `lmms_backend.LmmsBackend`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from layercut import extras
from layercut.errors import LayercutError

HARNESSES = ("lm-eval", "lmms-eval")
INSTALL = extras.INSTALL["lm_eval"]  # the [harness] extra holds both harnesses
LISTING = {"lm-eval": "lm-eval ls tasks", "lmms-eval": "lmms-eval tasks list"}
MATHY = re.compile(r"math|gsm|arith|geometr|chart|svamp|asdiv|aime|algebra")
# What a task's scoring code says when it calls an LLM judge (MathVista, MathVerse, ... by default).
JUDGE_MARKERS = ("openai", "api_key", "gpt-4", "gpt-3.5", "chat.completions", "azure")


# The answer limit when a task sets none: lm-eval's `HFLM.max_gen_toks` and `LmmsBackend`'s.
DEFAULT_MAX_NEW = 256
LIMIT_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")  # lm-eval's precedence
VERBOSE_ENV = "LAYERCUT_VERBOSE"  # set (e.g. by `layercut sweep --verbose`): harness output stays on the console


@contextlib.contextmanager
def quiet(log: str | Path | IO[str] | None) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr meanwhile (file descriptors 1
    and 2: the harness's logging and loguru lines, tqdm bars, warnings, and subprocesses such as
    the `git` of its version probe) to `log`, a file appended to or an open file; None, or
    LAYERCUT_VERBOSE set, leaves them on the console. layercut's own consoles write to copies of
    the original descriptors (`cli.ui.pin_consoles`), so its progress stays on the console."""
    if log is None or os.environ.get(VERBOSE_ENV):
        yield
        return
    with contextlib.ExitStack() as stack:
        f = log if hasattr(log, "fileno") else stack.enter_context(open(log, "a", encoding="utf-8"))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def is_harness_task(name: str) -> bool:
    return str(name).split(":", 1)[0] in HARNESSES and ":" in str(name)


@dataclass
class HarnessTask:
    """One harness task, loaded: what a sweep evaluates once per distinct drop set."""

    label: str  # as the sweep names it, e.g. "lm-eval:gsm8k@math"
    harness: str
    name: str  # the harness's task name
    domain: str
    include_path: str | None = None
    manager: Any = None  # the harness's TaskManager
    objects: list[Any] = field(default_factory=list)  # the loaded task (or group) objects


@dataclass
class HarnessResult:
    """A harness run of one task: its metrics (filter "none" dropped from the names), which way
    each is better, the documents scored, the per-sample records the harness logged, and the
    per-document values of the metrics that are means over documents."""

    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    samples: list[dict] = field(default_factory=list)
    docs: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # `per_document`


def parse(label: str) -> tuple[str, str, str]:
    """'lm-eval:gsm8k@math' -> ('lm-eval', 'gsm8k', 'math')."""
    harness, _, rest = str(label).partition(":")
    if harness not in HARNESSES or not rest:
        raise LayercutError(f"'{label}' is not HARNESS:TASK: use one of {', '.join(h + ':TASK' for h in HARNESSES)}")
    name, _, domain = rest.partition("@")
    if not name:
        raise LayercutError(f"'{label}' names no task after '{harness}:': write e.g. {harness}:gsm8k")
    return harness, name, domain or ("math" if MATHY.search(name.lower()) else "general")


def prepare(label: str, include_path: str | None = None, include_defaults: bool = True) -> HarnessTask:
    """Load a harness task once (task manager, task objects, documents) and check it can run."""
    harness, name, domain = parse(label)
    manager, objects = load(harness, [name], include_path, include_defaults)
    leaves = _leaves(objects)
    if harness == "lmms-eval" and len(leaves) > 1:  # its evaluator gets tasks, so no group aggregate
        subtasks = ", ".join(_task_name(t) for t in leaves[:6]) + (", ..." if len(leaves) > 6 else "")
        raise LayercutError(f"lmms-eval '{name}' is a group of {len(leaves)} tasks ({subtasks}): name each "
                            f"subtask as its own sweep task, e.g. lmms-eval:{_task_name(leaves[0])}")
    return HarnessTask(label, harness, name, domain, include_path, manager, objects)


def load(harness: str, names: list[str], include_path: str | None = None,
         include_defaults: bool = True) -> tuple[Any, list[Any]]:
    """(task manager, loaded task objects) for task names of a harness; one-line errors for a
    harness that is not installed, an unknown task (with the close names), a task that needs an
    LLM judge, and one whose documents cannot be read here."""
    if not names:
        raise LayercutError(f"no {harness} task given: name at least one task")
    manager = _manager(harness, include_path, False) if include_path else None
    if manager is None or (include_defaults and not all(manager.match_tasks([n]) for n in names)):
        # Indexing the harness's own tasks (~15k YAML files, ~4 s) only when include_path lacks one.
        manager = _manager(harness, include_path, include_defaults)
    for name in names:
        if not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, list(manager.all_tasks), n=5, cutoff=0.6)
            where = f" or in '{include_path}'" if include_path else ""
            hint = f" (close: {', '.join(close)})" if close else ""
            raise LayercutError(
                f"{harness} has no task '{name}'{where}{hint}: check the name (`{LISTING[harness]}`) "
                "or pass the folder holding its YAML as include_path"
            )
    try:
        objects = _load_objects(harness, manager, names)
    except LayercutError:
        raise
    except Exception as exc:  # noqa: BLE001 (datasets raises many types for a missing download)
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise LayercutError(
            f"{harness} task(s) {', '.join(names)}: the documents cannot be read here "
            f"({exc.__class__.__name__}: {first}): the task needs its data from the hub; point a task "
            "YAML at a local JSON/JSONL file and pass its folder as include_path"
        ) from None
    for task in _leaves(objects):
        marker = _judge_marker(task)
        if marker:
            raise LayercutError(
                f"{harness} task '{_task_name(task)}' scores with an LLM judge or a network service "
                f"('{marker}' in its scoring): layercut evaluates offline; pick a task with rule-based "
                "scoring or write one (include_path)"
            )
    return manager, objects


def run(adapter: Any, task: HarnessTask | tuple[str, Any, list[Any]], *, limit: int | None = None,
        batch_size: int = 8, log_samples: bool = True, docs: list[int] | None = None,
        **options: Any) -> dict[str, Any]:
    """The harness's `simple_evaluate` output for the loaded task(s) on the model as it is now.

    `task` is a `HarnessTask` or (harness, manager, objects) from `load`; `docs`, only these
    documents (ascending indices into the task's documents; its samples keep those indices as
    doc_id), for one round of an adaptive sweep; `options` go to `simple_evaluate` unchanged."""
    harness, manager, objects = (task.harness, task.manager, task.objects) if isinstance(task, HarnessTask) else task
    if docs is not None:
        leaves = _leaves(objects)
        if len(leaves) != 1:
            raise LayercutError(f"{harness}: a subset of documents needs a single task, not a group of "
                                f"{len(leaves)}: name its subtasks as sweep tasks")
        if harness == "lm-eval":  # its own option: the samples' doc_id stay the task's indices
            options["samples"] = {_task_name(leaves[0]): list(docs)}
        else:
            with _only_docs(leaves[0], docs):
                out = run(adapter, (harness, manager, objects), batch_size=batch_size, log_samples=log_samples,
                          **options)
            for samples in out.get("samples", {}).values():
                for s in samples:
                    s["doc_id"] = docs[int(s["doc_id"])]
            return out
    if harness == "lm-eval":
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        from layercut.data.encode import ensure_pad_token

        tokenizer = adapter.tokenizer
        if tokenizer is None:
            raise LayercutError(f"model '{adapter.source}' has no tokenizer: lm-eval needs one; save it beside the weights")
        ensure_pad_token(tokenizer)
        # VLM classes are not in transformers' causal-LM table; their text path is causal all the same.
        lm = HFLM(pretrained=adapter.model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
        evaluate = lm_eval.simple_evaluate
    else:
        from lmms_eval import evaluator

        from layercut.evaluation.lmms_backend import LmmsBackend

        lm = LmmsBackend(adapter, batch_size=batch_size)
        evaluate = evaluator.simple_evaluate
    out = evaluate(model=lm, tasks=list(objects), task_manager=manager, limit=limit, log_samples=log_samples,
                   **options)
    return out or {}  # None on a non-zero rank of a distributed run


def result(task: HarnessTask, out: dict[str, Any], tokenizer: Any = None) -> HarnessResult:
    """The sweep's view of one task's harness output; with the tokenizer, a generation task's
    metrics also hold "truncated" (`truncated_share`)."""
    results = out.get("results", {})
    name = task.name if task.name in results else (next(iter(results)) if len(results) == 1 else None)
    if name is None:
        raise LayercutError(f"{task.harness} returned no single result for '{task.name}' (got: "
                            f"{', '.join(results) or 'none'}): a group without an aggregate; name its subtasks")
    directions = out.get("higher_is_better", {}).get(name, {})
    metrics: dict[str, float] = {}
    higher: dict[str, bool] = {}
    for key, value in results[name].items():
        metric, _, filt = key.partition(",")
        if "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if metric not in directions:
            continue
        label = metric if filt in ("", "none") else key
        metrics[label] = float(value)
        higher[label] = bool(directions[metric])
    n = out.get("n-samples", {}).get(name, {})
    metrics["n"] = float(n.get("effective", n.get("original", 0)) if isinstance(n, dict) else 0)
    samples = [s for t in out.get("samples", {}).values() for s in t]
    share = truncated_share(samples, tokenizer) if tokenizer is not None else None
    if share is not None:
        metrics["truncated"] = share
    return HarnessResult(metrics, higher, samples, per_document(samples, set(higher)))


def doc_count(task: HarnessTask, limit: int | None = None) -> int:
    """How many documents a sweep evaluates of a harness task: all its documents, or `limit`."""
    n = sum(len(leaf.eval_docs) for leaf in _leaves(task.objects))
    return min(n, limit) if limit else n


@contextlib.contextmanager
def _only_docs(task: Any, docs: list[int]) -> Iterator[None]:
    """An lmms-eval task that sees only the documents `docs` meanwhile (it has no option for
    it): its test or validation documents replaced by that subset, on the instance only."""
    names = [n for n in ("test_docs", "validation_docs", "test_docs_no_media", "validation_docs_no_media")
             if hasattr(task, n)]
    originals = {n: getattr(task, n) for n in names}
    for n, fn in originals.items():
        got = fn()
        if got is not None:
            subset = got.select(docs) if hasattr(got, "select") else [got[i] for i in docs]
            setattr(task, n, lambda subset=subset: subset)
    try:
        yield
    finally:
        for n in names:
            task.__dict__.pop(n, None)


def per_document(samples: list[dict], metrics: set[str]) -> dict[str, tuple[list[float], list[float]]]:
    """{metric: (value per document, weights 1)} for the metrics whose per-sample value is a plain
    number (a mean over documents: accuracy, exact match); the others (perplexities, F1 over a
    corpus) aggregate their own way and get none."""
    found: dict[str, dict[int, float]] = {}
    for s in samples:
        filt = s.get("filter", "none")
        # lm-eval lists a sample's metrics; lmms-eval only stores them under their names
        for m in s.get("metrics") or {label.partition(",")[0] for label in metrics}:
            label = m if filt in ("", "none") else f"{m},{filt}"
            value = s.get(m)
            if label in metrics and isinstance(value, (int, float)):  # bools count as 0 / 1
                found.setdefault(label, {})[int(s["doc_id"])] = float(value)
    return {m: ([v for _, v in sorted(by_doc.items())], [1.0] * len(by_doc)) for m, by_doc in found.items()}


def truncated_share(samples: list[dict], tokenizer: Any, default: int = DEFAULT_MAX_NEW) -> float | None:
    """The share of generated answers that ran to their token limit; None when nothing was generated.

    Harnesses log answers as text, so an answer counts as cut when its re-tokenised length is
    within 2 % (at least 2 tokens) of the limit its request asked for: one that met a stop
    sequence or EOS ends before it and falls short, while decoding and re-encoding a cut answer
    can merge a token or two."""
    cut = total = 0
    for sample in samples:
        kwargs = next((a for a in _flat(sample.get("arguments", [])) if isinstance(a, dict)), None)
        if kwargs is None:  # a loglikelihood request: (context, continuation)
            continue
        limit = next((int(kwargs[k]) for k in LIMIT_KEYS if kwargs.get(k)), default)
        for text in _flat(sample.get("resps", [])):
            if isinstance(text, str):
                total += 1
                cut += len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= limit - max(2, limit // 50)
    return cut / total if total else None


def task_shares(out: dict[str, Any], tokenizer: Any) -> dict[str, float]:
    """{task: `truncated_share`} of a harness output logged with samples, for generation tasks."""
    shares = {name: truncated_share(samples, tokenizer) for name, samples in out.get("samples", {}).items()}
    return {name: share for name, share in shares.items() if share is not None}


# --------------------------------------------------------------------------- helpers


def _flat(value: Any) -> Iterator[Any]:
    """The leaves of nested lists and tuples (a logged sample's arguments and answers)."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    else:
        yield value


def _manager(harness: str, include_path: str | None, include_defaults: bool) -> Any:
    try:
        if harness == "lm-eval":
            from lm_eval.tasks import TaskManager
        else:
            from lmms_eval.tasks import TaskManager
    except ImportError:
        raise LayercutError(f"{harness} is not installed: run `{INSTALL}`") from None
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _load_objects(harness: str, manager: Any, names: list[str]) -> list[Any]:
    if harness == "lm-eval":
        loaded = manager.load(list(names))
        return [loaded["groups"].get(n) or loaded["tasks"][n] for n in names]
    from lmms_eval.tasks import get_task_dict

    return _leaves(get_task_dict(list(names), manager, "simple"))


def _leaves(objects: Any) -> list[Any]:
    """The task objects under groups and nested dicts, in order."""
    if isinstance(objects, dict):
        return [t for v in objects.values() for t in _leaves(v)]
    if isinstance(objects, (list, tuple)):
        return [t for v in objects for t in _leaves(v)]
    if hasattr(objects, "get_all_tasks"):  # an lm-eval Group
        return list(objects.get_all_tasks())
    return [] if objects is None else [objects]


def _task_name(task: Any) -> str:
    config = getattr(task, "config", None)
    return str(getattr(config, "task", None) or getattr(task, "task_name", "?"))


def _judge_marker(task: Any) -> str | None:
    """The first judge marker in a task's scoring code or config, if any."""
    config = getattr(task, "config", None)
    texts = [repr(getattr(config, "metric_list", "")), repr(getattr(config, "metadata", "")),
             repr(getattr(config, "lmms_eval_specific_kwargs", ""))]
    fn = getattr(config, "process_results", None)
    if callable(fn):
        try:
            texts.append(inspect.getsource(inspect.getmodule(fn) or fn))
        except (OSError, TypeError):
            pass
    text = "\n".join(texts).lower()
    return next((m for m in JUDGE_MARKERS if m in text), None)
