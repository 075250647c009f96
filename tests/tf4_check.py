"""Pruned checkpoints read right by transformers 4.x (`make test-tf4`, issue 29 item 7).

transformers 4.57.6 reads the RoPE base only from a top-level `rope_theta`; a config with only
transformers 5's `rope_parameters` block loads there without a word and runs with base 10000.
Run in two interpreters:

    python tests/tf4_check.py make OUT    # layercut's venv (transformers 5): prune, record logits
    python tests/tf4_check.py check OUT   # a transformers 4.57 venv: load, compare

`make` prunes the default model (SmolLM2-135M-Instruct) and a `random:` Qwen2.5-0.5B and records
transformers 5's logits and greedy ids on fixed prompts; `check` loads the same folders with
transformers 4, asserts the same greedy ids and logits within float32 tolerance, and prints one
line per model. Exit 0 only if every model passes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

MODELS = {"smollm2-135m": [3, 11, 17, 24], "random:qwen2.5-0.5b-instruct": [5, 20]}
PROMPTS = ["The capital of France is", "Question: what is 2 plus 3?\nAnswer:"]
NEW_TOKENS = 8
TOLERANCE = 1e-3  # float32 logits; the same torch runs both versions' modeling code


def run(folder: Path, prompt_ids: list[list[int]] | None = None) -> dict:
    """The prompts' ids, the greedy ids after them and the last position's logits (float32).

    `prompt_ids` (transformers 5's) feed the model instead of this version's tokenizer: the
    checkpoint is compared on the same input, the tokenizers separately."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **{_dtype_key(): torch.float32}).eval()
    out = {"prompt_ids": [tok(p)["input_ids"] for p in PROMPTS], "ids": [], "logits": [],
           "tokenizer": type(tok).__name__}
    for ids in prompt_ids or out["prompt_ids"]:
        ids = torch.tensor([ids])
        with torch.no_grad():
            out["logits"].append(model(input_ids=ids).logits[0, -1].tolist())
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False)
        out["ids"].append(new[0, ids.shape[1]:].tolist())
    return out


def _dtype_key() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def make(out: Path) -> None:
    from layercut import api

    out.mkdir(parents=True, exist_ok=True)
    for name, drop in MODELS.items():
        folder = out / name.replace(":", "-")
        api.prune(name, drop=drop, out=folder, overwrite=True)
        (folder / "transformers5.json").write_text(json.dumps(run(folder)))
        print(f"made {folder} (dropped {drop})")


def check(out: Path) -> int:
    import transformers

    failed = 0
    for name in MODELS:
        folder = out / name.replace(":", "-")
        want = json.loads((folder / "transformers5.json").read_text())
        got = run(folder, want["prompt_ids"])
        diff = max(float((torch.tensor(a) - torch.tensor(b)).abs().max())
                   for a, b in zip(got["logits"], want["logits"]))
        same = got["ids"] == want["ids"]
        ok = same and diff <= TOLERANCE
        failed += not ok
        tokens = "the same prompt ids" if got["prompt_ids"] == want["prompt_ids"] else (
            f"other prompt ids than transformers 5's {want['tokenizer']} (compared on 5's ids)")
        print(f"{'ok  ' if ok else 'FAIL'} {name} on transformers {transformers.__version__}: greedy ids "
              f"{'equal' if same else 'differ'}, max |logit diff| {diff:.2e} (tolerance {TOLERANCE:g}); "
              f"tokenizer {got['tokenizer']}, {tokens}")
    # The control: the same folder without the top-level key, as layercut wrote it before.
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "no-rope-theta"
        shutil.copytree(out / "smollm2-135m", control)
        config = json.loads((control / "config.json").read_text())
        del config["rope_theta"]
        (control / "config.json").write_text(json.dumps(config))
        want = json.loads((control / "transformers5.json").read_text())
        got = run(control, want["prompt_ids"])
    diff = max(float((torch.tensor(a) - torch.tensor(b)).abs().max()) for a, b in zip(got["logits"], want["logits"]))
    caught = diff > TOLERANCE
    failed += not caught
    print(f"{'ok  ' if caught else 'FAIL'} control, smollm2-135m without rope_theta: max |logit diff| {diff:.2f}, "
          f"greedy ids {'equal' if got['ids'] == want['ids'] else 'differ'} (the check must see this)")
    return 1 if failed else 0


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    sys.exit(make(folder) if step == "make" else check(folder))
