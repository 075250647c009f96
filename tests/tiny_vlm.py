"""Tiny configs, image-token counts and pixel inputs of the VLM families added in issue 14.

Test-support module, the second half of `tests/tiny.py`: that module dispatches here for its
`MORE_VLM_IDS` and owns the token layout these use.

- LLaVA-NeXT and LLaVA-OneVision ("anyres" tiling): a 24 x 40 image is cut into a 2 x 2 grid of
  16-pixel tiles plus a base tile (5 tiles in `pixel_values`); its image block is the base tile's
  4 tokens, the unpadded grid's 2 x 4 tokens and a newline token per grid row: 14 image tokens;
- Mistral3 (Pixtral vision, Mistral text): a 32 x 48 image, 4 x 6 patches merged 2 x 2 into 2 rows
  of 3 image tokens; each row is closed by [IMG_BREAK] and the last by [IMG_END] instead;
- Mllama (Llama-3.2-Vision): the text holds one `<|image|>` token per image; the image (two
  16-pixel tiles, aspect ratio 1 x 2) reaches the text only through the cross-attention layers
  2, 4, ... (`text_config.cross_attention_layers`). `Tiny.inputs` gives no `cross_attention_mask`
  (every text token sees its row's image), which keeps the inputs valid for any length the generic
  tests give them; `cross_attention_mask` below builds the processor's mask;
- Qwen3-VL-MoE: Qwen3-VL (deepstack after decoder layers 0, 1, 2) whose decoder layers are sparse
  MoE blocks (4 experts, 2 per token), except dense layer 4 (`mlp_only_layers`);
- GLM-4V: Qwen-VL-style flattened patches with `image_grid_thw` and `mm_token_type_ids`;
- Aya Vision: two 32-pixel tiles per image (a tile and its thumbnail, as the processor makes them),
  SigLIP with pixel shuffle 2 -> 4 tokens per tile; Cohere2 text with sliding and full layers.
  (Its forward applies no Cohere `logit_scale`; layercut follows the forward.)
"""

from __future__ import annotations

from typing import Any

import torch
import transformers as T
from transformers.image_processing_utils import select_best_resolution

from tests.tiny import (
    HIDDEN, IMAGE, MORE_VLM_IDS, QWEN_PATCH, VIDEO, VISION_END, VISION_START, _common_text, _mrope,
)

ANYRES_IDS = ("llava_next", "llava_onevision")
ANYRES_TILE = 16
ANYRES_IMAGE = (24, 40)  # (height, width) of the image before tiling
PIXTRAL_IMAGE = (32, 48)
MLLAMA_TILES = 2  # aspect ratio 1 x 2: aspect_ratio_id 2 of `supported_aspect_ratios`
AYA_TILES = 2
IMG_BREAK, IMG_END = VISION_START, VISION_END  # Pixtral's row and image ends (ids of tiny's layout)


def _tower(image_size: int, patch_size: int, **extra: Any) -> dict[str, Any]:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size, **extra)


def _anyres(family_id: str, n: int) -> Any:
    common = dict(image_token_index=IMAGE, tie_word_embeddings=False,
                  image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    if family_id == "llava_next":
        return T.LlavaNextConfig(
            vision_config=T.CLIPVisionConfig(**_tower(ANYRES_TILE, 8), projection_dim=32).to_dict(),
            text_config=T.LlamaConfig(**_common_text(n, tie_word_embeddings=False)).to_dict(),
            vision_feature_layer=-2, vision_feature_select_strategy="default", **common)
    return T.LlavaOnevisionConfig(
        vision_config=T.SiglipVisionConfig(**_tower(ANYRES_TILE, 8)).to_dict(),
        text_config=T.Qwen2Config(**_common_text(n, tie_word_embeddings=False)).to_dict(),
        video_token_index=VIDEO, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", **common)


def cross_attention_layers(n: int) -> list[int]:
    """Every second layer from 2 on, never the last (real Llama-3.2-11B-Vision: 3, 8, ..., 38)."""
    return list(range(2, n - 1, 2))


def config(family_id: str, n: int, window: int) -> Any:
    """The tiny config of one of `MORE_VLM_IDS`, with `n` decoder layers and sliding `window` (Aya Vision)."""
    if family_id in ANYRES_IDS:
        return _anyres(family_id, n)
    if family_id == "mistral3":  # real Mistral-Small-3.1 text has no sliding window
        return T.Mistral3Config(
            vision_config=T.PixtralVisionConfig(**_tower(max(PIXTRAL_IMAGE), 8), head_dim=16).to_dict(),
            text_config=T.MistralConfig(**_common_text(n, sliding_window=None, tie_word_embeddings=False)).to_dict(),
            image_token_index=IMAGE, spatial_merge_size=2, vision_feature_layer=-1, tie_word_embeddings=False)
    if family_id == "mllama":
        vision = T.MllamaVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
            vision_output_dim=64, image_size=16, patch_size=8, max_num_tiles=MLLAMA_TILES,
            intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
        text = T.MllamaTextConfig(**_common_text(n, tie_word_embeddings=False),
                                  cross_attention_layers=cross_attention_layers(n))
        return T.MllamaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE)
    thw = dict(depth=2, num_heads=2, patch_size=QWEN_PATCH, spatial_merge_size=2, temporal_patch_size=2,
               hidden_size=32, intermediate_size=64, out_hidden_size=HIDDEN)
    if family_id == "qwen3_vl_moe":
        rope = {**_mrope([6, 5, 5]), "mrope_interleaved": True}
        text = T.Qwen3VLMoeTextConfig(
            **_common_text(n, head_dim=32, rope_parameters=rope), num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[4] if n > 5 else [])
        vision = T.Qwen3VLMoeVisionConfig(**{**thw, "depth": 3}, num_position_embeddings=16,
                                          deepstack_visual_indexes=[0, 1, 2])
        return T.Qwen3VLMoeConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=IMAGE,
                                  video_token_id=VIDEO, vision_start_token_id=VISION_START,
                                  vision_end_token_id=VISION_END, tie_word_embeddings=False)
    if family_id == "glm4v":
        rope = {**_mrope([1, 1, 2]), "partial_rotary_factor": 0.5}  # GLM rotates half of each head
        text = T.Glm4vTextConfig(**_common_text(n, rope_parameters=rope))
        vision = T.Glm4vVisionConfig(**thw, image_size=16)
        return T.Glm4vConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=IMAGE,
                             video_token_id=VIDEO, image_start_token_id=VISION_START, image_end_token_id=VISION_END,
                             video_start_token_id=VISION_START, video_end_token_id=VISION_END,
                             tie_word_embeddings=False)
    if family_id == "aya_vision":
        types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n)]
        text = T.Cohere2Config(**_common_text(n, sliding_window=window, layer_types=types, tie_word_embeddings=True))
        return T.AyaVisionConfig(vision_config=T.SiglipVisionConfig(**_tower(32, 8)).to_dict(),
                                 text_config=text.to_dict(), image_token_index=IMAGE, downsample_factor=2,
                                 vision_feature_layer=-1, vision_feature_select_strategy="full",
                                 tie_word_embeddings=True)
    raise KeyError(f"unknown tiny family '{family_id}': choose from {MORE_VLM_IDS}")


def anyres_grid(config: Any) -> tuple[int, int]:
    """(rows, columns) of tiles the anyres families cut `ANYRES_IMAGE` into (the processor's choice)."""
    h, w = select_best_resolution(list(ANYRES_IMAGE), config.image_grid_pinpoints)
    return h // ANYRES_TILE, w // ANYRES_TILE


def _anyres_tokens(config: Any) -> int:
    """Base tile + unpadded grid + one newline per grid row, as LlavaNextProcessor counts them."""
    side = ANYRES_TILE // config.vision_config.patch_size
    rows, cols = anyres_grid(config)
    height, width = side * rows, side * cols
    orig_h, orig_w = ANYRES_IMAGE
    if orig_w / orig_h > width / height:  # letterboxed: padding rows at top and bottom go
        height -= 2 * ((height - int(round(orig_h * width / orig_w, 7))) // 2)
    else:
        width -= 2 * ((width - int(round(orig_w * height / orig_h, 7))) // 2)
    return side * side + height * width + height


def image_tokens(family_id: str, config: Any) -> int:
    """Image tokens per image for the pixel values `pixels` builds."""
    if family_id in ANYRES_IDS:
        return _anyres_tokens(config)
    if family_id == "mistral3":
        h, w = pixtral_grid(config)
        return h * w
    if family_id == "mllama":
        return 1  # the `<|image|>` placeholder; the image itself is read by cross-attention
    if family_id == "aya_vision":
        v = config.vision_config
        return AYA_TILES * (v.image_size // v.patch_size // config.downsample_factor) ** 2
    raise KeyError(family_id)


def pixtral_grid(config: Any) -> tuple[int, int]:
    """(rows, columns) of merged image tokens of `PIXTRAL_IMAGE`."""
    step = config.vision_config.patch_size * config.spatial_merge_size
    return PIXTRAL_IMAGE[0] // step, PIXTRAL_IMAGE[1] // step


def pixtral_block(config: Any) -> tuple[list[int], list[int]]:
    """Rows of image tokens, each closed by [IMG_BREAK], the last by [IMG_END] (1 on image tokens)."""
    rows, cols = pixtral_grid(config)
    ids, types = [], []
    for r in range(rows):
        ids += [IMAGE] * cols + [IMG_END if r == rows - 1 else IMG_BREAK]
        types += [1] * cols + [0]
    return ids, types


def pixels(family_id: str, config: Any, batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Pixel inputs (one image per row) in the layout each family's processor emits."""
    if family_id in ANYRES_IDS:
        rows, cols = anyres_grid(config)
        return {  # [images, base tile + grid tiles, C, tile, tile]; image_sizes are (height, width)
            "pixel_values": torch.randn((batch, 1 + rows * cols, 3, ANYRES_TILE, ANYRES_TILE), generator=gen),
            "image_sizes": torch.tensor([list(ANYRES_IMAGE)] * batch),
        }
    if family_id == "mistral3":
        return {"pixel_values": torch.randn((batch, 3, *PIXTRAL_IMAGE), generator=gen),
                "image_sizes": torch.tensor([list(PIXTRAL_IMAGE)] * batch)}
    if family_id == "mllama":
        size = config.vision_config.image_size
        return {  # [batch, images, tiles, C, H, W]
            "pixel_values": torch.randn((batch, 1, MLLAMA_TILES, 3, size, size), generator=gen),
            "aspect_ratio_ids": torch.full((batch, 1), 2, dtype=torch.long),
            "aspect_ratio_mask": torch.ones((batch, 1, MLLAMA_TILES), dtype=torch.long),
        }
    if family_id == "aya_vision":
        size = config.vision_config.image_size
        return {"pixel_values": torch.randn((batch * AYA_TILES, 3, size, size), generator=gen)}
    raise KeyError(family_id)


def cross_attention_mask(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mllama's [B, T, images, tiles] mask as MllamaProcessor makes it: each row's tokens from its
    `<|image|>` on see that image's tiles."""
    ids = inputs["input_ids"]
    seen = (ids == IMAGE).long().cumsum(1) > 0
    return seen[:, :, None, None].expand(-1, -1, 1, MLLAMA_TILES).long()
