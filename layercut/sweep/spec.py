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
HEAL_MODES = ("lora", "interleaved")  # how healed cells heal (`heal.heal`)


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
    heal_steps: int = 0  # also evaluate every cell after this many healing steps on `calib` (0: no)
    heal: str = "lora"  # lora (every kept layer) | interleaved (one layer per drop in full: `interlace.train_layers`)
    heal_lr: float = 5e-4  # healing's learning rate (`heal.heal`'s default; a full-weight update wants less)
    include_path: str | None = None  # a folder of harness task YAMLs, for HARNESS:TASK tasks
    max_tokens_per_batch: int | None = None  # generation: prompt + new tokens per batch (not batch_size rows)
    adaptive: dict[str, Any] | None = None  # documents in rounds (`sweep.adaptive.Rule` fields); None: all at once
    probe_source: str | None = None  # the --probe the user gave (`probe` then points at the copy)
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
    heal: int = 0  # steps of healing before the evaluation (0: none)
    train: tuple[int, ...] = ()  # interleaved healing: these layers (original indices) in full; (): LoRA
    docs: tuple[int, ...] = ()  # an adaptive sweep's round: these documents of the task only (sorted)
    part: int = 0  # which round `docs` is

    @property
    def key(self) -> str:
        return (f"{self.task}|{','.join(map(str, self.drop))}" + (f"|heal{self.heal}" if self.heal else "")
                + (f"|train{','.join(map(str, self.train))}" if self.train else "")
                + (f"|part{self.part}" if self.docs else ""))

    @property
    def whole(self) -> "Unit":
        """The unit over all the task's documents that this round is part of."""
        return Unit(self.drop, self.task, self.heal, self.train)

    @property
    def label(self) -> tuple[str, str]:
        """(task, domain) suffix of the results table: healed cells are series of their own."""
        return (f"{HEAL_TAG}{self.heal}", f"{HEAL_TAG}{self.heal}") if self.heal else ("", "")


# How a sweep runs, not what it measures: these may change on --resume.
HOW = ("engine", "cache_mem", "batch_size", "max_tokens_per_batch", "device_map")
# These may grow on --resume (every old entry kept): the old cells stay valid, only new ones run.
GROWS = {"methods": "--methods", "budgets": "--budgets", "tasks": "--tasks"}
# These must be the same on --resume: each changes what every cell measures.
FIXED = {"model": "--model", "limit": "--limit", "seed": "--seed", "protect": "--protect",
         "allow": "--allow", "calib": "--calib", "dtype": "--dtype", "heal_steps": "--heal-steps",
         "heal": "--heal", "heal_lr": "--heal-lr",
         "include_path": "--include-path", "options": "", "scores": "--scores", "probe": "--probe",
         "adaptive": "--adaptive"}
OPTION_DEFAULTS = {"alpha": 0.5}  # `selection.select`'s: a spec without the option means this (`demo` writes none)
OPTION_FLAGS = {"alpha": "--alpha", "hybrid_threshold": "--hybrid-threshold", "min_gap": "--min-gap",
                "domain": "--domain"}


def resume_spec(saved: SweepSpec, given: SweepSpec, folder: Path) -> tuple[SweepSpec, list[str]]:
    """The spec to continue with when `given` resumes the sweep `saved` in `folder`, and what it adds.

    Every option that changes what a cell measures must be as before (else one line naming the
    option and both values); methods, budgets and tasks may only grow (the new cells are evaluated,
    the old ones kept); engine, cache size, batch size and device map are how, not what: the new
    values are used."""
    def show(v: Any) -> str:
        if isinstance(v, list):
            return ",".join(map(str, v)) or "(none)"
        return "(none)" if v is None else str(v)

    def refuse(flag: str, old: Any, new: Any) -> LayercutError:
        return LayercutError(f"--resume: {flag} {show(new)} differs from the sweep in '{folder}' ({flag} "
                             f"{show(old)}): rerun with {flag} {show(old)}, or start a new sweep in another --out")

    for name, flag in FIXED.items():
        old, new = getattr(saved, name), getattr(given, name)
        if name == "options":
            user = {k: v for k, v in saved.options.items() if k != "hybrid_threshold_found"}
            if saved.options.get("hybrid_threshold_found") is not None:  # found, not given
                user.pop("hybrid_threshold", None)
            for key in sorted(set(user) | set(new)):
                was, now = (o.get(key, OPTION_DEFAULTS.get(key)) for o in (user, new))
                if was != now:
                    raise refuse(OPTION_FLAGS.get(key, f"option {key}"), was, now)
            continue
        if name == "scores":
            if old is None and new is None:
                continue
            if old is None or new is None:
                raise refuse(flag, old, new)
            if not _same_file(folder / "scores.json", new, "scores"):
                raise LayercutError(f"--resume: --scores '{new}' holds other scores than the sweep in '{folder}' "
                                    f"(from '{old}'): rerun with those scores, or start a new sweep in another --out")
            continue
        if name == "probe":
            old = saved.probe_source
            if new is None and old is None:
                continue
            if new is not None and _same_file(folder / PROBE_FILE, new, "probe"):
                continue
            raise LayercutError(f"--resume: --probe {show(new)} differs from the sweep in '{folder}' (its "
                                f"probe: {show(old) if old else 'probed from --calib' if saved.probe else 'none'}): "
                                "rerun with the same probe, or start a new sweep in another --out")
        if name == "calib":
            old, new = _where(old), _where(new)
        if old != new:
            raise refuse(flag, old, new)
    spec = SweepSpec(**asdict(saved))
    for name in HOW:
        setattr(spec, name, getattr(given, name))
    added = []
    for name, flag in GROWS.items():
        old, new = getattr(saved, name), getattr(given, name)
        missing = [x for x in old if x not in new]
        if missing:
            raise LayercutError(f"--resume: {flag} {show(new)} leaves out {show(missing)} of the sweep in "
                                f"'{folder}' ({flag} {show(old)}): resume with all of them (more may be added)")
        more = [x for x in new if x not in old]
        if more:
            setattr(spec, name, list(old) + more)
            added.append(f"{name} {show(more)}")
    return spec, added


def _where(value: str | None) -> str | None:
    """A calibration set as a comparable name: a file by its absolute path, else as given."""
    if value is None:
        return None
    return str(Path(value).absolute()) if Path(value).is_file() else value


def _same_file(copy: Path, given: str | None, kind: str) -> bool:
    """Whether the file `given` holds what the sweep folder's copy holds (both parsed)."""
    if given is None or not copy.is_file():
        return False
    if kind == "scores":
        from layercut.scoring import LayerScores

        return LayerScores.load(given).to_dict() == LayerScores.load(copy).to_dict()
    from layercut.probe import DamageProfile

    return asdict(DamageProfile.load(given)) == asdict(DamageProfile.load(copy))


def parse_budgets(text: str) -> list[int]:
    """'0:16:2' (start:stop:step, stop inclusive), '0,2,4' or '6'."""
    try:
        if ":" in text:
            parts = [int(x) for x in text.split(":")]
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) > 2 else 1
            if step <= 0:
                raise ValueError
            budgets = list(range(start, stop + 1, step))
        else:
            budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LayercutError(f"--budgets '{text}': use start:stop:step (e.g. 0:16:2) or a list like 0,2,4") from None
    if not budgets or min(budgets) < 0:
        raise LayercutError(f"--budgets '{text}': budgets are layer counts of 0 or more, e.g. 0:16:2 or 0,2,4")
    return list(dict.fromkeys(budgets))
