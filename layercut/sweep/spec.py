"""What a sweep is: its spec (saved as sweep.json), and the units of work its cells share."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layercut.errors import LayercutError

SPEC_FILE = "sweep.json"
PROBE_FILE = "probe.json"
HEAL_TAG = "+heal"  # task and domain suffix of healed cells in the results table
ENGINES = ("trie", "prefix", "plain")


@dataclass
class SweepSpec:
    """What to sweep; saved as sweep.json so a sweep can be resumed or reported alone."""

    model: str
    methods: list[str]
    budgets: list[int]
    tasks: list[str]  # layercut's tasks, task YAML files, or HARNESS:TASK[@DOMAIN] (evaluation.harness)
    scores: str | None = None  # scores.json (copied into the sweep folder)
    calib: str | None = None  # for `iterative`
    limit: int | None = None  # examples per task
    protect: str = "default"
    allow: list[str] = field(default_factory=list)  # family guards lifted (Mllama's "cross-attention")
    seed: int = 0
    batch_size: int = 8
    options: dict[str, Any] = field(default_factory=dict)  # alpha, min_gap, domain, hybrid_threshold
    probe: str | None = None  # probe.json (copied into the sweep folder): for `damage` and NAME+guard
    engine: str = "trie"  # teacher-forced tasks: trie | prefix | plain (see engine.py)
    cache_mem: str | None = None  # bound on stored hidden states (e.g. "2GiB"); default half of free RAM
    dtype: str = "fp32"  # fp32 | bf16 | fp16
    device_map: str | None = None  # accelerate device map: auto | balanced | FILE.json
    heal_steps: int = 0  # also evaluate every cell after this many LoRA steps on `calib` (0: no)
    include_path: str | None = None  # a folder of harness task YAMLs, for HARNESS:TASK tasks
    max_tokens_per_batch: int | None = None  # generation: prompt + new tokens per batch (not batch_size rows)
    num_layers: int = 0  # filled when planned
    protected: list[int] = field(default_factory=list)  # resolved protected layers, filled when planned

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Unit:
    """One evaluation: a drop set on a task. Many cells may share it."""

    drop: tuple[int, ...]  # sorted original indices
    task: str
    heal: int = 0  # LoRA steps of healing before the evaluation (0: none)

    @property
    def key(self) -> str:
        return f"{self.task}|{','.join(map(str, self.drop))}" + (f"|heal{self.heal}" if self.heal else "")

    @property
    def label(self) -> tuple[str, str]:
        """(task, domain) suffix of the results table: healed cells are series of their own."""
        return (f"{HEAL_TAG}{self.heal}", f"{HEAL_TAG}{self.heal}") if self.heal else ("", "")


def parse_budgets(text: str) -> list[int]:
    """'0:16:2' (start:stop:step, stop inclusive), '0,2,4' or '6'."""
    try:
        if ":" in text:
            parts = [int(x) for x in text.split(":")]
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            if step <= 0:
                raise ValueError
            return list(range(start, stop + 1, step))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LayercutError(f"--budgets '{text}': use start:stop:step (e.g. 0:16:2) or a list like 0,2,4") from None
