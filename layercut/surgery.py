"""Remove decoder layers cleanly, save the result, and prove the saved model is the pruned one.

Three things change together (../shared/FACTS.md): the layer list; every `layer_idx` inside the
kept layers, renumbered 0..k-1 (the KV cache is indexed by it); and the text config: per-layer
lists subset in order, lists of layer indices (the family's `index_lists`, e.g. Mllama's
`cross_attention_layers`) renumbered, Qwen's `max_window_layers` recounted, `num_hidden_layers`
set last. The saved folder is then reloaded and its logits must equal the in-memory pruned model's
exactly.
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

import layercut
from layercut.card import RECIPE_FILE, mergekit_yaml, model_card
from layercut.errors import LayercutError
from layercut.io import atomic_dir

PER_LAYER_LISTS = ("layer_types", "mlp_layer_types")
# "Full attention on every p-th layer" (Gemma 3): true of the unpruned layer_types only; a
# converter that rebuilds the layout from it would give later layers the wrong window.
WINDOW_PATTERNS = ("sliding_window_pattern", "_sliding_window_pattern")


@dataclass
class Recipe:
    """What was done to which checkpoint; written beside it and rendered into the model card."""

    source: str
    drop: list[int]  # original indices
    kept: list[int]  # original indices, in order
    num_layers_before: int
    parameters_before: int
    parameters_after: int
    method: str = "explicit"
    budget: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    scores_file: str | None = None
    scores_sha256: str | None = None
    source_path: str = ""  # the folder the source was loaded from (differs for zoo names)
    verify: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    calibration: str | None = None  # the calibration set the selection used (default heal data)
    heal: dict[str, Any] = field(default_factory=dict)  # filled by `layercut heal`
    allowed: list[str] = field(default_factory=list)  # family guards lifted (e.g. cross-attention)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        return cls(**json.loads(Path(path).read_text()))


def check_drop(drop: Iterable[int], num_layers: int, protect: Iterable[int]) -> list[int]:
    """Validate an explicit drop list against the layer count and the protected set."""
    drop = [int(i) for i in drop]
    bad = [i for i in drop if not 0 <= i < num_layers]
    if bad:
        raise LayercutError(
            f"layer {bad[0]} does not exist (the model has layers 0..{num_layers - 1}): fix --drop"
        )
    if len(set(drop)) != len(drop):
        raise LayercutError("--drop names a layer twice: list each layer once")
    if len(drop) >= num_layers:
        raise LayercutError(
            f"dropping {len(drop)} of {num_layers} layers would leave none: drop fewer layers"
        )
    hit = sorted(set(drop) & set(protect))
    if hit:
        raise LayercutError(
            f"layer {hit[0]} is protected ({sorted(protect)}): remove it from --drop, "
            "or pass --protect to change the protected set"
        )
    return drop


def depth_fields(adapter: Any) -> tuple[str, ...]:
    """The text-config fields that removing layers changes (`drop_layers` edits exactly these)."""
    return (*PER_LAYER_LISTS, *WINDOW_PATTERNS, *adapter.family.index_lists, "max_window_layers",
            "num_hidden_layers")


def drop_layers(adapter: Any, drop: Iterable[int]) -> list[int]:
    """Remove `drop` (original indices) from the model in place; return the kept indices."""
    drop_set = set(drop)
    L = adapter.num_layers
    kept = [i for i in range(L) if i not in drop_set]
    old = adapter.layers
    new = nn.ModuleList([old[i] for i in kept])
    adapter.decoder.layers = new
    for new_idx, layer in enumerate(new):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    cfg = adapter.text_config
    for name in PER_LAYER_LISTS:
        values = getattr(cfg, name, None)
        if isinstance(values, (list, tuple)) and len(values) == L:
            setattr(cfg, name, [values[i] for i in kept])
    for name in WINDOW_PATTERNS:
        if not _follows_pattern(getattr(cfg, "layer_types", None), getattr(cfg, name, None)):
            setattr(cfg, name, None)
    new_index = {old: new for new, old in enumerate(kept)}
    for name in adapter.family.index_lists:
        # A layer listed here keeps its kind under its new index; a dropped one leaves the list.
        renumbered = [new_index[i] for i in getattr(cfg, name) if i in new_index]
        setattr(cfg, name, renumbered)
        if hasattr(adapter.decoder, name):  # e.g. MllamaTextModel reads its own copy in forward
            setattr(adapter.decoder, name, renumbered)
    mwl = getattr(cfg, "max_window_layers", None)
    if isinstance(mwl, int):
        cfg.max_window_layers = sum(1 for i in kept if i < mwl)
    # Last: 5.x configs validate per-layer lists against this count.
    cfg.num_hidden_layers = len(kept)
    if getattr(adapter.model, "hf_device_map", None):
        adapter.model.hf_device_map = renumber_device_map(adapter, kept)
    return kept


def _follows_pattern(kinds: Any, p: Any) -> bool:
    """True unless `p` is a window pattern that the list of layer kinds does not follow."""
    if not isinstance(p, int) or p < 1 or not isinstance(kinds, (list, tuple)):
        return True
    return list(kinds) == ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(len(kinds))]


def renumber_device_map(adapter: Any, kept: list[int]) -> dict[str, Any]:
    """The model's accelerate device map in the pruned numbering: entries of dropped layers go,
    'prefix.{kept[j]}...' becomes 'prefix.{j}...'. (The accelerate hooks stay on the modules, so
    the model runs where it ran; the map is what a reload of the saved folder should use.)"""
    prefix = next((n for n, m in adapter.model.named_modules() if m is adapter.layers), None)
    if prefix is None:
        raise LayercutError("cannot find the decoder layers inside the model: this is a layercut bug")
    new_index = {old: new for new, old in enumerate(kept)}
    out: dict[str, Any] = {}
    for key, device in adapter.model.hf_device_map.items():
        if key.startswith(prefix + "."):
            head, _, rest = key[len(prefix) + 1 :].partition(".")
            if head.isdigit():
                if int(head) not in new_index:
                    continue
                key = f"{prefix}.{new_index[int(head)]}" + (f".{rest}" if rest else "")
        out[key] = device
    return out


@contextlib.contextmanager
def skipped(adapter: Any, drop: Iterable[int]) -> Iterator[list[int]]:
    """A layer-skip view: the model runs as if `drop` were removed, then is restored exactly.

    No weights are copied; the same surgery as `drop_layers` is applied and undone, so per-layer
    config lists and `layer_idx` (hence the KV cache) stay right inside the view.
    """
    cfg = adapter.text_config
    layers = adapter.layers
    index_lists = adapter.family.index_lists
    saved_cfg = {n: getattr(cfg, n) for n in depth_fields(adapter) if hasattr(cfg, n)}
    saved_decoder = {n: getattr(adapter.decoder, n) for n in index_lists if hasattr(adapter.decoder, n)}
    saved_idx = [
        (m, m.layer_idx) for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")
    ]
    saved_n = saved_cfg.pop("num_hidden_layers")
    saved_map = getattr(adapter.model, "hf_device_map", None)
    try:
        yield drop_layers(adapter, drop)
    finally:
        adapter.decoder.layers = layers
        for m, idx in saved_idx:
            m.layer_idx = idx
        for n, v in saved_cfg.items():
            setattr(cfg, n, v)
        for n, v in saved_decoder.items():
            setattr(adapter.decoder, n, v)
        cfg.num_hidden_layers = saved_n  # last, as in drop_layers (5.x validates the lists against it)
        if saved_map is not None:
            adapter.model.hf_device_map = saved_map


def probe_inputs(adapter: Any) -> dict[str, torch.Tensor]:
    """A small fixed input for the reload check: text and, for a VLM with a processor, an image."""
    from layercut.data import Sample
    from layercut.data.encode import encode

    text = "Depth pruning keeps the layers that change the hidden states most."
    proc = adapter.processor
    if adapter.family.vision and proc is not None and hasattr(proc, "image_processor"):
        import numpy as np
        from PIL import Image

        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            path = Path(d) / "probe.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
            return encode(adapter, [Sample(domain="probe", text=text, images=[path])])
    if adapter.tokenizer is not None:
        return encode(adapter, [Sample(domain="probe", text=text)])
    vocab = adapter.text_config.vocab_size
    ids = torch.arange(3, 19).remainder(vocab).unsqueeze(0)
    device = adapter.input_device
    return adapter.complete_inputs({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)})


@torch.no_grad()
def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, use_cache=False).logits


def verify_reload(adapter: Any, folder: Path, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Reload `folder`; no weight may be missing and logits must equal the in-memory model's.

    One copy of the weights at a time, so a model that fits its device can be pruned on it: the
    in-memory model's logits are recorded, its parameters released, the folder reloaded with the
    same placement (a dispatched model's device map, renumbered for the pruned layers; else the
    model's device) and its logits compared. The in-memory modules then take the reloaded
    parameters, so the caller's model stays usable and holds exactly what was saved. (If the
    reload itself fails, the in-memory model is left without weights.)
    """
    from layercut.models import auto_class

    a = _logits(adapter.model, inputs).cpu()
    kwargs: dict[str, Any] = {"dtype": adapter.dtype, "output_loading_info": True}
    dispatched = getattr(adapter, "dispatched", False)
    offload = None
    if dispatched:
        offload = tempfile.TemporaryDirectory(prefix="layercut-verify-offload-")
        kwargs.update(device_map=dict(adapter.model.hf_device_map), offload_folder=offload.name)
    elif adapter.input_device.type != "cpu":
        kwargs["device_map"] = {"": str(adapter.input_device)}  # straight onto the device
    released = release_parameters(adapter.model)
    try:
        reloaded, info = auto_class(adapter.family).from_pretrained(folder, **kwargs)
        reloaded.eval()
        adopt_parameters(adapter.model, reloaded, released)
        missing = sorted(info.get("missing_keys", []))
        if missing:
            raise LayercutError(
                f"the saved model reloads with {len(missing)} missing weights (e.g. {missing[0]}): "
                "this is a layercut bug, please report it"
            )
        b = _logits(reloaded, inputs).cpu()
        del reloaded
    finally:
        if offload is not None:
            offload.cleanup()
    diff = float((a - b).abs().max())
    if not torch.equal(a, b):
        raise LayercutError(
            f"the reloaded model's logits differ from the pruned model's (max |diff| {diff:.3g}): "
            "this is a layercut bug, please report it"
        )
    return {
        "missing_keys": 0,
        "unexpected_keys": len(info.get("unexpected_keys", [])),
        "max_abs_logit_diff": diff,
        "probe_tokens": int(inputs["input_ids"].numel()),
        "probe_has_image": any(k.startswith("pixel") for k in inputs),
        "device_map": dispatched,
    }


def release_parameters(model: nn.Module) -> list[str]:
    """Free the storage of every parameter that holds one (offloaded ones sit on 'meta' and are
    kept); return their names. Tied parameters are one object and are named once."""
    released = []
    for name, p in model.named_parameters():
        if p.device.type != "meta":
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            released.append(name)
    return released


def adopt_parameters(model: nn.Module, source: nn.Module, names: list[str]) -> None:
    """Give `model`'s released parameters `source`'s tensors of the same names (no copy)."""
    theirs = dict(source.named_parameters(remove_duplicate=False))
    mine = dict(model.named_parameters(remove_duplicate=False))
    absent = [n for n in names if n not in theirs]
    if absent:
        raise LayercutError(f"the reloaded model has no parameter '{absent[0]}': this is a layercut bug, "
                            "please report it")
    for name in names:
        mine[name].data = theirs[name].data


def prune(
    adapter: Any,
    drop: Iterable[int],
    out: str | Path,
    *,
    protect: Iterable[int] | None = None,
    method: str = "explicit",
    budget: int | None = None,
    params: dict[str, Any] | None = None,
    scores_file: str | Path | None = None,
    calibration: str | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
    mergekit: bool = False,
    overwrite: bool = False,
) -> Recipe:
    """Drop layers in place, save model + processor + recipe + card to `out`, verify the reload.

    `out` appears only when everything, verification included, succeeded.
    """
    from layercut.io import check_out, sha256
    from layercut.models import parameter_count

    L = adapter.num_layers
    protect = set(adapter.default_protect() if protect is None else protect) | adapter.protected_layers()
    drop = check_drop(drop, L, protect)
    out = check_out(out, overwrite)
    params_before = parameter_count(adapter.model)
    inputs = inputs if inputs is not None else probe_inputs(adapter)
    kept = drop_layers(adapter, drop)
    recipe = Recipe(
        source=adapter.source,
        drop=list(drop),
        kept=kept,
        num_layers_before=L,
        parameters_before=params_before,
        parameters_after=parameter_count(adapter.model),
        method=method,
        budget=len(drop) if budget is None else budget,
        params=params or {},
        scores_file=str(scores_file) if scores_file else None,
        scores_sha256=sha256(scores_file) if scores_file else None,
        source_path=getattr(adapter, "path", "") or adapter.source,
        versions=_versions(),
        calibration=calibration,
        allowed=sorted(getattr(adapter, "allowed", ())),
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_model(adapter, tmp)
        write_config(adapter, tmp)
        save_processor(adapter, tmp)
        recipe.verify = verify_reload(adapter, tmp, inputs)
        recipe.save(tmp / RECIPE_FILE)
        (tmp / "README.md").write_text(model_card(recipe))
        if mergekit:
            (tmp / "mergekit.yaml").write_text(mergekit_yaml(recipe))
    return recipe


def save_model(adapter: Any, folder: Path) -> None:
    """save_pretrained; a dispatched model's offloaded weights are read back one at a time, and
    transformers' warning about that (meant for 50 GB shards) is noise here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        adapter.model.save_pretrained(folder)


def write_config(adapter: Any, folder: Path) -> None:
    """config.json as the source folder's own file with only what depth changes edited (the
    `depth_fields` of the text config, and the dtype where the weights were saved in another one),
    its layout and keys otherwise kept, plus the RoPE keys transformers 4.x reads beside a
    transformers 5 `rope_parameters` block. Without a source folder (a hub id, an in-memory
    model): save_pretrained's file, with those RoPE keys. The reload check reads this file."""
    from layercut.models.compat import transformers4_keys

    saved = json.loads((folder / "config.json").read_text())
    source = Path(getattr(adapter, "path", "") or "") / "config.json"
    config = json.loads(source.read_text()) if source.is_file() else saved
    text, pruned = _text_section(adapter, config), adapter.text_config
    for name in depth_fields(adapter):
        if not hasattr(pruned, name):
            continue
        value, old = getattr(pruned, name), text.get(name)
        if name in text or value is not None:
            text[name] = list(value) if isinstance(value, tuple) else value
        if text is not config and name in config and config[name] == old:  # a flat copy 4.x reads
            config[name] = text[name]
    dtype = saved.get("dtype", saved.get("torch_dtype"))
    for section in {id(config): config, id(text): text}.values():
        for key in ("dtype", "torch_dtype"):
            if key in section and dtype is not None:
                section[key] = dtype
        transformers4_keys(section)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _text_section(adapter: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config.json dict that holds the decoder's settings: the top level, or the
    sub-config the model's config keeps its text config under (e.g. `text_config`), where the
    file has it (configs written before transformers 5 kept some VLMs' text settings flat)."""
    text = adapter.text_config
    if text is adapter.model.config:
        return config
    key = next((k for k, v in vars(adapter.model.config).items() if v is text), None)
    section = config.get(key) if key else None
    return section if isinstance(section, dict) else config


# What a source folder's tokenizer and processor consist of (transformers 4.x and 5.x names).
PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
    "chat_template.json", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json",
)


def save_processor(adapter: Any, folder: Path) -> None:
    """The source folder's tokenizer and processor files, copied byte for byte where it has them:
    re-saving would rewrite them in the running transformers' dialect (5.x writes
    "TokenizersBackend" as the class, which transformers 4.x and llama.cpp's converter refuse).
    Otherwise (a hub id, an in-memory model) the loaded processor saves itself."""
    import shutil

    source = Path(getattr(adapter, "path", "") or "")
    files = [source / n for n in PROCESSOR_FILES] if source.is_dir() else []
    files = [f for f in files if f.is_file()]
    if any(f.name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model") for f in files):
        for f in files:
            shutil.copyfile(f, folder / f.name)
    elif adapter.processor is not None:
        adapter.processor.save_pretrained(folder)


def _versions() -> dict[str, str]:
    import transformers

    return {
        "layercut": layercut.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
