"""Shared fixtures: tiny models saved as real folders with a real (small, trained here) tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core (pytest -n auto): one torch thread each, and the same for
    # the processes a test starts, or four threads fight over two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
)
CORPUS = [
    "Question: Tom has 3 boxes with 4 apples each. How many apples? Answer: 12.",
    "The library is a quiet place where people read books and study.",
    "What is the value of the tallest bar? The answer is 7.",
    "A cat sat on the warm mat near the door of the house.",
] * 50


def train_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained offline in a second, with chat and image tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def reinit(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Large-std weights so greedy tokens vary (default 0.02 init repeats one token forever)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory, tokenizer) -> Path:
    """A 6-layer Llama with the trained tokenizer, saved like any HF model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    reinit(model)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tokenizer) -> Path:
    """A 6-layer LLaVA with a full LlavaProcessor (trained tokenizer + PIL CLIP image processor)."""
    from transformers import (
        CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
        LlavaForConditionalGeneration, LlavaProcessor,
    )

    torch.manual_seed(0)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token,
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(cfg)
    reinit(model)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_mllama_dir(tmp_path_factory, tokenizer) -> Path:
    """A 7-layer Mllama (cross-attention layers 2 and 4) with a full MllamaProcessor: the trained
    tokenizer (its <image> as Mllama's image token) and the PIL image processor (two 16-pixel tiles)."""
    from transformers import MllamaImageProcessorPil, MllamaProcessor

    from tests.tiny import build_tiny, tiny_config

    cfg = tiny_config("mllama", num_layers=7)
    cfg.image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    image_processor = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    path = tmp_path_factory.mktemp("tiny-mllama")
    build_tiny("mllama", cfg).model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the test process, started on first use and shut down at the end
    (each `ray.init` costs seconds; the sweeps under test start their own actor pools in it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def scores_path(tiny_text_dir, tmp_path_factory) -> Path:
    """The tiny Llama's scores on the built-in text set, made once per test process (read only)."""
    from layercut import api

    path = tmp_path_factory.mktemp("scores") / "scores.json"
    api.score(str(tiny_text_dir), "builtin:text:4", max_length=64).save(path)
    return path


@pytest.fixture
def text_calib(tmp_path) -> Path:
    """A small math + general calibration file."""
    rows = [{"domain": "math", "text": f"Question: what is {i} plus {i}? Answer: {2 * i}."} for i in range(4)]
    rows += [{"domain": "general", "text": f"The cat number {i} sat on the warm mat."} for i in range(4)]
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
