"""The zoo's `tiny-llava`: a small VLM on the real SmolLM2-135M-Instruct, trained here on a CPU.

A standard `LlavaForConditionalGeneration` + `LlavaProcessor`: the language model is SmolLM2 from
the default model cache; the image token is SmolLM2's unused special token `<empty_output>`
(id 16, so no vocabulary change); the vision tower is a SigLIP encoder built from config (hidden
192, 4 layers, 64x64 pictures, patch 16 -> 16 image tokens) and the projector the usual LLaVA MLP.
What was trained (vision tower, projector, a rank-8 LoRA on every linear layer of the language
model) ships as one safetensors file under `layercut/weights/`; `build` merges the LoRA into
SmolLM2's weights and writes a normal HF folder.

The recipe (`train`, run by `layercut zoo train tiny-llava`), seeded, for 2 CPU cores:
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
   model card says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from layercut.data import vision
from layercut.errors import LayercutError

IMAGE_TOKEN = "<empty_output>"  # SmolLM2 special token 16, never produced by its tokenizer
IMAGE_TOKEN_ID = 16
WEIGHTS = Path(__file__).parent / "weights" / "tiny-llava.safetensors"
CARD = Path(__file__).parent / "weights" / "tiny-llava.md"
VISION = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
              image_size=64, patch_size=16, num_channels=3)
IMAGE_TOKENS = (VISION["image_size"] // VISION["patch_size"]) ** 2  # 16 per picture
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK, LORA_ALPHA = 8, 16
# No default system prompt (SmolLM2's would add ~20 tokens to every question); the image goes
# first in the user turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# --- the model -----------------------------------------------------------------------------


def lm_folder() -> str:
    from layercut import zoo

    return zoo.resolve(zoo.DEFAULT_MODEL)


def processor(lm: str | None = None) -> Any:
    from transformers import AutoTokenizer, LlavaProcessor, SiglipImageProcessorPil

    tok = AutoTokenizer.from_pretrained(lm or lm_folder())
    image_processor = SiglipImageProcessorPil(
        size={"height": VISION["image_size"], "width": VISION["image_size"]},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                          patch_size=VISION["patch_size"], vision_feature_select_strategy="full",
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=0)


def base_model(lm: str | None = None, seed: int = 0) -> Any:
    """SmolLM2 inside a LLaVA with a freshly initialised (seeded) vision tower and projector."""
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers import SiglipVisionConfig

    lm = lm or lm_folder()
    text = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    config = LlavaConfig(
        vision_config=SiglipVisionConfig(**VISION), text_config=text.config.to_dict(),
        image_token_index=IMAGE_TOKEN_ID, image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        tie_word_embeddings=bool(getattr(text.config, "tie_word_embeddings", False)))
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    missing = model.model.language_model.load_state_dict(text.model.state_dict())
    if missing.missing_keys or missing.unexpected_keys:  # pragma: no cover
        raise LayercutError(f"SmolLM2 weights did not fit the LLaVA language model: {missing}")
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as in SmolLM2
    model.eval()
    return model


def trained_model(weights: str | Path = WEIGHTS, lm: str | None = None) -> Any:
    """The base model with the trained vision tower, projector and merged LoRA from `weights`."""
    from safetensors.torch import load_file

    weights = Path(weights)
    if not weights.is_file():
        raise LayercutError(f"tiny-llava weights '{weights}' not found: run `layercut zoo train "
                            "tiny-llava --out DIR` or reinstall layercut")
    model = base_model(lm)
    state = load_file(str(weights))
    meta = json.loads(_metadata(weights).get("layercut", "{}"))
    scale = meta.get("lora_alpha", LORA_ALPHA) / meta.get("lora_rank", LORA_RANK)
    modules = dict(model.named_modules())
    direct = {k: v for k, v in state.items() if ".lora_" not in k}
    own = model.state_dict()
    bad = [k for k in direct if k not in own]
    if bad:
        raise LayercutError(f"{weights}: unexpected tensor '{bad[0]}': rebuild the weights file")
    with torch.no_grad():
        for k, v in direct.items():
            own[k].copy_(v.float())
        for k in [k for k in state if k.endswith(".lora_A")]:
            name = k[: -len(".lora_A")]
            a, b = state[k].float(), state[name + ".lora_B"].float()
            modules[name].weight += scale * (b @ a)
    model.eval()
    return model


def build(out: Path, weights: str | Path = WEIGHTS) -> None:
    """`zoo build tiny-llava`: a normal LLaVA folder (model, processor, card) in `out`."""
    model = trained_model(weights)
    model.save_pretrained(out)
    processor().save_pretrained(out)
    if CARD.is_file():
        (out / "README.md").write_text(CARD.read_text(encoding="utf-8"), encoding="utf-8")


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


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
    eval_limit: int = 20  # held-out questions per task printed at the end
    log_every: int = 50
    threads: int = 1  # on a busy 2-core machine one thread ran twice as fast as two


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
          progress: Any = None, evaluate: bool = True) -> dict[str, Any]:
    """Train tiny-llava into `out` (tiny-llava.safetensors, train_log.json, model/); returns the
    log. `progress`: a rich Progress (or None)."""
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
    log(f"training tiny-llava: {json.dumps(cfg.__dict__)}")

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
        loss = answer_loss(model, batch, skip)
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
    for name, m in lora.items():
        state[f"{name}.lora_A"] = m.lora_A.detach().to(torch.float16).contiguous()
        state[f"{name}.lora_B"] = m.lora_B.detach().to(torch.float16).contiguous()
    meta = {"lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA, "config": cfg.__dict__}
    save_file(state, str(out / "tiny-llava.safetensors"), metadata={"layercut": json.dumps(meta)})
    result: dict[str, Any] = {"config": cfg.__dict__, "seconds_stage1": t1 - t0,
                              "seconds_stage2": t2 - t1, "stage1_readout": readout, "loss": history}
    if evaluate:
        folder = out / "model"
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        build(folder, out / "tiny-llava.safetensors")
        from layercut import models

        adapter = models.load(str(folder))
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


# --- evaluation: per task, true vs shuffled images ------------------------------------------


def evaluate_tasks(adapter: Any, limit: int = 40, drop: list[int] | None = None,
                   kinds: tuple[str, ...] = ("choice",), batch_size: int = 8) -> dict[str, Any]:
    """{family: {kind: {"true"|"shuffled": {"all": value, task: value}}}} on the test split.

    `limit` questions per task (families have five tasks each)."""
    from layercut.evaluation import evaluate, prepare
    from layercut.evaluation.tasks import get_task
    from layercut.surgery import skipped

    names = {"choice": "", "nll": "-nll", "generate": "-gen"}
    metric = {"choice": "accuracy", "nll": "nll", "generate": "accuracy"}
    results: dict[str, Any] = {}
    for family, tasks in vision.FAMILIES.items():
        n = limit * len(tasks)
        for kind in kinds:
            for images in ("true", "shuffled"):
                name = family + names[kind] + ("" if images == "true" else ":shuffled")
                prepared = prepare(get_task(name), adapter, limit=n)
                details: list = []
                with skipped(adapter, drop or []):
                    total = evaluate(adapter, prepared, batch_size=batch_size, details=details)
                per = _per_task(details, kind)
                per["all"] = total[metric[kind]]
                results.setdefault(family, {}).setdefault(kind, {})[images] = per
    return results


def _per_task(details: list[dict], kind: str) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for d in details:
        t = d["id"].split("/")[0]
        if kind == "choice":
            v, w = float(d["pick"] == d["gold"]), 1.0
        elif kind == "nll":
            v, w = d["nll"] * d["tokens"], d["tokens"]
        else:
            v, w = float(d["correct"]), 1.0
        s = sums.setdefault(t, [0.0, 0.0])
        s[0] += v
        s[1] += w
    return {t: s[0] / max(s[1], 1e-9) for t, s in sums.items()}


# --- the gates `layercut zoo eval tiny-llava` prints ---------------------------------------

GATE_ACCURACY = 0.6  # choice accuracy per family, true images
GATE_GROUNDING = 0.25  # true - shuffled choice accuracy per family
GATE_PRUNED = 0.7  # with 2 layers dropped by the best method: share of the unpruned accuracy
PRUNE_METHODS = ("math", "general", "mixed", "bi", "block", "last", "uniform", "spacing")


def vision_scores(adapter: Any, n_per_domain: int = 32, scope: str = "all", seed: int = 0) -> Any:
    """Layer scores on the calib split: math-vision as "math", general-vision as "general"."""
    import tempfile

    from layercut import api
    from layercut.data import builtin

    with tempfile.TemporaryDirectory(prefix="layercut-vision-calib-") as tmp:
        samples = builtin.build_samples("vision", n_per_domain, seed, "calib", image_dir=Path(tmp))
        return api.score(adapter, samples, scope=scope, batch_size=8)


def gates(adapter: Any, limit: int = 20, budget: int = 2, kinds: tuple[str, ...] = ("choice",),
          methods: tuple[str, ...] = PRUNE_METHODS, calib_n: int = 32,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Unpruned metrics (true vs shuffled images), the best `budget`-layer drop among `methods`
    (scored on the calib split), its metrics, and the three gates per family."""
    from layercut import api

    t0 = time.perf_counter()
    unpruned = evaluate_tasks(adapter, limit=limit, kinds=kinds)
    log(f"unpruned: {time.perf_counter() - t0:.0f} s")
    scores = vision_scores(adapter, calib_n)
    picks: dict[tuple[int, ...], list[str]] = {}
    for m in methods:
        picks.setdefault(tuple(sorted(api.select(scores, m, budget).drop)), []).append(m)
    tried = []
    for drop, ms in picks.items():
        ev = evaluate_tasks(adapter, limit=limit, drop=list(drop), kinds=("choice",))
        accs = {f: ev[f]["choice"]["true"]["all"] for f in ev}
        tried.append({"drop": list(drop), "methods": ms, "choice": accs,
                      "mean": sum(accs.values()) / len(accs)})
        log(f"drop {list(drop)} ({', '.join(ms)}): " +
            ", ".join(f"{f} {a:.3f}" for f, a in accs.items()) + f" ({time.perf_counter() - t0:.0f} s)")
    best = max(tried, key=lambda r: r["mean"])
    pruned = evaluate_tasks(adapter, limit=limit, drop=best["drop"], kinds=kinds)
    table = []
    for family in vision.FAMILIES:
        t = unpruned[family]["choice"]["true"]["all"]
        s = unpruned[family]["choice"]["shuffled"]["all"]
        p = pruned[family]["choice"]["true"]["all"]
        table += [
            {"family": family, "gate": f"choice accuracy >= {GATE_ACCURACY}", "value": t,
             "threshold": GATE_ACCURACY, "passed": t >= GATE_ACCURACY},
            {"family": family, "gate": f"true - shuffled >= {GATE_GROUNDING}", "value": t - s,
             "threshold": GATE_GROUNDING, "passed": t - s >= GATE_GROUNDING},
            {"family": family, "gate": f"{budget} dropped / unpruned >= {GATE_PRUNED}",
             "value": p / t if t else 0.0, "threshold": GATE_PRUNED,
             "passed": t > 0 and p / t >= GATE_PRUNED},
        ]
    return {"limit_per_task": limit, "budget": budget, "unpruned": unpruned, "pruned": pruned,
            "best": best, "tried": tried, "gates": table, "scores": scores.to_dict(),
            "seconds": time.perf_counter() - t0}
