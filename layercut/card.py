"""The pruned checkpoint's own documents, generated from its recipe (as mergekit's card.py does):
the model card (README.md), its healing section, and the equivalent mergekit passthrough recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECIPE_FILE = "layercut_recipe.json"  # the recipe itself, beside the weights


def kept_ranges(kept: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of kept layers as half-open [start, end) ranges."""
    ranges: list[tuple[int, int]] = []
    for i in kept:
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


def mergekit_yaml(recipe: Any) -> str:
    """The equivalent mergekit passthrough recipe (slices of the kept layer runs)."""
    lines = ["# layercut: the same pruning as a mergekit passthrough merge", "slices:"]
    for start, end in kept_ranges(recipe.kept):
        lines += [
            "  - sources:",
            f"      - model: {recipe.source_path or recipe.source}",
            f"        layer_range: [{start}, {end}]",
        ]
    lines += ["merge_method: passthrough", "dtype: float32", ""]
    return "\n".join(lines)


def model_card(recipe: Any) -> str:
    """README.md of the pruned checkpoint, generated from its recipe."""
    r = recipe
    pct = 100.0 * (1 - r.parameters_after / r.parameters_before) if r.parameters_before else 0.0
    lines = [
        "---",
        "tags: [layercut, depth-pruning]",
        f"base_model: {r.source}",
        "---",
        f"# {Path(r.source).name or r.source} with {len(r.drop)} decoder layers removed",
        "",
        f"Pruned with layercut {r.versions.get('layercut', '')}.",
        "",
        "| | |",
        "|---|---|",
        f"| source model | `{r.source}` |",
        f"| method | `{r.method}` |",
        f"| budget | {r.budget} |",
        f"| dropped layers (original indices) | {', '.join(map(str, r.drop)) or 'none'} |",
        f"| decoder layers | {r.num_layers_before} → {len(r.kept)} |",
        f"| parameters | {r.parameters_before:,} → {r.parameters_after:,} (−{pct:.1f}%) |",
    ]
    if r.params:
        lines.append(f"| method parameters | `{json.dumps(r.params, sort_keys=True)}` |")
    if r.allowed:
        lines.append(f"| guards lifted (droppable on request) | {', '.join(r.allowed)} |")
    if r.scores_file:
        lines.append(f"| layer scores | `{r.scores_file}` (sha256 `{r.scores_sha256[:16]}…`) |")
    v = r.verify
    if v:
        lines.append(
            f"| reload check | missing weights {v['missing_keys']}, max logit diff "
            f"{v['max_abs_logit_diff']} on {v['probe_tokens']} tokens"
            f"{' with an image' if v.get('probe_has_image') else ''} |"
        )
    lines += [
        f"| versions | {', '.join(f'{k} {x}' for k, x in r.versions.items())} |",
        "",
        "Kept layers, in order (original indices): " + ", ".join(map(str, r.kept)),
        "",
    ]
    if r.heal:
        lines += heal_section(r.heal, r.heal.get("verify", {}))
    lines += [
        f"The full recipe is in `{RECIPE_FILE}`; load the model with the same Auto class as the source.",
        "",
    ]
    return "\n".join(lines)


def heal_section(heal: dict[str, Any], verify: dict[str, Any]) -> list[str]:
    """Model-card lines saying what `layercut heal` trained, on what, for how long, and the result."""
    h = heal

    def nll(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "not measured"

    if h.get("mode") == "interleaved":
        how = (f"After pruning, layers {h['train_layers']} (original indices) were fine-tuned in full, every "
               "other weight frozen (interleaved healing, as INTERLACE does).")
        row = f"| trained | layers {h['train_layers']} in full ({h['trainable_parameters']:,} parameters) |"
    else:
        how = (f"After pruning, the {h['layers']} kept decoder layers were healed with a LoRA adapter "
               "(merged into the weights; no adapter file is needed).")
        row = (f"| LoRA | rank {h['rank']}, alpha {h['alpha']:g}, on {h['target_modules']} linear modules "
               f"({h['trainable_parameters']:,} trained parameters) |")
    lines = [
        "## Healing",
        "",
        how,
        "",
        "| | |",
        "|---|---|",
        f"| healed from | `{h.get('source', '')}` |",
        f"| data | `{h['data']}` ({h['samples']} samples) |",
        row,
        (f"| training | {h['steps']} steps, batch {h['batch_size']}, max length {h['max_length']}, "
         f"lr {h['lr']:g}, seed {h['seed']}, {h['tokens_seen']:,} target tokens |"),
        f"| time | {h['seconds']:.1f} s |",
        f"| calibration NLL before | {nll(h.get('calib_nll_before', {}))} |",
        f"| calibration NLL after | {nll(h.get('calib_nll_after', {}))} |",
    ]
    if verify:
        lines.append(
            f"| reload check | missing weights {verify['missing_keys']}, max logit diff "
            f"{verify['max_abs_logit_diff']} on {verify['probe_tokens']} tokens |"
        )
    return lines + [""]


def heal_card(source: str, heal: dict[str, Any], verify: dict[str, Any]) -> str:
    """README.md of a healed checkpoint whose source has no layercut recipe."""
    lines = ["---", "tags: [layercut, healed]", f"base_model: {source}", "---",
             f"# {Path(source).name or source}, healed", ""]
    return "\n".join(lines + heal_section({**heal, "source": source}, verify))
