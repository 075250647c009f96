"""Everything layercut knows about model families, as one table read by generic code.

A family is a row: which `config.model_type` values it covers, which Auto class loads it, which
extra input its forward needs to tell image tokens apart, which decoder layers must never be
dropped, which are protected only until the user allows dropping them (`Guard`), which config
lists name layers by index, which layers its forward may leave out, and which inputs are per
token. Nothing outside this package names an architecture. Device maps: `models.devices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from layercut.errors import LayercutError
from layercut.models.compat import logit_scale
from layercut.models.devices import (
    DEVICE_MAPS,
    parse_device_map,
    temporary_offload_folder,
)


def _no_protected(config: Any) -> set[int]:
    return set()


def _qwen3_vl_deepstack(config: Any) -> set[int]:
    # Deepstack visual features are added after decoder layers 0..k-1 by list position;
    # dropping one of them would move the injection to another layer.
    return set(range(len(config.vision_config.deepstack_visual_indexes)))


def _cross_attention(config: Any) -> set[int]:
    # Llama-3.2-Vision sees the image only through these layers: drop them all and it is blind.
    return set(config.get_text_config(decoder=True).cross_attention_layers)


def _no_skips(config: Any, inputs: dict[str, Any]) -> set[int]:
    return set()


def _cross_attention_without_image(config: Any, inputs: dict[str, Any]) -> set[int]:
    # With no image to attend to, MllamaTextModel leaves its cross-attention layers out.
    return set() if inputs.get("pixel_values") is not None else _cross_attention(config)


def _unchanged(config: Any) -> None:
    return None


def _sparse_layers_listed(config: Any) -> None:
    # Qwen3-VL-MoE makes layer i sparse when (i + 1) % decoder_sparse_step == 0 and i is not in
    # mlp_only_layers: renumbered layers would change kind. Step 1 with every dense layer listed
    # is the same model, and the list is renumbered like any index list.
    text = config.get_text_config(decoder=True)
    step = text.decoder_sparse_step
    if step > 1:
        dense = set(text.mlp_only_layers)
        text.mlp_only_layers = [i for i in range(text.num_hidden_layers) if i in dense or (i + 1) % step]
        text.decoder_sparse_step = 1


@dataclass(frozen=True)
class Guard:
    """Layers a family protects by default but lets a user drop, once allowed by `name`."""

    name: str  # what the user passes: `load(..., allow=("cross-attention",))`
    layers: Callable[[Any], set[int]]


@dataclass(frozen=True)
class Family:
    name: str  # shown to users
    model_types: tuple[str, ...]  # top-level `config.model_type` values
    vision: bool = False  # AutoModelForImageTextToText + AutoProcessor, else AutoModelForCausalLM
    # Extra forward input marking image tokens (1) vs text (0) that the family needs in 5.x.
    type_ids_input: str | None = None
    protected: Callable[[Any], set[int]] = field(default=_no_protected)
    guards: tuple[Guard, ...] = ()
    # Text-config lists of layer indices (which layers are of a kind): surgery drops the removed
    # layers from them and renumbers the rest; a decoder attribute of the same name follows.
    index_lists: tuple[str, ...] = ()
    # Rewrites a config whose layer kinds follow from the index into `index_lists` (the same
    # model), so that renumbered layers keep their kind; applied when an Adapter is made.
    list_layer_kinds: Callable[[Any], None] = field(default=_unchanged)
    # Decoder layers the model's own forward leaves out for these inputs (not an error when
    # scoring or caching layer inputs: the hidden states pass them unchanged).
    skipped: Callable[[Any, dict[str, Any]], set[int]] = field(default=_no_skips)
    # Inputs besides the type ids whose dim 1 follows input_ids (Mllama's cross_attention_mask,
    # [batch, tokens, images, tiles]): padded with zeros; an appended token repeats the last row.
    token_inputs: tuple[str, ...] = ()


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
    Family("LLaVA-NeXT", ("llava_next",), vision=True),
    Family("LLaVA-OneVision", ("llava_onevision",), vision=True),
    Family("Mistral3 (Pixtral vision)", ("mistral3",), vision=True),
    Family(
        "Llama-3.2-Vision (Mllama)",
        ("mllama",),
        vision=True,
        guards=(Guard("cross-attention", _cross_attention),),
        index_lists=("cross_attention_layers",),
        skipped=_cross_attention_without_image,
        token_inputs=("cross_attention_mask",),
    ),
    Family(
        "Qwen3-VL-MoE",
        ("qwen3_vl_moe",),
        vision=True,
        type_ids_input="mm_token_type_ids",
        protected=_qwen3_vl_deepstack,
        index_lists=("mlp_only_layers",),  # dense (non-MoE) layers
        list_layer_kinds=_sparse_layers_listed,
    ),
    Family("GLM-4V", ("glm4v",), vision=True, type_ids_input="mm_token_type_ids"),
    Family("Aya Vision", ("aya_vision",), vision=True),
)


def check_allow(family: Family, names: str | Iterable[str]) -> frozenset[str]:
    """Guard names (an iterable, or one comma-separated string as a command line gives them),
    each checked against the family's guards: a one-line error names the ones it has."""
    return check_guard_names(family.name, [g.name for g in family.guards], names)


def guard_names(names: str | Iterable[str]) -> frozenset[str]:
    """Guard names from an iterable or one comma-separated string (as a command line gives them)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    return frozenset(n for n in names if n)


def check_guard_names(owner: str, known: Iterable[str], names: str | Iterable[str]) -> frozenset[str]:
    """`check_allow` against the guard names `known` of `owner` (e.g. as a scores file records them)."""
    names, known = guard_names(names), set(known)
    for name in sorted(names - known):
        have = ", ".join(sorted(known)) or "none"
        raise LayercutError(
            f"{owner} has no guarded layers called '{name}' (its guards: {have}): fix the allow list"
        )
    return names


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
    offload_folder: str | None = None  # where a device map's "disk" weights live, if any
    allowed: frozenset[str] = frozenset()  # names of the family's guards the user lifted

    def __post_init__(self) -> None:
        """Layer kinds made explicit before any surgery can renumber them."""
        self.family.list_layer_kinds(self.model.config)

    @classmethod
    def wrap(cls, model: nn.Module, processor: Any = None, source: str = "",
             allow: str | Iterable[str] = ()) -> "Adapter":
        family = family_for(model.config)
        return cls(model=model, family=family, processor=processor, source=source,
                   allowed=check_allow(family, allow))

    def allow(self, names: str | Iterable[str]) -> None:
        """Let the user drop the layers of the named guards (e.g. Mllama's "cross-attention")."""
        self.allowed |= check_allow(self.family, names)

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
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device_map(self) -> dict[str, Any] | None:
        """accelerate's module -> device map when the model was loaded with one, else None."""
        return getattr(self.model, "hf_device_map", None)

    @property
    def dispatched(self) -> bool:
        """True when the model is spread over several devices or partly offloaded to disk."""
        dm = self.device_map or {}
        return len({str(v) for v in dm.values()}) > 1 or "disk" in dm.values()

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the input embeddings' execution device (offloaded weights sit on
        'meta', so the first parameter's device is not it)."""
        emb = self.model.get_input_embeddings()
        hook = getattr(emb, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
        for p in emb.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

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
        the decoder's final norm, the LM head, the logit scale where this transformers applies
        one (`compat.logit_scale`), then soft-capping where the config asks for it."""
        logits = self.model.get_output_embeddings()(self.decoder.norm(hidden))
        scale = logit_scale(self.model)
        if scale is not None:
            logits = logits * scale
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def complete_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add the image/text type ids a family needs when the caller did not build them."""
        name = self.family.type_ids_input
        if name and name not in inputs and "input_ids" in inputs:
            inputs = dict(inputs)
            inputs[name] = self.image_mask(inputs["input_ids"]).long()
        return inputs

    def guard_layers(self) -> dict[str, set[int]]:
        """Each guard's layers by guard name, lifted or not (what scoring records)."""
        return {g.name: g.layers(self.model.config) for g in self.family.guards}

    def protected_layers(self) -> set[int]:
        """Layers this family does not let a user drop (e.g. Qwen3-VL deepstack injection points),
        plus its guarded ones (e.g. Mllama cross-attention) unless the user allowed them."""
        out = set(self.family.protected(self.model.config))
        for name, layers in self.guard_layers().items():
            if name not in self.allowed:
                out |= layers
        return out

    def skipped_layers(self, inputs: dict[str, Any]) -> set[int]:
        """Layers the model's forward leaves out for `inputs` (Mllama's cross-attention layers
        without an image)."""
        return self.family.skipped(self.model.config, inputs)

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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """'fp32' for torch.float32 and so on; other dtypes as torch writes them."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def load_model(
    model: str | Adapter,
    dtype: str = "fp32",
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
    *,
    source: str | None = None,
    hint: str = "",
    allow: str | Iterable[str] = (),
) -> Adapter:
    """An Adapter passes through (with `allow` added); a folder or hub id loads in `dtype` (a
    name of DTYPES)."""
    if isinstance(model, Adapter):
        model.allow(allow)
        return model
    if dtype not in DTYPES:
        raise LayercutError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return load(model, DTYPES[dtype], device_map=device_map, offload_folder=offload_folder,
                source=source, hint=hint, allow=allow)


def load(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | Path | None = None,
    *,
    source: str | None = None,
    hint: str = "",
    allow: str | Iterable[str] = (),
) -> Adapter:
    """Load a supported model and its processor/tokenizer from a folder or hub id.

    `device_map` is None (one device, CPU), one of accelerate's strategies ("auto", "balanced",
    ...), a JSON file or a dict {module name: 0 | "cuda:1" | "cpu" | "disk"}. Weights mapped to
    "disk" are read from `offload_folder` (a temporary folder by default) or, where the
    checkpoint is safetensors in the load dtype, straight from the checkpoint.
    Hub ids only work where a hub is reachable or the model is already in the local HF cache.
    `source` is what the user named (a zoo name resolved to `path` by the caller; default
    `path`); `hint` lists other things the user could have named, for the error message.
    `allow` names family guards whose layers may be dropped (see `Adapter.allow`).
    """
    name = source if source is not None else str(path)
    family = family_for(read_config(path, name, hint))
    allowed = check_allow(family, allow)  # before the weights load: a typo costs nothing
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = parse_device_map(device_map)
        values = kwargs["device_map"].values() if isinstance(kwargs["device_map"], dict) else []
        if offload_folder is None and ("disk" in values or kwargs["device_map"] in DEVICE_MAPS):
            offload_folder = temporary_offload_folder()
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        model = auto_class(family).from_pretrained(path, **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:
        if device_map is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        first = first if len(first) <= 160 else first[:157] + "..."
        raise LayercutError(
            f"device map {device_map!r} does not fit '{name}' ({first}): map every top-level "
            "module (e.g. model.embed_tokens, model.layers.N, model.norm, lm_head)"
        ) from None
    model.eval()
    processor = load_processor(path, family)
    return Adapter(model=model, family=family, processor=processor, source=name, path=str(path),
                   offload_folder=str(offload_folder) if offload_folder is not None else None,
                   allowed=allowed)


def read_config(path: str | Path, name: str = "", hint: str = "") -> Any:
    """The model's config alone (no weights), or a one-line error naming what to pass."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LayercutError(
            f"cannot read a model config from '{name or path}': pass a folder with config.json"
            + (f", {hint}" if hint else " or a cached hub id")
        ) from exc


def load_processor(path: str | Path, family: Family) -> Any:
    """AutoProcessor for VLMs, AutoTokenizer for text models; None if the folder has neither."""
    import transformers

    loaders = [transformers.AutoProcessor] if family.vision else []
    loaders.append(transformers.AutoTokenizer)
    for loader in loaders:
        try:
            loaded = loader.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError, ImportError):
            continue
        tokenizer = getattr(loaded, "tokenizer", loaded)
        if hasattr(tokenizer, "all_special_tokens") and len(tokenizer) <= len(tokenizer.all_special_tokens):
            # transformers 5 builds a tokenizer of special tokens only for a folder without
            # tokenizer files (Qwen2: one token), which encodes any text to no tokens at all.
            continue
        return loaded
    return None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
