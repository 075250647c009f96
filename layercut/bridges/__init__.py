"""Bridges to the evaluation harnesses: lm-eval for text LMs, lmms-eval for VLMs.

- `lm_eval_bridge.run_lm_eval(adapter, tasks)`: lm-eval on an in-memory (pruned or layer-skip
  viewed) text model.
- `lmms_eval_plugin`: the `--model layercut` backend of the lmms-eval CLI, and
  `run_lmms_eval(adapter, tasks)` for in-memory models.

`lmms_eval_manifest` is what the `lmms_eval.models` entry point (pyproject.toml) hands to
lmms-eval. lmms-eval loads every entry point whenever `lmms_eval.models` is imported, even for
`lmms-eval tasks list`, so it lives here, away from torch and transformers; the model class it
names is imported only when `--model layercut` is asked for.
"""

from __future__ import annotations

LMMS_MODEL_ID = "layercut"
LMMS_CLASS_PATH = "layercut.bridges.lmms_eval_plugin.LayercutLMMS"


def lmms_eval_manifest():
    """lmms-eval's v2 registry payload: one `ModelManifest` with a simple (non-chat) class."""
    # Imported here: this module must stay importable without lmms-eval installed.
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_MODEL_ID, simple_class_path=LMMS_CLASS_PATH)
