"""lmms-eval backend `layercut`: any lmms-eval task on a pruned or virtually pruned model.

    lmms-eval --model layercut --model_args pretrained=runs/m/pruned --tasks mme
    lmms-eval --model layercut --model_args pretrained=MODEL,drop=3,7,9 --tasks TASK --include_path DIR
    lmms-eval --model layercut --model_args pretrained=MLLAMA,drop=3,8,allow=cross-attention --tasks TASK

`pretrained` is what `layercut.api.load_model` takes: a folder (e.g. one written by `layercut
prune`), a cached hub id or a built-in name. `drop` removes those decoder layers in memory
(`surgery.drop_layers`) before evaluating; indices are those of the loaded model, and the
family's protected layers stay unless `allow` lifts their guard (Mllama's cross-attention
layers: `allow=cross-attention`). Other model args: `dtype` (fp32, bf16, fp16), `device`
(default cuda when available, else cpu), `batch_size` (generation batch, default 1),
`max_new_tokens` (used when the task sets none, default 256) and `chat_template` (default true:
prompts go through the model's chat template).

lmms-eval 0.7.3 resolves `--model` only through its v2 registry; this class is registered by
the `lmms_eval.models` entry point (`layercut.bridges:lmms_eval_manifest`). What it does with a
request (greedy generation, summed NLL for choices, images only) is `evaluation.lmms_backend`.

`run_lmms_eval(adapter, tasks)` evaluates an adapter already in memory (e.g. a `skipped` view).
"""


from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from layercut.errors import LayercutError
from layercut.evaluation.lmms_backend import LmmsBackend

MODEL_ARGS = ("pretrained", "drop", "allow", "dtype", "device", "batch_size", "max_new_tokens", "chat_template")
# lmms-eval backends usually take torch's names for dtypes
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "auto": "fp32"}


class LayercutLMMS(LmmsBackend):
    """`--model layercut`: a model folder, hub id or built-in name loaded into `LmmsBackend`."""

    def __init__(
        self,
        pretrained: str | None = None,
        drop: Any = None,
        allow: Any = None,
        dtype: str = "fp32",
        device: str | None = None,
        batch_size: Any = 1,
        max_new_tokens: Any = 256,
        chat_template: Any = True,
        adapter: Any = None,
        max_batch_size: Any = None,  # lmms-eval passes it to every backend; unused here
        **unknown: Any,
    ) -> None:
        if unknown:
            raise LayercutError(
                f"unknown --model_args key '{next(iter(unknown))}' for layercut: "
                f"use {', '.join(MODEL_ARGS)}"
            )
        if adapter is None:
            if not pretrained:
                raise LayercutError("--model_args needs pretrained=FOLDER (a model folder, hub id or built-in name)")
            from layercut import api

            adapter = api.load_model(str(pretrained), DTYPE_ALIASES.get(str(dtype), str(dtype)),
                                     allow=str(allow or ""))
            if device is not None or torch.cuda.is_available():
                adapter.model.to(device or "cuda")
        elif allow:
            adapter.allow(str(allow))
        self.dropped = parse_drop(drop)
        if self.dropped:
            from layercut import surgery

            surgery.check_drop(self.dropped, adapter.num_layers, adapter.protected_layers())
            surgery.drop_layers(adapter, self.dropped)
        super().__init__(adapter, batch_size=batch_size, max_new_tokens=max_new_tokens, chat_template=chat_template)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LayercutLMMS:
        """Like lmms-eval's parser, but `drop=3,7,9` keeps its commas (a piece without '=' continues the value)."""
        args: dict[str, str] = {}
        key = None
        for piece in arg_string.split(","):
            if "=" in piece:
                key, value = piece.split("=", 1)
                key = key.strip()
                args[key] = value.strip()
            elif key is not None and piece.strip():
                args[key] += "," + piece.strip()
            elif piece.strip():
                raise LayercutError(f"--model_args piece '{piece}' is not key=value: write pretrained=DIR,drop=3,7")
        # lmms-eval adds the CLI's --batch_size/--device; a value in --model_args wins.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **args})



def run_lmms_eval(
    adapter: Any,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    include_defaults: bool = True,
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """lmms-eval tasks on `adapter.model` as it is now (e.g. inside `surgery.skipped`).

    Returns {task: {"metric,filter": value}}. lmms-eval's own tasks are indexed only when
    `include_path` lacks a task, and never with `include_defaults=False`; `options` go to
    lmms-eval's `simple_evaluate`.
    """
    from layercut.bridges.lm_eval_bridge import plain_metrics
    from layercut.evaluation import harness

    loaded = harness.load("lmms-eval", list(tasks), include_path, include_defaults)
    out = harness.run(adapter, ("lmms-eval", *loaded), limit=limit, batch_size=batch_size, log_samples=True,
                      **options)
    shares = harness.task_shares(out, adapter.tokenizer)
    return {task: {**plain_metrics(metrics), **({"truncated": shares[task]} if task in shares else {})}
            for task, metrics in out.get("results", {}).items()}


def parse_drop(value: Any) -> list[int]:
    """Layer indices from a model arg: 3, "3,7,9", "[3,7,9]", "3;7;9" or "3 7 9"."""
    if value is None or value == "":
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [int(v) for v in value]
    text = str(value).strip().strip("\"'[]()")
    pieces = text.replace(";", ",").replace(" ", ",").split(",")
    try:
        return [int(p) for p in pieces if p.strip()]
    except ValueError:
        raise LayercutError(f"drop='{value}': give layer indices like drop=3,7,9") from None


