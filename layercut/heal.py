"""Healing after pruning: a short LoRA fine-tune of the kept decoder layers, merged back in, or
INTERLACE's interleaved fine-tune of a few named layers in full.

    stats = heal(adapter, samples, steps=40, rank=8, lr=5e-4, seed=0)   # in place, merged
    with healed(adapter, samples, steps=40) as stats:                     # undone on exit
        evaluate(adapter, ...)
    heal(adapter, samples, train_layers=sel.train, kept=sel.kept())     # interleaved

LoRA (peft) goes on every linear module inside the decoder layers the model has now, so on a
pruned model or inside a `surgery.skipped` view it trains the kept layers only; embeddings, LM
head, norms and any vision tower stay frozen. The loss is the mean next-token NLL over real text
tokens (padding and image tokens are never targets), the same quantity `token_nll` reports.
Batches are drawn in a seeded order, so a run is reproducible on one machine.

Interleaved healing (`train_layers`, INTERLACE's fine-tune; docs/interlace.md) trains every
parameter of exactly the named kept layers, given by original index, and freezes everything else
(other layers, embeddings, norms, head, vision tower): same data, steps, seeded order and loss.

`heal_checkpoint` is the `layercut heal` command: load a pruned folder, heal on its recipe's
calibration data (or given data), merge, save a normal checkpoint with the card extended, and
check the reload like `layercut prune` does.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layercut.errors import LayercutError
from layercut.extras import require

HEAL_FILE = "layercut_heal.json"


@dataclass
class HealStats:
    """What a heal run did; saved as layercut_heal.json and rendered into the model card."""

    steps: int
    rank: int
    alpha: float
    lr: float
    seed: int
    batch_size: int
    max_length: int
    target_modules: int  # linear modules that got a LoRA adapter (interleaved: layers trained in full)
    trainable_parameters: int  # LoRA parameters trained (merged away afterwards), or the layers' own
    layers: int  # decoder layers healed
    samples: int
    tokens_seen: int  # target tokens over all steps
    loss_first: float  # mean NLL of the first step's batch, before its update
    loss_last: float  # mean NLL of the last step's batch, before its update
    losses: list[float] = field(default_factory=list)  # per step
    calib_nll_before: dict[str, float] = field(default_factory=dict)  # per domain, all samples
    calib_nll_after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    data: str = ""  # what it was healed on
    merged: bool = True
    mode: str = "lora"  # or "interleaved": train_layers fine-tuned in full, rank and alpha 0
    train_layers: list[int] = field(default_factory=list)  # interleaved: original indices

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "HealStats":
        return cls(**json.loads(Path(path).read_text()))


def heal(
    adapter: Any,
    data: Any,
    *,
    steps: int = 40,
    rank: int = 8,
    alpha: float | None = None,
    lr: float = 5e-4,
    seed: int = 0,
    batch_size: int = 4,
    max_length: int = 256,
    measure: bool = True,
    progress: Callable[[int, float], None] | None = None,
    data_name: str = "",
    train_layers: Sequence[int] | None = None,
    kept: Sequence[int] | None = None,
) -> HealStats:
    """LoRA-train the current decoder layers for `steps` steps, merge the adapter, return stats.

    `data` is a list of `Sample`s or of encoded `Batch`es. The model is changed in place (its
    kept layers' weights now include the merged update); inside a `surgery.skipped` view that
    means the layers shared with the full model: use `healed` to undo it. `measure` adds the
    calibration NLL per domain over all of `data` before and after (two extra passes).
    `progress(step, loss)` is called after each step. `train_layers` (original indices) switches
    to interleaved healing: those layers in full, all else frozen, no LoRA; `kept` is the original
    index of each current layer (what `drop_layers`, `skipped` and a recipe give; default: unpruned).
    """
    with _tuner(adapter, rank, alpha, seed, train_layers, kept) as tuner:
        stats = _train(adapter, data, tuner, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                       max_length=max_length, measure=measure, progress=progress, data_name=data_name)
        tuner.merge()
    return stats


@contextlib.contextmanager
def healed(adapter: Any, data: Any, **kwargs: Any) -> Iterator[HealStats]:
    """`heal` without the merge: the model runs with the trained LoRA (or layers) inside the block and
    is restored exactly (bit for bit) on exit. For sweeps that heal each cell of one loaded model."""
    with _tuner(adapter, kwargs.pop("rank", 8), kwargs.pop("alpha", None), kwargs.get("seed", 0),
                kwargs.pop("train_layers", None), kwargs.pop("kept", None)) as tuner:
        stats = _train(adapter, data, tuner, **kwargs)
        stats.merged = False
        yield stats


# --------------------------------------------------------------------------- LoRA plumbing


class _Lora:
    """A peft LoRA injected into the decoder layers; `merge` folds it in, else exit removes it."""

    mode, train_layers = "lora", ()

    def __init__(self, adapter: Any, rank: int, alpha: float | None, seed: int) -> None:
        peft = require("peft", "healing")
        if rank < 1:
            raise LayercutError(f"--rank {rank}: the LoRA rank must be at least 1")
        self.adapter = adapter
        self.model = adapter.model
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else 2 * rank)
        self.targets = _decoder_linears(adapter)
        if not self.targets:
            raise LayercutError("the decoder layers hold no linear modules to heal: nothing to train")
        self.requires_grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.was_training = self.model.training
        torch.manual_seed(seed)  # LoRA A matrices are drawn at injection
        config = peft.LoraConfig(r=rank, lora_alpha=self.alpha, lora_dropout=0.0,
                                 target_modules=self.targets, bias="none")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.filterwarnings("ignore", category=FutureWarning)
            self.peft = peft.get_peft_model(self.model, config)
        self.merged = False

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft.parameters() if p.requires_grad]

    def merge(self) -> None:
        self.peft.merge_and_unload()
        self.merged = True

    def close(self) -> None:
        if not self.merged:
            self.peft.unload()  # drops the LoRA modules; base weights were never touched
        self.model.train(self.was_training)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.requires_grad.get(n, True))
        # get_peft_model leaves a reference on the base model; a later heal must start clean.
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in self.model.__dict__:
                delattr(self.model, attr)


class _Full:
    """Interleaved healing: every parameter of the named current layers trains, all others are
    frozen; `merge` keeps the trained weights, else exit restores them bit for bit."""

    mode, rank, alpha = "interleaved", 0, 0.0

    def __init__(self, adapter: Any, train_layers: Sequence[int], kept: Sequence[int] | None) -> None:
        kept = list(range(adapter.num_layers)) if kept is None else [int(i) for i in kept]
        if len(kept) != adapter.num_layers:
            raise LayercutError(f"kept names {len(kept)} layers but the model has {adapter.num_layers}: "
                                "pass the kept list of this pruning")
        where = {orig: now for now, orig in enumerate(kept)}
        self.train_layers = [int(i) for i in train_layers]
        missing = [i for i in self.train_layers if i not in where]
        if not self.train_layers or missing or len(set(self.train_layers)) < len(self.train_layers):
            raise LayercutError(f"layers to fine-tune {self.train_layers} must be distinct kept layers "
                                f"(kept: {kept}): name kept layers by their original index")
        self.model = adapter.model
        self.layers = [adapter.layers[where[i]] for i in self.train_layers]
        self.targets = [f"layer {i}" for i in self.train_layers]
        self.requires_grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self.was_training = self.model.training
        self.saved = [{k: v.detach().clone() for k, v in layer.state_dict().items()} for layer in self.layers]
        self.model.requires_grad_(False)
        for layer in self.layers:
            layer.requires_grad_(True)
        self.merged = False

    def parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def merge(self) -> None:
        self.merged = True  # trained in place: nothing to fold in

    def close(self) -> None:
        if not self.merged:
            with torch.no_grad():
                for layer, state in zip(self.layers, self.saved):
                    layer.load_state_dict(state)  # copies into the same tensors
        self.model.train(self.was_training)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.requires_grad.get(n, True))


@contextlib.contextmanager
def _tuner(adapter: Any, rank: int, alpha: float | None, seed: int, train_layers: Sequence[int] | None,
           kept: Sequence[int] | None) -> Iterator[_Lora | _Full]:
    """LoRA on every kept layer, or (train_layers given) the interleaved full fine-tune."""
    tuner = _Lora(adapter, rank, alpha, seed) if train_layers is None else _Full(adapter, train_layers, kept)
    try:
        yield tuner
    finally:
        tuner.close()


def _decoder_linears(adapter: Any) -> list[str]:
    """Full names of the nn.Linear modules inside the model's current decoder layers."""
    layers = adapter.layers
    prefix = next((n for n, m in adapter.model.named_modules() if m is layers), None)
    if prefix is None:
        raise LayercutError("cannot find the decoder layers inside the model: this is a layercut bug")
    return [
        f"{prefix}.{i}.{name}"
        for i, layer in enumerate(layers)
        for name, m in layer.named_modules()
        if isinstance(m, nn.Linear)
    ]


# --------------------------------------------------------------------------- training


def _batches(adapter: Any, data: Any, batch_size: int, max_length: int) -> list[Any]:
    from layercut.data import Sample
    from layercut.data.encode import encode_batches

    data = list(data)
    if not data:
        raise LayercutError("no healing data: give at least one sample")
    if isinstance(data[0], Sample):
        return list(encode_batches(adapter, data, batch_size=batch_size, max_length=max_length))
    return data


def _loss(adapter: Any, batch: Any) -> tuple[torch.Tensor, int]:
    """Mean next-token NLL of a batch over real text targets, with a graph (LM head on targets only)."""
    from layercut.evaluation.batching import logits_at

    inputs = adapter.complete_inputs(batch.inputs)
    ids = inputs["input_ids"]
    attn = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    target_ok = attn[:, 1:] & attn[:, :-1] & ~adapter.image_mask(ids)[:, 1:]
    rows, cols = target_ok.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return torch.zeros((), requires_grad=False), 0
    logits, _ = logits_at(adapter, inputs, rows, cols, use_cache=False)
    targets = ids[:, 1:][target_ok].to(logits.device)
    return F.cross_entropy(logits.float(), targets), int(rows.numel())


def _train(adapter: Any, data: Any, tuner: _Lora | _Full, *, steps: int = 40, lr: float = 5e-4,
           seed: int = 0, batch_size: int = 4, max_length: int = 256, measure: bool = True,
           progress: Callable[[int, float], None] | None = None, data_name: str = "") -> HealStats:
    from layercut.evaluation import token_nll

    if steps < 1:
        raise LayercutError(f"--steps {steps}: heal for at least one step")
    if lr <= 0:
        raise LayercutError(f"--lr {lr}: the learning rate must be positive")
    t0 = time.perf_counter()
    batches = _batches(adapter, data, batch_size, max_length)
    model = adapter.model
    before: dict[str, float] = {}
    if measure:
        model.eval()
        with torch.no_grad():
            before = token_nll(adapter, batches)
    params = tuner.parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    model.train()  # dropout is 0 in the families we support; train() only flips flags
    for step in range(steps):
        if not order:
            order = torch.randperm(len(batches), generator=gen).tolist()
        loss, n = _loss(adapter, batches[order.pop()])
        if n:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise LayercutError(
                f"the healing loss became {value} at step {step + 1}: lower --lr or heal in fp32"
            )
        losses.append(value)
        tokens += n
        if progress is not None:
            progress(step + 1, value)
    model.eval()
    after: dict[str, float] = {}
    if measure:
        with torch.no_grad():
            after = token_nll(adapter, batches)
    n_samples = sum(getattr(b, "samples", 0) or b.inputs["input_ids"].shape[0] for b in batches)
    return HealStats(
        steps=steps, rank=tuner.rank, alpha=tuner.alpha, lr=lr, seed=seed, batch_size=batch_size,
        max_length=max_length, target_modules=len(tuner.targets), trainable_parameters=sum(p.numel() for p in params),
        layers=len(tuner.train_layers) or adapter.num_layers, mode=tuner.mode, train_layers=list(tuner.train_layers),
        samples=n_samples, tokens_seen=tokens, loss_first=losses[0], loss_last=losses[-1],
        losses=losses, calib_nll_before=before, calib_nll_after=after,
        seconds=round(time.perf_counter() - t0, 2), data=data_name,
    )


# --------------------------------------------------------------------------- the `heal` command


def default_data(folder: str | Path) -> str | None:
    """The calibration set a pruned folder's recipe says its selection used, if it says one."""
    from layercut.card import RECIPE_FILE

    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        return None
    recipe = json.loads(path.read_text())
    return recipe.get("calibration") or None


def heal_checkpoint(
    model: str,
    out: str | Path,
    *,
    source: str | None = None,
    data: str | None = None,
    steps: int = 40,
    rank: int = 8,
    alpha: float | None = None,
    lr: float = 5e-4,
    seed: int = 0,
    batch_size: int = 4,
    max_length: int = 256,
    dtype: str = "fp32",
    overwrite: bool = False,
    progress: Callable[[int, float], None] | None = None,
    interleaved: bool = False,
    train_layers: Sequence[int] | None = None,
) -> HealStats:
    """Load `model` (a pruned folder, or any folder or hub id), heal it, merge, save to `out` and
    verify the reload. `source` is what the user named (default `model`), as the card says it.
    `interleaved` fine-tunes in full the layers the recipe's selection names (an INTERLACE method);
    `train_layers` names them instead (original indices, mapped through the recipe's kept list)."""
    from layercut import card, models, surgery
    from layercut.data.calibration import calibration
    from layercut.io import atomic_dir, check_out

    out = check_out(out, overwrite)
    source = source if source is not None else str(model)
    data = data or default_data(model)
    if data is None:
        raise LayercutError(
            f"'{source}' records no calibration set: pass --data FILE.jsonl (or builtin:text:N)"
        )
    kept, train_layers = _interleaved(model, source, interleaved, train_layers)
    samples = calibration(data)
    adapter = models.load_model(model, dtype, source=source)
    torch.manual_seed(seed)
    stats = heal(adapter, samples, steps=steps, rank=rank, alpha=alpha, lr=lr, seed=seed,
                 batch_size=batch_size, max_length=max_length, progress=progress, data_name=str(data),
                 train_layers=train_layers, kept=kept)
    inputs = surgery.probe_inputs(adapter)
    src = Path(adapter.path or model)
    recipe_path = src / card.RECIPE_FILE
    with atomic_dir(out, overwrite=overwrite) as tmp:
        surgery.save_model(adapter, tmp)
        surgery.write_config(adapter, tmp)  # the source's config.json, as prune writes it
        surgery.save_processor(adapter, tmp)
        verify = surgery.verify_reload(adapter, tmp, inputs)
        stats.save(tmp / HEAL_FILE)
        if recipe_path.is_file():
            recipe = surgery.Recipe.load(recipe_path)
            recipe.heal = {**asdict(stats), "verify": verify, "source": source}
            recipe.save(tmp / card.RECIPE_FILE)
            (tmp / "README.md").write_text(card.model_card(recipe))
        else:
            (tmp / "README.md").write_text(card.heal_card(source, asdict(stats), verify))
    return stats


def _interleaved(folder: str | Path, source: str, interleaved: bool,
                 train_layers: Sequence[int] | None) -> tuple[list[int] | None, list[int] | None]:
    """(kept, train_layers) for `heal_checkpoint`: from the folder's recipe where it has one."""
    from layercut.card import RECIPE_FILE

    if interleaved and train_layers is not None:
        raise LayercutError("--interleaved takes the layers from the recipe and --train-layers names them: use one")
    path = Path(folder) / RECIPE_FILE
    recipe = json.loads(path.read_text()) if path.is_file() else {}
    if interleaved:
        train_layers = recipe.get("params", {}).get("train")
        if not train_layers:
            raise LayercutError(f"'{source}' was not pruned by an INTERLACE method (its recipe names no layers "
                                "to fine-tune): prune with --method interlace, or pass --train-layers")
    return recipe.get("kept"), (None if train_layers is None else [int(i) for i in train_layers])
