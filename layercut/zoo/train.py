"""The recipe that trained tiny-llava (`layercut zoo train tiny-llava`), seeded, for 2 CPU cores.

1. stage 1, no language model: each picture's 16 projected tokens are pulled towards SmolLM2's
   input embeddings of its caption words (the bar values, the count, the colour and shape, ...),
   by cross-entropy over the caption vocabulary plus a small regression term, and a linear label
   head per task on the mean token (discarded afterwards) asks for the answer outright. Cheap, and
   it hands stage 2 image tokens that already "say" the answers in the language model's own
   embedding space; `stage1_readout` measures per task how well they do, before any LM pass.
2. stage 2: the vision tower is frozen; projector and LoRA are trained through the whole model,
   loss on the answer tokens (+ end of turn) of chat-formatted questions of all ten tasks.
   (Training the tower here too, at half the LoRA rate, undid stage 1: the shipped model of
   2026-11-25 read no counts or charts.) With probability `layerdrop` a step skips 1 or 2 random
   decoder layers (never the first or last): LayerDrop-style training, so the model tolerates
   pruning. This makes the pruning experiment milder than on a model trained without it; the
   model card says so. `tiny-llava-nodrop` (RECIPES) is that model: the skips are still drawn,
   so its data stream is tiny-llava's step for step, but no layer is skipped.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from layercut.data import vision
from layercut.zoo.gates import evaluate_tasks
from layercut.zoo.tinyvlm import (
    IMAGE_TOKEN,
    IMAGE_TOKENS,
    LORA_ALPHA,
    LORA_RANK,
    base_model,
    build,
    processor,
)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# --- LoRA (a few lines, merged at build time) ----------------------------------------------


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, gen: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def add_lora(model: Any, seed: int) -> dict[str, LoRALinear]:
    gen = torch.Generator().manual_seed(seed)
    lm = model.model.language_model
    added = {}
    for name, module in list(lm.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in LORA_TARGETS and isinstance(child, nn.Linear):
                wrapped = LoRALinear(child, LORA_RANK, LORA_ALPHA, gen)
                setattr(module, child_name, wrapped)
                added[f"model.language_model.{name}.{child_name}"] = wrapped
    return added


# --- training ------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    seed: int = 0
    stage1_steps: int = 8000  # vision tower + projector only, against caption embeddings
    stage1_batch: int = 32
    stage1_lr: float = 2e-3
    stage1_warmup: int = 100  # linear lr warm-up (without it the loss jumped 7.5 -> 25 at first)
    stage1_heads: float = 1.0  # weight of the per-task label heads on the mean image token
    stage2_steps: int = 800  # projector and LoRA through the whole model; the tower is frozen
    stage2_batch: int = 8
    stage2_lr: float = 1.5e-3  # LoRA; the projector gets half
    stage2_vision_lr: float = 0.0  # share of stage2_lr for the vision tower (0: frozen)
    layerdrop: float = 0.3  # probability that a stage-2 step skips 1-2 random middle layers
    # False (tiny-llava-nodrop): the same skips are drawn, so the data stream is the same, but
    # every step runs all layers: the control for what LayerDrop training does to pruning
    layerdrop_skip: bool = True
    eval_limit: int = 20  # held-out questions per task printed at the end
    log_every: int = 50
    threads: int = 1  # on a busy 2-core machine one thread ran twice as fast as two


RECIPES = {"tiny-llava": TrainConfig(), "tiny-llava-nodrop": TrainConfig(layerdrop_skip=False)}


def _caption_vocab(tok: Any) -> dict[str, int]:
    """First token of every word a caption can hold."""
    words = {w for ws in vision.CHOICES.values() for w in ws}
    words |= set(vision.PALETTE) | set(vision.SHAPES) | {"shape"}
    return {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in sorted(words)}


class _Encoder:
    """Questions -> model inputs, the same tokens the evaluation runner builds (checked in tests)."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.tok = proc.tokenizer
        self.eot = self.tok("<|im_end|>", add_special_tokens=False)["input_ids"]
        self._prompts: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompts:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": question}]}]
            text = self.proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * IMAGE_TOKENS)
            self._prompts[question] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._prompts[question]

    def pixels(self, images: list) -> torch.Tensor:
        return self.proc.image_processor(images, return_tensors="pt")["pixel_values"]

    def batch(self, qas: list[vision.VisualQA]) -> dict[str, torch.Tensor]:
        rows, starts = [], []
        for qa in qas:
            p = self.prompt_ids(qa.question)
            a = self.tok(qa.answer, add_special_tokens=False)["input_ids"] + self.eot
            rows.append(p + a)
            starts.append(len(p))
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for r, (row, s) in enumerate(zip(rows, starts)):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            target[r, s:len(row)] = True
        return {"input_ids": ids, "attention_mask": mask, "target": target,
                "pixel_values": self.pixels([qa.image for qa in qas])}


def _draw(rng: random.Random, n: int) -> list[vision.VisualQA]:
    tasks = list(vision.TASK_FAMILY)
    return [vision.make(rng.choice(tasks), rng, "train") for _ in range(n)]


def _image_tokens(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    out = model.model.get_image_features(pixel_values=pixel_values)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def answer_loss(model: Any, batch: dict[str, torch.Tensor], skip: list[int] = ()) -> torch.Tensor:
    """Cross-entropy of the answer tokens; the LM head only at those positions; `skip` layers
    left out of this forward (LayerDrop)."""
    lm = model.model.language_model
    layers = lm.layers
    if skip:
        lm.layers = nn.ModuleList([m for i, m in enumerate(layers) if i not in set(skip)])
    try:
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"], use_cache=False).last_hidden_state
    finally:
        lm.layers = layers
    tgt = batch["target"][:, 1:]
    rows, cols = tgt.nonzero(as_tuple=True)
    logits = model.lm_head(hidden[rows, cols])
    return F.cross_entropy(logits, batch["input_ids"][:, 1:][rows, cols])


def train(out: str | Path, cfg: TrainConfig = TrainConfig(), log: Callable[[str], None] = print,
          progress: Any = None, evaluate: bool = True, name: str = "tiny-llava") -> dict[str, Any]:
    """Train tiny-llava into `out` (NAME.safetensors, train_log.json, model/); returns the log.
    `progress`: a rich Progress (or None)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    proc = processor()
    enc = _Encoder(proc)
    model = base_model(seed=cfg.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    visual = [p for n, p in model.named_parameters()
              if n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    for p in visual:
        p.requires_grad_(True)
    model.train()
    rng = random.Random(f"layercut/tiny-llava/train/{cfg.seed}")
    history: dict[str, list[float]] = {"stage1": [], "stage1_acc": [], "stage2": []}
    log(f"training {name}: {json.dumps(cfg.__dict__)}")

    # stage 1: image tokens towards the caption words' input embeddings, plus label heads
    emb = model.model.language_model.embed_tokens.weight.detach()
    vocab = _caption_vocab(enc.tok)
    ids = torch.tensor(sorted(set(vocab.values())))
    col = {int(t): i for i, t in enumerate(ids)}
    mse_scale = float(emb[ids].pow(2).mean())
    heads = _label_heads(emb.shape[1])
    opt = torch.optim.AdamW(visual + list(heads.parameters()), lr=cfg.stage1_lr, weight_decay=0.0)
    warm = max(1, min(cfg.stage1_warmup, cfg.stage1_steps // 10))
    task = progress.add_task("stage 1 (vision)", total=cfg.stage1_steps) if progress else None
    for step in range(cfg.stage1_steps):
        qas = _draw(rng, cfg.stage1_batch)
        target = torch.tensor([[vocab[qa.caption[i % len(qa.caption)]] for i in range(IMAGE_TOKENS)]
                               for qa in qas])
        feats = _image_tokens(model, enc.pixels([qa.image for qa in qas]))
        logits = feats @ emb[ids].t()
        ce = F.cross_entropy(logits.reshape(-1, len(ids)),
                             torch.tensor([col[int(t)] for t in target.flatten()]))
        loss = ce + F.mse_loss(feats, emb[target]) / mse_scale
        if cfg.stage1_heads:
            loss = loss + cfg.stage1_heads * _head_loss(heads, feats.mean(1), qas)
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = cfg.stage1_lr * min(1.0, (step + 1) / warm) * _cosine(step, cfg.stage1_steps)
        opt.step()
        history["stage1"].append(loss.item())
        acc = float((logits.argmax(-1).flatten() == torch.tensor(
            [col[int(t)] for t in target.flatten()])).float().mean())
        history["stage1_acc"].append(acc)
        if (step + 1) % cfg.log_every == 0:
            log(f"stage 1 step {step + 1}: loss {_mean(history['stage1'][-cfg.log_every:]):.3f}, "
                f"caption-word accuracy {_mean(history['stage1_acc'][-cfg.log_every:]):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
        if progress:
            progress.update(task, advance=1, description=f"stage 1 (vision) loss {loss:.3f}")
    t1 = time.perf_counter()
    log(f"stage 1: {cfg.stage1_steps} steps x {cfg.stage1_batch} pictures in {t1 - t0:.0f} s, "
        f"loss {_mean(history['stage1'][:20]):.3f} -> {_mean(history['stage1'][-20:]):.3f}")
    readout = stage1_readout(model, enc, heads if cfg.stage1_heads else None,
                             n=max(2 * cfg.eval_limit, 2))
    log("stage 1 readout on calib pictures (answer from the image tokens' caption words / from "
        "the label head): " + ", ".join(f"{t} {r['tokens']:.2f}/{r.get('head', float('nan')):.2f}"
                                        for t, r in readout.items()))
    del heads

    # stage 2: projector and LoRA through the language model (the tower keeps what stage 1 taught
    # it unless stage2_vision_lr > 0)
    lora = add_lora(model, cfg.seed)
    lora_params = [p for m in lora.values() for p in (m.lora_A, m.lora_B)]
    tower = [p for n, p in model.named_parameters() if n.startswith("model.vision_tower")]
    projector = [p for n, p in model.named_parameters()
                 if n.startswith("model.multi_modal_projector")]
    groups = [{"params": projector, "lr": cfg.stage2_lr / 2},
              {"params": lora_params, "lr": cfg.stage2_lr}]
    if cfg.stage2_vision_lr > 0:
        groups.append({"params": tower, "lr": cfg.stage2_lr * cfg.stage2_vision_lr})
    else:
        for p in tower:
            p.requires_grad_(False)
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lr = [g["lr"] for g in opt.param_groups]
    L = len(model.model.language_model.layers)
    task = progress.add_task("stage 2 (joint)", total=cfg.stage2_steps) if progress else None
    for step in range(cfg.stage2_steps):
        batch = enc.batch(_draw(rng, cfg.stage2_batch))
        skip = rng.sample(range(1, L - 1), rng.randint(1, 2)) if rng.random() < cfg.layerdrop else []
        loss = answer_loss(model, batch, skip if cfg.layerdrop_skip else [])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * min(1.0, (step + 1) / 20) * _cosine(step, cfg.stage2_steps)
        opt.step()
        history["stage2"].append(loss.item())
        if (step + 1) % cfg.log_every == 0:
            log(f"stage 2 step {step + 1}: answer loss {_mean(history['stage2'][-cfg.log_every:]):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
        if progress:
            progress.update(task, advance=1, description=f"stage 2 (joint) loss {loss:.3f}")
    t2 = time.perf_counter()
    log(f"stage 2: {cfg.stage2_steps} steps x {cfg.stage2_batch} questions in {t2 - t1:.0f} s, "
        f"loss {_mean(history['stage2'][:20]):.3f} -> {_mean(history['stage2'][-20:]):.3f}")

    state = {n: p.detach().to(torch.float16).contiguous() for n, p in model.named_parameters()
             if n.startswith(("model.vision_tower", "model.multi_modal_projector"))}
    for module, m in lora.items():
        state[f"{module}.lora_A"] = m.lora_A.detach().to(torch.float16).contiguous()
        state[f"{module}.lora_B"] = m.lora_B.detach().to(torch.float16).contiguous()
    meta = {"lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "config": cfg.__dict__}
    weights = out / f"{name}.safetensors"
    save_file(state, str(weights), metadata={"layercut": json.dumps(meta)})
    result: dict[str, Any] = {"config": cfg.__dict__, "seconds_stage1": t1 - t0,
                              "seconds_stage2": t2 - t1, "stage1_readout": readout, "loss": history}
    if evaluate:
        folder = out / "model"
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        build(folder, weights)
        from layercut import models

        adapter = models.load(folder)
        log(f"evaluating {cfg.eval_limit} held-out questions per task, true and shuffled images")
        result["eval"] = evaluate_tasks(adapter, limit=cfg.eval_limit)
    result["seconds"] = time.perf_counter() - t0
    (out / "train_log.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _label_heads(width: int) -> nn.ModuleDict:
    """Stage 1 only: one linear head per task over its answers, on the mean image token."""
    return nn.ModuleDict({t.replace("-", "_"): nn.Linear(width, len(vision.CHOICES[t]))
                          for t in vision.TASK_FAMILY})


def _head_loss(heads: nn.ModuleDict, pooled: torch.Tensor, qas: list[vision.VisualQA]) -> torch.Tensor:
    total = pooled.new_zeros(())
    for t in {qa.task for qa in qas}:
        rows = [i for i, qa in enumerate(qas) if qa.task == t]
        gold = torch.tensor([vision.CHOICES[t].index(qas[i].answer) for i in rows])
        total = total + F.cross_entropy(heads[t.replace("-", "_")](pooled[rows]), gold, reduction="sum")
    return total / len(qas)


def stage1_readout(model: Any, enc: _Encoder, heads: nn.ModuleDict | None = None, n: int = 40,
                   split: str = "calib") -> dict[str, dict[str, float]]:
    """Per task, can the answer be read off the image tokens alone (no language model)?
    "tokens": the answer whose caption word the 16 tokens' mean softmax over the caption
    vocabulary favours among the task's candidates; "head": the stage-1 label head's pick."""
    emb = model.model.language_model.embed_tokens.weight.detach()
    vocab = _caption_vocab(enc.tok)
    ids = torch.tensor(sorted(set(vocab.values())))
    col = {int(t): i for i, t in enumerate(ids)}
    was = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for t in vision.TASK_FAMILY:
            qas = vision.documents(t, split, n)
            gold = torch.tensor([vision.CHOICES[t].index(qa.answer) for qa in qas])
            feats = _image_tokens(model, enc.pixels([qa.image for qa in qas]))
            probs = (feats @ emb[ids].t()).softmax(-1).mean(1)
            cand = [col[vocab[c]] for c in vision.CHOICES[t]]
            res = {"tokens": float((probs[:, cand].argmax(-1) == gold).float().mean())}
            if heads is not None:
                pick = heads[t.replace("-", "_")](feats.mean(1)).argmax(-1)
                res["head"] = float((pick == gold).float().mean())
            out[t] = res
    model.train(was)
    return out


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)
