"""Evaluation tasks as data: one small YAML file per task, loaded into a `TaskSpec`.

A task names its documents (`source`), how a document becomes a prompt and a gold answer
(templates over the document's fields, Python `str.format` syntax: `{question}`), and how the
model is scored (`kind`, `extractor`, `metric`). Adding a task adds one YAML file, no code:

    name: my-task
    domain: math
    kind: generate                   # generate | choice | nll
    source: my_questions.jsonl       # relative to this file; or a built-in source name
    prompt: "Question: {question}\\nAnswer:"
    target: "{answer}"
    extractor: number
    metric: math_equiv

`get_task("my-task.yaml")` (or `load_task(path)`) reads it; `TASKS` holds the built-in ones from
this folder. Every field is described on `TaskSpec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from layercut.errors import LayercutError

KINDS = ("generate", "choice", "nll")
METRICS = ("exact_match", "math_equiv")  # how a generated answer is compared with the gold one


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "generate" (greedy answer), "choice" (candidate log-likelihood), "nll" (gold text)
    source: str  # a built-in source name (see sources.SOURCES) or a path to a JSONL file
    domain: str = "general"  # which domain the task measures ("math", "general", ...)
    description: str = ""  # one line: what the task is and where its data comes from
    prompt: str = "{question}"  # template over the document's fields
    target: str = "{answer}"  # the gold answer (generate, choice) or the scored text (nll)
    delimiter: str = " "  # between prompt and continuation (choice, nll, few-shot examples)
    # choice: a document field holding a list of candidates, a list of candidates, or a list of
    # candidate groups (the group holding the gold answer is used, e.g. shapes vs colours)
    choices: str | tuple | None = None
    fewshot: int = 0  # examples put before each prompt
    fewshot_source: str | None = None  # where they come from (never the evaluated documents)
    fewshot_target: str | None = None  # their answer template (default: `target`)
    fewshot_separator: str = "\n\n"
    extractor: str = "identity"  # generate: a name in extract.EXTRACTORS
    metric: str = "exact_match"  # generate: exact_match | math_equiv (extract.is_equiv)
    until: tuple[str, ...] = ("\n\n",)  # generate: stop strings (the output is cut at the first)
    max_new_tokens: int = 32  # generate
    limit: int = 50  # documents evaluated by default
    image: bool = False  # documents carry an "image" path, encoded through the processor
    chat: bool = False  # render the prompt as a user turn with the chat template
    # show every question the image of another question of the set (seeded derangement): the
    # control for answers read off the question; `get_task("name:shuffled")` gives this variant
    shuffle_images: bool = False
    path: str = ""  # the YAML file this spec was read from (for relative sources)

    def __post_init__(self) -> None:
        where = f"task '{self.name}'" + (f" ({self.path})" if self.path else "")
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name or ""):
            raise LayercutError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        if self.kind not in KINDS:
            raise LayercutError(f"{where}: kind '{self.kind}' is not one of {', '.join(KINDS)}")
        from layercut.evaluation.extract import EXTRACTORS

        if self.extractor not in EXTRACTORS:
            raise LayercutError(f"{where}: unknown extractor '{self.extractor}': use one of "
                                f"{', '.join(EXTRACTORS)}")
        if self.metric not in METRICS:
            raise LayercutError(f"{where}: unknown metric '{self.metric}': use one of "
                                f"{', '.join(METRICS)}")
        if self.kind == "choice" and not self.choices:
            raise LayercutError(f"{where}: a choice task needs 'choices' (a field name or a list)")
        if isinstance(self.choices, (list, tuple)):
            flat = [c for g in self.choices for c in (g if isinstance(g, (list, tuple)) else [g])]
            bad = [c for c in flat if not isinstance(c, str)]
            if bad:
                raise LayercutError(f"{where}: choice {bad[0]!r} is not a string: quote it in the "
                                    "YAML (yes/no/on/off and numbers need quotes)")
        if self.fewshot and not self.fewshot_source:
            raise LayercutError(f"{where}: fewshot > 0 needs a fewshot_source")
        if self.shuffle_images and not self.image:
            raise LayercutError(f"{where}: shuffle_images needs an image task (image: true)")
        if self.fewshot and self.image:
            raise LayercutError(f"{where}: few-shot examples are text only: set fewshot: 0 for "
                                "an image task")
        for name in ("limit", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LayercutError(f"{where}: {name} must be a positive integer")

    def resolve(self, source: str) -> str:
        """A source as given: a built-in name, or a path made absolute against the YAML's folder."""
        from layercut.evaluation.sources import SHUFFLED, SOURCES

        suffix = SHUFFLED if self.shuffle_images and source == self.source else ""
        if source in SOURCES:
            return source + suffix
        p = Path(source)
        if not p.is_absolute() and self.path:
            p = Path(self.path).parent / p
        return str(p) + suffix


def load_task(path: str | Path) -> TaskSpec:
    """Read one task YAML file; errors name the file and the fix."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LayercutError(f"task file '{path}' not found: check the path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LayercutError(f"task file '{path}' is not valid YAML ({first}): fix the syntax") from None
    if not isinstance(raw, dict):
        raise LayercutError(f"task file '{path}' must hold a mapping of fields (name: ..., kind: ...)")
    known = {f.name for f in fields(TaskSpec)} - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LayercutError(f"task file '{path}': unknown field '{unknown[0]}': use only "
                            f"{', '.join(sorted(known))}")
    missing = [k for k in ("name", "kind", "source") if k not in raw]
    if missing:
        raise LayercutError(f"task file '{path}': missing '{missing[0]}': add it")
    values: dict[str, Any] = dict(raw)
    if isinstance(values.get("until"), str):
        values["until"] = [values["until"]]
    for key in ("until",):
        if key in values:
            values[key] = tuple(values[key])
    if isinstance(values.get("choices"), list):
        values["choices"] = tuple(tuple(g) if isinstance(g, list) else g for g in values["choices"])
    return TaskSpec(**values, path=str(path.absolute()))


def _builtin() -> dict[str, TaskSpec]:
    tasks = {}
    for p in sorted(Path(__file__).parent.glob("*.yaml")):
        spec = load_task(p)
        tasks[spec.name] = spec
    return tasks


TASKS: dict[str, TaskSpec] = _builtin()


SHUFFLED_SUFFIX = ":shuffled"


def get_task(name: str | Path | TaskSpec) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path; "<task>:shuffled" is the task with
    every image swapped for another question's (`shuffle_images`)."""
    if isinstance(name, TaskSpec):
        return name
    if str(name).endswith(SHUFFLED_SUFFIX):
        base = get_task(str(name)[: -len(SHUFFLED_SUFFIX)])
        return replace(base, name=f"{base.name}-shuffled", shuffle_images=True,
                       description=f"{base.description} (images shuffled across questions)")
    if str(name) in TASKS:
        return TASKS[str(name)]
    if str(name).endswith((".yaml", ".yml")) or Path(name).is_file():
        return load_task(name)
    raise LayercutError(f"unknown task '{name}': use one of {', '.join(TASKS)}, a task .yaml file, "
                        "or HARNESS:TASK (HARNESS: lm-eval or lmms-eval)")
