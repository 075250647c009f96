"""lm-eval (lm-evaluation-harness 0.4.x) on a model already in memory.

    from layercut import api, surgery
    from layercut.bridges.lm_eval_bridge import run_lm_eval

    adapter = api.load_model("smollm2-135m")
    with surgery.skipped(adapter, [3, 7, 9]):  # or surgery.drop_layers(adapter, ...)
        metrics = run_lm_eval(adapter, ["arc_easy"], limit=100)
    # {"arc_easy": {"acc,none": 0.41, "acc_stderr,none": 0.049, ...}}

The model object goes to lm-eval's `HFLM` as is, so a virtually pruned model (a `skipped` view,
or `drop_layers` without saving) is evaluated without writing a checkpoint. The tokenizer object
is always passed too: without it `HFLM` looks the model's name up on the hub. A pruned
checkpoint folder needs no bridge: it is a normal HF folder for `lm-eval --model hf`.

Tasks are lm-eval task names; `include_path` adds a folder of task YAML files (which may read a
local JSON/JSONL file through `dataset_path: json`, so a task can run fully offline).
"""

from __future__ import annotations

import math
from typing import Any

from layercut.data.encode import ensure_pad_token
from layercut.errors import LayercutError


def run_lm_eval(
    adapter: Any,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    include_defaults: bool = True,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval tasks on `adapter.model` as it is now; return {task: {"metric,filter": value}}.

    `include_defaults=False` indexes only `include_path` (lm-eval's own ~15k task files take
    ~5 s to index). `options` go to `lm_eval.simple_evaluate` unchanged (e.g.
    `apply_chat_template=True`, `gen_kwargs`, `bootstrap_iters`). Values are plain floats
    (stderr may be the string "N/A").
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LayercutError(
            "lm-eval is not installed: run `pip install -c constraints.txt -e '.[harness]'`"
        ) from None
    if not tasks:
        raise LayercutError("no lm-eval task given: name at least one task, e.g. arc_easy")
    tokenizer = adapter.tokenizer
    if tokenizer is None:
        raise LayercutError(
            f"model '{adapter.source}' has no tokenizer: lm-eval needs one; save it beside the weights"
        )
    ensure_pad_token(tokenizer)

    lm = HFLM(
        pretrained=adapter.model,
        tokenizer=tokenizer,
        # VLM classes are not in transformers' causal-LM table; their text path is causal all the same.
        backend="causal",
        batch_size=batch_size,
    )
    task_manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    check_tasks(task_manager, tasks, include_path, "lm-eval", "lm-eval ls tasks")
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=task_manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        **options,
    )
    if out is None:  # non-zero rank of a distributed run
        return {}
    return {task: plain_metrics(metrics) for task, metrics in out["results"].items()}


def check_tasks(task_manager: Any, tasks: list[str], include_path: str | None, harness: str, listing: str) -> None:
    """A one-line error for the first task the harness's task manager does not know."""
    unknown = [t for t in tasks if not task_manager.match_tasks([t])]
    if unknown:
        where = f" or in '{include_path}'" if include_path else ""
        raise LayercutError(
            f"{harness} has no task '{unknown[0]}'{where}: check the name (`{listing}`) "
            "or pass the folder holding its YAML as include_path"
        )


def plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric values only (no display alias or task name), numpy scalars as floats, NaN as None."""
    plain = {}
    for key, value in metrics.items():
        if key in ("alias", "name"):
            continue
        if isinstance(value, (int, float)) or hasattr(value, "item"):
            value = float(value)
            if math.isnan(value):
                value = None
        plain[key] = value
    return plain
