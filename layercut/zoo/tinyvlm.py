"""The zoo's `tiny-llava`: a small VLM on the real SmolLM2-135M-Instruct, trained here on a CPU.

A standard `LlavaForConditionalGeneration` + `LlavaProcessor`: the language model is SmolLM2 from
the default model cache; the image token is SmolLM2's unused special token `<empty_output>`
(id 16, so no vocabulary change); the vision tower is a SigLIP encoder built from config (hidden
192, 4 layers, 64x64 pictures, patch 16 -> 16 image tokens) and the projector the usual LLaVA MLP.
What was trained (vision tower, projector, a rank-8 LoRA on every linear layer of the language
model) ships as one safetensors file under `layercut/weights/`; `build` merges the LoRA into
SmolLM2's weights and writes a normal HF folder. The recipe that made the file is
`layercut.zoo.train`; the held-out checks are `layercut.zoo.gates`.

`tiny-llava-nodrop` is the control: the same recipe, seed, data and steps with LayerDrop off, so
a pruning experiment on it is not softened by training that already skipped layers.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch

from layercut.errors import LayercutError
from layercut.zoo import smollm2
from layercut.zoo.cache import ZooEntry

IMAGE_TOKEN = "<empty_output>"  # SmolLM2 special token 16, never produced by its tokenizer
IMAGE_TOKEN_ID = 16
WEIGHTS_DIR = Path(__file__).parent.parent / "weights"
WEIGHTS = WEIGHTS_DIR / "tiny-llava.safetensors"
CARD = WEIGHTS_DIR / "tiny-llava.md"
NODROP = "tiny-llava-nodrop"  # trained without LayerDrop (layercut.zoo.train.RECIPES)
VISION = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
              image_size=64, patch_size=16, num_channels=3)
IMAGE_TOKENS = (VISION["image_size"] // VISION["patch_size"]) ** 2  # 16 per picture
LORA_RANK, LORA_ALPHA = 8, 16  # of the LoRA the trainer adds (layercut.zoo.train)
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
    return smollm2.folder()


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
    from transformers import (
        AutoModelForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

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


def build(out: Path, weights: str | Path = WEIGHTS, card: Path = CARD) -> None:
    """`zoo build tiny-llava`: a normal LLaVA folder (model, processor, card) in `out`."""
    model = trained_model(weights)
    model.save_pretrained(out)
    processor().save_pretrained(out)
    if card.is_file():
        (out / "README.md").write_text(card.read_text(encoding="utf-8"), encoding="utf-8")


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def source(weights: Path = WEIGHTS) -> str:
    """What a build is made from: the committed weights' digest and the SmolLM2 package."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "missing"
    return f"{weights.name} {digest} on {smollm2.source()}"


def weights_of(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def _entry(name: str, description: str) -> ZooEntry:
    weights, card = weights_of(name), WEIGHTS_DIR / f"{name}.md"
    return ZooEntry(name, description, partial(build, weights=weights, card=card),
                    partial(source, weights))


ENTRY = _entry("tiny-llava", "LLaVA on SmolLM2-135M-Instruct with a 4-layer SigLIP tower, trained "
               "here on 64 px counting, charts, easy-VQA, position and size "
               "(layercut/weights/tiny-llava.md)")
NODROP_ENTRY = _entry(NODROP, "tiny-llava's recipe, seed, data and steps with LayerDrop off: the "
                      "control for pruning experiments (layercut/weights/tiny-llava-nodrop.md)")
