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

    lm-eval's own ~15k task files (~4 s to index) are indexed only when `include_path` lacks a
    task, and never with `include_defaults=False`. `options` go to `lm_eval.simple_evaluate`
    unchanged (e.g. `apply_chat_template=True`, `gen_kwargs`, `bootstrap_iters`). Values are
    plain floats (stderr may be the string "N/A").
    """
    from layercut.evaluation import harness

    loaded = harness.load("lm-eval", list(tasks), include_path, include_defaults)
    out = harness.run(adapter, ("lm-eval", *loaded), limit=limit, batch_size=batch_size, log_samples=True,
                      num_fewshot=num_fewshot, **options)
    shares = harness.task_shares(out, adapter.tokenizer)
    return {task: {**plain_metrics(metrics), **({"truncated": shares[task]} if task in shares else {})}
            for task, metrics in out.get("results", {}).items()}


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
