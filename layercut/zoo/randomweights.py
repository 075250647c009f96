"""`random:NAME`: seeded random weights of a real model shape, so that every command runs at real
size with nothing to download (benchmarks of memory and speed, a GPU check on an offline node).

NAME is one of `layercut.models.shapes.names()` (e.g. `random:qwen2.5-7b-instruct`). The folder is
built once under the zoo cache, in bf16 as real checkpoints ship, with the transformers default
initialisation under a fixed seed, and a byte-level BPE tokenizer of 4,096 tokens trained here on
Python's own reference prose (`pydoc_data`, always installed): its ids fit every real vocabulary.
Only the shapes are real: scores, selections and accuracies of such a model mean nothing. VLM shapes
get the tokenizer alone (no image processor), so they score and evaluate on text.
"""

from __future__ import annotations

import json
from pathlib import Path

from layercut.zoo.cache import ZooEntry, for_older_clients, materialise

PREFIX = "random:"
SEED = 0
VOCAB = 4096
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def is_random(name: str) -> bool:
    return name.startswith(PREFIX)


def resolve(name: str) -> str:
    """The cached folder of `random:NAME`, built on first use (rebuilt if the shape file changed)."""
    from layercut.models import shapes

    shape = name[len(PREFIX):]
    spec = shapes.shape(shape)  # a one-line error naming the known shapes
    source = json.dumps({"shape": spec, "seed": SEED, "dtype": "bf16", "vocab": VOCAB,
                         "tokenizer_class": "PreTrainedTokenizerFast", "rope_theta": True}, sort_keys=True)
    entry = ZooEntry(f"random/{shape}", f"random weights of {spec['source']}'s shape",
                     lambda out: build(shape, out), lambda: source)
    return materialise(entry)


def build(shape: str, out: Path) -> None:
    """Random bf16 weights of the shape (transformers' own init, seeded) and the tokenizer."""
    import torch

    from layercut.models import auto_class, family_for, shapes

    config = shapes.config(shape)
    torch.manual_seed(SEED)
    model = auto_class(family_for(config)).from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    tokenizer().save_pretrained(out)
    for_older_clients(out, "PreTrainedTokenizerFast")


def tokenizer():
    """A byte-level BPE trained on pydoc's topics (sorted, so the same text every time)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast
