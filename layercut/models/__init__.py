"""Everything layercut knows about model families, as one table read by generic code.

A family is a row: which `config.model_type` values it covers, which Auto class loads it, which
extra input its forward needs to tell image tokens apart, and which decoder layers must never be
dropped. Nothing outside this package names an architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from layercut.errors import LayercutError


def _no_protected(config: Any) -> set[int]:
    return set()


def _qwen3_vl_deepstack(config: Any) -> set[int]:
    # Deepstack visual features are added after decoder layers 0..k-1 by list position;
    # dropping one of them would move the injection to another layer.
    return set(range(len(config.vision_config.deepstack_visual_indexes)))


@dataclass(frozen=True)
class Family:
    name: str  # shown to users
    model_types: tuple[str, ...]  # top-level `config.model_type` values
    vision: bool = False  # AutoModelForImageTextToText + AutoProcessor, else AutoModelForCausalLM
    # Extra forward input marking image tokens (1) vs text (0) that the family needs in 5.x.
    type_ids_input: str | None = None
    protected: Callable[[Any], set[int]] = field(default=_no_protected)


FAMILIES: tuple[Family, ...] = (
    Family("Llama", ("llama",)),
    Family("Mistral", ("mistral",)),
    Family("Qwen2", ("qwen2",)),
    Family("Qwen3", ("qwen3",)),
    Family("Gemma3 (text)", ("gemma3_text",)),
    Family("Qwen2-VL", ("qwen2_vl",), vision=True, type_ids_input="mm_token_type_ids"),
    Family("Qwen2.5-VL", ("qwen2_5_vl",), vision=True, type_ids_input="mm_token_type_ids"),
    Family(
        "Qwen3-VL",
        ("qwen3_vl",),
        vision=True,
        type_ids_input="mm_token_type_ids",
        protected=_qwen3_vl_deepstack,
    ),
    Family("LLaVA", ("llava",), vision=True),
    Family("Idefics3 / SmolVLM", ("idefics3", "smolvlm"), vision=True),
    Family("Gemma3 (VLM)", ("gemma3",), vision=True, type_ids_input="token_type_ids"),
    Family("InternVL", ("internvl",), vision=True),
)


def family_for(config: Any) -> Family:
    """The table row for a config, or a one-line error listing what is supported."""
    for fam in FAMILIES:
        if config.model_type in fam.model_types:
            return fam
    names = ", ".join(f.name for f in FAMILIES)
    raise LayercutError(
        f"unsupported architecture '{config.model_type}': layercut supports {names}"
    )


@dataclass
class Adapter:
    """A loaded model plus the family facts that generic code needs."""

    model: nn.Module
    family: Family
    processor: Any = None  # AutoProcessor for VLMs, tokenizer for text models (may be None)
    source: str = ""  # what the user named: folder, hub id or zoo name
    path: str = ""  # where it was loaded from (a zoo name's cached folder)

    @classmethod
    def wrap(cls, model: nn.Module, processor: Any = None, source: str = "") -> "Adapter":
        return cls(model=model, family=family_for(model.config), processor=processor, source=source)

    @property
    def text_config(self) -> Any:
        # Vision configs alias num_hidden_layers to the vision depth: always ask for the decoder's.
        return self.model.config.get_text_config(decoder=True)

    @property
    def decoder(self) -> nn.Module:
        return self.model.get_decoder()

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_token_id(self) -> int | None:
        cfg = self.model.config
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        return None

    def image_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where a position holds an image token (all False for text-only models)."""
        tok = self.image_token_id
        if tok is None:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return input_ids == tok

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last decoder layer's output, as the model's own forward makes them:
        the decoder's final norm, the LM head, then soft-capping where the config asks for it."""
        logits = self.model.get_output_embeddings()(self.decoder.norm(hidden))
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def complete_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the image/text type ids a family needs when the caller did not build them."""
        name = self.family.type_ids_input
        if name and name not in inputs and "input_ids" in inputs:
            inputs = dict(inputs)
            inputs[name] = self.image_mask(inputs["input_ids"]).long()
        return inputs

    def protected_layers(self) -> set[int]:
        """Layers this family never lets a user drop (e.g. Qwen3-VL deepstack injection points)."""
        return self.family.protected(self.model.config)

    def default_protect(self) -> set[int]:
        """DESIGN default: the first layer, the last layer and the family's own."""
        return {0, self.num_layers - 1} | self.protected_layers()

    def auto_class(self) -> Any:
        return auto_class(self.family)


def auto_class(family: Family) -> Any:
    import transformers

    return (
        transformers.AutoModelForImageTextToText
        if family.vision
        else transformers.AutoModelForCausalLM
    )


def load(name: str, dtype: torch.dtype = torch.float32) -> Adapter:
    """Load a supported model and its processor/tokenizer from a folder, hub id or zoo name.

    Hub ids only work where a hub is reachable or the model is already in the local HF cache.
    """
    import transformers

    from layercut import zoo

    path = zoo.resolve(name)
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LayercutError(
            f"cannot read a model config from '{name}': pass a folder with config.json, "
            f"a cached hub id, or a built-in name ({', '.join(zoo.names())})"
        ) from exc
    family = family_for(config)
    model = auto_class(family).from_pretrained(path, dtype=dtype)
    model.eval()
    processor = load_processor(path, family)
    return Adapter(model=model, family=family, processor=processor, source=name, path=str(path))


def load_processor(path: str | Path, family: Family) -> Any:
    """AutoProcessor for VLMs, AutoTokenizer for text models; None if the folder has neither."""
    import transformers

    loaders = [transformers.AutoProcessor] if family.vision else []
    loaders.append(transformers.AutoTokenizer)
    for loader in loaders:
        try:
            return loader.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError, ImportError):
            continue
    return None


def ensure_pad_token(tok: Any) -> Any:
    """Give a tokenizer without one a pad token (EOS): padding is always masked, so any id does."""
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
