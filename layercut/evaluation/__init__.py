"""Evaluation: tasks are data, answer extractors are small pure functions.

    from layercut.evaluation import prepare, evaluate, TASKS
    prepared = prepare("gsm8k", adapter, limit=30)     # documents, prompts, tokens: once
    with surgery.skipped(adapter, [12, 13]):
        evaluate(adapter, prepared)                    # {"accuracy": 0.03, "n": 30.0}

- `tasks/`: one YAML file per task, loaded into `TaskSpec`s (`TASKS`, `get_task`, `load_task`);
  a user adds a task with one YAML file pointing at a JSONL file.
- `sources`: the documents of the built-in tasks, all offline and held out from calibration.
- `extract`: registered answer extractors (`EXTRACTORS`) and `is_equiv` for math answers.
- `runner`: `prepare` (render and encode once), `evaluate` (dispatch by kind), `HIGHER_IS_BETTER`.
- `batching`: the encoded rows (`Context`, `Item`, `Prepared`) and the batched model calls
  (`collate`, `logits_at`: the LM head at scored positions only) that the two below share.
- `teacher`: teacher-forced scoring (choice, nll; `score_continuations`) and `token_nll`
  over calibration batches.
- `generate`: greedy generation with a shared few-shot prefix cache (the generate kind).
- `judge`: an optional OpenAI-compatible judge for generated answers.
"""

from layercut.evaluation.batching import Prepared
from layercut.evaluation.extract import EXTRACTORS, is_equiv
from layercut.evaluation.runner import HIGHER_IS_BETTER, TRUNCATION_WARN, evaluate, prepare
from layercut.evaluation.tasks import TASKS, TaskSpec, get_task, load_task
from layercut.evaluation.teacher import score_continuations, token_nll

__all__ = [
    "EXTRACTORS",
    "HIGHER_IS_BETTER",
    "TASKS",
    "TRUNCATION_WARN",
    "Prepared",
    "TaskSpec",
    "evaluate",
    "get_task",
    "is_equiv",
    "load_task",
    "prepare",
    "score_continuations",
    "token_nll",
]
