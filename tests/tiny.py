"""Tiny, seeded, randomly initialised models of every supported family, plus ready-to-forward inputs.

Test-support module (not a test file). Models are built from the real config classes and loaded with
the same Auto classes layercut uses, so every family-specific code path runs:

- Qwen2, Qwen2-VL, Qwen2.5-VL and InternVL's Qwen2 text use sliding-window attention on the upper
  layers (`max_window_layers` in the middle), so `layer_types` mix sliding and full attention;
- Gemma3 (text and VLM) mixes "sliding_attention" and "full_attention" layers with a window of 4;
- Mistral has a sliding window of 4; every sequence is longer than the window;
- Qwen3 and Qwen3-VL have `head_dim != hidden_size // num_attention_heads`; Qwen3-VL has three
  deepstack injection points (decoder layers 0, 1, 2);
- Qwen3 and Gemma3 tie their word embeddings, the others do not;
- Qwen-VL (and GLM-4V, Qwen3-VL-MoE) images are a non-square 4 x 6 patch grid (6 merged image
  tokens); SmolVLM uses pixel shuffle 4, Idefics3 2; LLaVA gets 9 image tokens, the other ViT
  families 4;
- LLaVA-NeXT, LLaVA-OneVision, Mistral3, Mllama, Qwen3-VL-MoE, GLM-4V and Aya Vision
  (`MORE_VLM_IDS`) are built by `tests/tiny_vlm.py`, whose docstring says what is special in each:
  anyres tiles, Pixtral rows, Mllama's cross-attention layers, MoE layers, Aya's tiles.

Generation never emits PAD, BOS or image-structure tokens (`generation_config.suppress_tokens`), so
a generated sequence can be fed back with the same pixel values.

All parameters are re-initialised with a large standard deviation (norms are left at their
identity init): with the default std of 0.02 tiny models emit the same token forever and token
comparisons pass by luck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

TEXT_IDS: list[str] = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
# Built by tests/tiny_vlm.py.
MORE_VLM_IDS: list[str] = [
    "llava_next", "llava_onevision", "mistral3", "mllama", "qwen3_vl_moe", "glm4v", "aya_vision",
]
VISION_IDS: list[str] = [
    "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "smolvlm", "gemma3", "internvl",
    *MORE_VLM_IDS,
]
FAMILY_IDS: list[str] = TEXT_IDS + VISION_IDS
# Fed flattened patches with `image_grid_thw`; `mm_token_type_ids` mark the image tokens.
THW_IDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v")
# Families whose text decoder has sliding-window layers in these tiny models.
SLIDING_IDS: list[str] = [
    "mistral", "qwen2", "gemma3_text", "qwen2_vl", "qwen2_5_vl", "gemma3", "internvl", "aya_vision",
]

# Shared token layout. Text ids are drawn from [TEXT_LO, VOCAB - 8): every special id lies outside.
VOCAB = 384
PAD, BOS, EOS = 0, 1, 2
TEXT_LO = 8
IMAGE = VOCAB - 1
VIDEO = VOCAB - 2
VISION_START = VOCAB - 3  # Qwen-VL <|vision_start|>, Gemma3 <start_of_image>
VISION_END = VOCAB - 4  # Qwen-VL <|vision_end|>, Gemma3 <end_of_image>
TEXT_HI = VOCAB - 8

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
WINDOW = 4  # sliding window: every sequence is longer than this
# Square images for the ViT-style towers: (image_size, patch_size) per family.
VIT_IMAGE = {
    "llava": (24, 8),  # 3 x 3 patches (+ CLS, dropped) -> 9 image tokens
    "idefics3": (32, 8),  # 4 x 4 patches, pixel shuffle 2 -> 4 image tokens
    "smolvlm": (32, 4),  # 8 x 8 patches, pixel shuffle 4 -> 4 image tokens
    "gemma3": (32, 8),  # 4 x 4 patches, average-pooled to mm_tokens_per_image = 4
    "internvl": (32, 8),  # 4 x 4 patches (+ CLS, dropped), pixel shuffle 0.5 -> 4 image tokens
}
QWEN_PATCH = 4
QWEN_GRID = (1, 4, 6)  # (t, h, w) in patches -> 24 patches, 6 merged tokens with merge size 2

WEIGHT_STD = 0.3  # Linear / Embedding / Conv weights and other non-norm parameters
BIAS_STD = 0.1
# Gemma multiplies its (tied) embeddings by sqrt(hidden_size) = 8: with a large embedding std the
# current token dominates the residual stream and the model copies its last input token forever.
GEMMA_EMBED_STD = 0.02


def _common_text(num_layers: int, **extra: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=num_layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    kw.update(extra)
    return kw


def _qwen2_sliding(num_layers: int, window: int) -> dict[str, Any]:
    # Layers >= max_window_layers use sliding attention: the lower half full, the upper half sliding.
    return dict(use_sliding_window=True, sliding_window=window, max_window_layers=num_layers // 2)


def _gemma3_layer_types(num_layers: int) -> list[str]:
    # Two sliding layers then one full one (real Gemma3: five then one), so any run of layers mixes.
    return ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(num_layers)]


def _gemma3_text_config(num_layers: int, window: int) -> transformers.Gemma3TextConfig:
    return transformers.Gemma3TextConfig(
        **_common_text(
            num_layers,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=window,
            layer_types=_gemma3_layer_types(num_layers),
            tie_word_embeddings=True,
        )
    )


def _mrope(section: list[int]) -> dict[str, Any]:
    # sum(section) == head_dim // 2 (temporal, height, width frequency bands)
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(section)}


def _vit(family_id: str) -> dict[str, Any]:
    image_size, patch_size = VIT_IMAGE[family_id]
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _vlm() -> Any:
    """tests/tiny_vlm.py, imported when first needed: it imports this module's token layout."""
    from tests import tiny_vlm

    return tiny_vlm


def tiny_config(family_id: str, num_layers: int = 6, window: int = WINDOW) -> Any:
    """The config `make_tiny` builds; `window` sets every sliding window (e.g. large to turn it off)."""
    T = transformers
    n = num_layers
    if family_id in MORE_VLM_IDS:
        return _vlm().config(family_id, n, window)
    if family_id == "llama":
        return T.LlamaConfig(**_common_text(n, tie_word_embeddings=False))
    if family_id == "mistral":
        return T.MistralConfig(**_common_text(n, sliding_window=window, tie_word_embeddings=False))
    if family_id == "qwen2":
        return T.Qwen2Config(**_common_text(n, **_qwen2_sliding(n, window), tie_word_embeddings=False))
    if family_id == "qwen3":
        return T.Qwen3Config(**_common_text(n, head_dim=32, tie_word_embeddings=True))
    if family_id == "gemma3_text":
        return _gemma3_text_config(n, window)
    qwen_ids = dict(
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    qwen_vision = dict(
        depth=2, num_heads=2, patch_size=QWEN_PATCH, spatial_merge_size=2, temporal_patch_size=2
    )
    if family_id == "qwen2_vl":
        text = T.Qwen2VLTextConfig(
            **_common_text(n, **_qwen2_sliding(n, window), rope_parameters=_mrope([2, 3, 3]))
        )
        vision = T.Qwen2VLVisionConfig(**qwen_vision, embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2)
        return T.Qwen2VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), **qwen_ids)
    if family_id == "qwen2_5_vl":
        text = T.Qwen2_5_VLTextConfig(
            **_common_text(n, **_qwen2_sliding(n, window), rope_parameters=_mrope([2, 3, 3]))
        )
        vision = T.Qwen2_5_VLVisionConfig(
            **qwen_vision,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            window_size=QWEN_PATCH * 2 * 2,  # attention windows of 2 x 2 merged tokens
            fullatt_block_indexes=[1],
        )
        return T.Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), **qwen_ids)
    if family_id == "qwen3_vl":
        rope = {**_mrope([6, 5, 5]), "mrope_interleaved": True}
        text = T.Qwen3VLTextConfig(**_common_text(n, head_dim=32, rope_parameters=rope))
        vision = T.Qwen3VLVisionConfig(
            **{**qwen_vision, "depth": 3},
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            num_position_embeddings=16,  # 4 x 4 learned grid, interpolated to the image grid
            deepstack_visual_indexes=[0, 1, 2],  # -> injected after decoder layers 0, 1, 2
        )
        return T.Qwen3VLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), **qwen_ids)
    if family_id == "llava":
        return T.LlavaConfig(
            vision_config=T.CLIPVisionConfig(**_vit(family_id), projection_dim=32).to_dict(),
            text_config=T.LlamaConfig(**_common_text(n, tie_word_embeddings=False)).to_dict(),
            image_token_index=IMAGE,
            image_seq_length=(VIT_IMAGE["llava"][0] // VIT_IMAGE["llava"][1]) ** 2,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )
    if family_id in ("idefics3", "smolvlm"):
        cfg_cls = T.Idefics3Config if family_id == "idefics3" else T.SmolVLMConfig
        vis_cls = T.Idefics3VisionConfig if family_id == "idefics3" else T.SmolVLMVisionConfig
        return cfg_cls(
            vision_config=vis_cls(**_vit(family_id)).to_dict(),
            text_config=T.LlamaConfig(**_common_text(n, tie_word_embeddings=False)).to_dict(),
            image_token_id=IMAGE,
            scale_factor=2 if family_id == "idefics3" else 4,
            pad_token_id=PAD,
            tie_word_embeddings=False,
        )
    if family_id == "gemma3":
        return T.Gemma3Config(
            text_config=_gemma3_text_config(n, window).to_dict(),
            vision_config=T.SiglipVisionConfig(**_vit(family_id)).to_dict(),
            mm_tokens_per_image=4,
            boi_token_index=VISION_START,
            eoi_token_index=VISION_END,
            image_token_index=IMAGE,
            tie_word_embeddings=True,
        )
    if family_id == "internvl":
        image_size, patch_size = VIT_IMAGE[family_id]
        vision = T.InternVLVisionConfig(
            **{**_vit(family_id), "image_size": [image_size] * 2, "patch_size": [patch_size] * 2}
        )
        text = T.Qwen2Config(**_common_text(n, **_qwen2_sliding(n, window), tie_word_embeddings=False))
        return T.InternVLConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            image_token_id=IMAGE,
            image_seq_length=(image_size // patch_size) ** 2 // 4,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )
    raise KeyError(f"unknown tiny family '{family_id}': choose from {FAMILY_IDS}")


def num_image_tokens(family_id: str, config: Any) -> int:
    """Image tokens per image that the model expects for the pixel values `Tiny.inputs` builds."""
    if family_id in THW_IDS:
        t, h, w = QWEN_GRID
        return t * h * w // config.vision_config.spatial_merge_size**2
    if family_id in MORE_VLM_IDS:
        return _vlm().image_tokens(family_id, config)
    if family_id == "llava":
        v = config.vision_config
        n = (v.image_size // v.patch_size) ** 2
        # CLIP adds a CLS token; the "default" strategy drops it again
        return n + 1 if config.vision_feature_select_strategy == "full" else n
    if family_id in ("idefics3", "smolvlm"):
        v = config.vision_config
        return (v.image_size // v.patch_size) ** 2 // config.scale_factor**2
    if family_id == "gemma3":
        return config.mm_tokens_per_image
    if family_id == "internvl":
        v = config.vision_config
        n = (v.image_size[0] // v.patch_size[0]) * (v.image_size[1] // v.patch_size[1])
        return int(n * config.downsample_ratio**2)
    raise KeyError(family_id)


def _reinit(model: nn.Module, family_id: str) -> None:
    """Large-std normal init of every non-norm parameter; norm weights/biases keep their identity init.

    Call right after `torch.manual_seed`: the draw order is `named_parameters()` order.
    """
    norm_params: set[int] = set()
    for module in model.modules():
        if "norm" in type(module).__name__.lower():
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    embed = model.get_input_embeddings().weight
    embed_std = GEMMA_EMBED_STD if family_id.startswith("gemma3") else WEIGHT_STD
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            if id(p) in norm_params:
                continue
            if p is embed:
                p.normal_(0.0, embed_std)
            elif p.ndim >= 2:
                p.normal_(0.0, WEIGHT_STD)
            elif name.endswith("bias"):
                p.normal_(0.0, BIAS_STD)
            elif name.endswith("gate"):  # Mllama's tanh gates start at 0: the image would add nothing
                p.normal_(0.0, 1.0)
            # other 1-D parameters (CLIP class embedding, InternVL layer scales) keep their init


@dataclass
class Tiny:
    family_id: str
    model: transformers.PreTrainedModel  # eval(), float32
    vision: bool

    @property
    def image_tokens(self) -> int:
        """Image tokens per image (0 for text-only families)."""
        return num_image_tokens(self.family_id, self.model.config) if self.vision else 0

    def inputs(
        self, batch: int = 2, with_image: bool = True, pad: bool = True, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Ready-to-forward kwargs; one image per row for VLMs when `with_image`.

        With `pad`, rows have different lengths and are LEFT-padded (attention_mask 0 on padding).
        Rows are: BOS, 3 text tokens, the image block (image tokens, with the family's start/end
        tokens where it has them), then the remaining text tokens. Deterministic for a seed.
        """
        return self._inputs(batch, with_image, pad, seed, pixel_seed=seed)

    def inputs_other_image(
        self, batch: int = 2, with_image: bool = True, pad: bool = True, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Same token ids and mask as `inputs(...)`, different pixel values."""
        return self._inputs(batch, with_image, pad, seed, pixel_seed=seed + 7919)

    def _inputs(
        self, batch: int, with_image: bool, pad: bool, seed: int, pixel_seed: int
    ) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        image = self.vision and with_image
        rows: list[list[int]] = []
        types: list[list[int]] = []  # 1 on image tokens
        for b in range(batch):
            n_text = 11 + ((b * 3) % 7 if pad else 0)  # 11..17 text tokens
            text = torch.randint(TEXT_LO, TEXT_HI, (n_text,), generator=gen).tolist()
            head = [BOS] + text[:3]
            block, block_types = self._image_block() if image else ([], [])
            rows.append(head + block + text[3:])
            types.append([0] * len(head) + block_types + [0] * (n_text - 3))
        width = max(len(r) for r in rows)
        input_ids = torch.full((batch, width), PAD, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        type_ids = torch.zeros((batch, width), dtype=torch.long)
        for b, (row, row_types) in enumerate(zip(rows, types)):
            input_ids[b, width - len(row) :] = torch.tensor(row)
            attention_mask[b, width - len(row) :] = 1
            type_ids[b, width - len(row) :] = torch.tensor(row_types)
        out: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.family_id in THW_IDS:
            out["mm_token_type_ids"] = type_ids  # text 0, image 1 (video 2)
        elif self.family_id == "gemma3":
            out["token_type_ids"] = type_ids  # image 1: bidirectional attention inside the image
        if image:
            out.update(self._pixels(batch, torch.Generator().manual_seed(pixel_seed)))
        return out

    def _image_block(self) -> tuple[list[int], list[int]]:
        n = self.image_tokens
        if self.family_id in (*THW_IDS, "gemma3", "aya_vision"):
            # Qwen-VL: <|vision_start|> pads <|vision_end|>; Gemma3: <start_of_image> ... <end_of_image>;
            # Aya Vision: <|START_OF_IMG|> ... <|END_OF_IMG|>
            return [VISION_START] + [IMAGE] * n + [VISION_END], [0] + [1] * n + [0]
        if self.family_id == "mistral3":
            return _vlm().pixtral_block(self.model.config)
        return [IMAGE] * n, [1] * n

    def _pixels(self, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.model.config
        if self.family_id in THW_IDS:
            # Flattened patches, as Qwen2VLImageProcessor emits them: [patches, C * t * p * p].
            v = cfg.vision_config
            t, h, w = QWEN_GRID
            dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
            return {
                "pixel_values": torch.randn((batch * t * h * w, dim), generator=gen),
                "image_grid_thw": torch.tensor([list(QWEN_GRID)] * batch, dtype=torch.long),
            }
        if self.family_id in MORE_VLM_IDS:
            return _vlm().pixels(self.family_id, cfg, batch, gen)
        size = VIT_IMAGE[self.family_id][0]
        images = torch.randn((batch, 3, size, size), generator=gen)
        if self.family_id in ("idefics3", "smolvlm"):
            return {  # [batch, images per row, C, H, W]
                "pixel_values": images.unsqueeze(1),
                "pixel_attention_mask": torch.ones((batch, 1, size, size), dtype=torch.bool),
            }
        return {"pixel_values": images}


def build_tiny(family_id: str, config: Any, seed: int = 0) -> Tiny:
    """Build and re-initialise a model from `config` (as `make_tiny` does): same seed, same weights."""
    vision = family_id in VISION_IDS
    auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # Qwen2-VL's stale "sliding window not implemented"
    try:
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=torch.float32)
    finally:
        transformers.logging.set_verbosity(verbosity)
    torch.manual_seed(seed)
    _reinit(model, family_id)
    model.eval()
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = PAD, BOS, EOS
    # Never generate padding, BOS or image-structure tokens: a generated image token would not
    # match the pixel values if the sequence were fed back.
    gc.suppress_tokens = [PAD, BOS, IMAGE, VIDEO, VISION_START, VISION_END]
    return Tiny(family_id=family_id, model=model, vision=vision)


def make_tiny(family_id: str, num_layers: int = 6, seed: int = 0) -> Tiny:
    """A tiny float32 model of `family_id` in eval mode, seeded and re-initialised with a large std."""
    return build_tiny(family_id, tiny_config(family_id, num_layers), seed)
