"""Device maps for loading a model across devices: accelerate's strategies, or a JSON file or
dict {module name: device}, every device checked before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from layercut.errors import LayercutError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(device_map: str | dict[str, Any]) -> str | dict[str, Any]:
    """A strategy name passes through; a JSON file becomes its dict; every device is checked."""
    if isinstance(device_map, str) and device_map in DEVICE_MAPS:
        return device_map
    if isinstance(device_map, str):
        path = Path(device_map)
        if not path.is_file():
            raise LayercutError(
                f"--device-map '{device_map}': use {' | '.join(DEVICE_MAPS)} or a JSON file "
                "mapping module names to devices"
            )
        try:
            device_map = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LayercutError(f"device map '{path}' is not JSON ({exc}): fix the file") from None
    if not isinstance(device_map, dict) or not device_map:
        raise LayercutError("a device map must be a JSON object {\"module name\": device}: fix the file")
    for module, device in device_map.items():
        ok = isinstance(device, int) and not isinstance(device, bool) and device >= 0
        if isinstance(device, str):
            try:
                ok = device == "disk" or torch.device(device) is not None
            except (RuntimeError, ValueError):
                ok = False
        if not ok:
            raise LayercutError(
                f"device map: '{module}' -> {device!r} is not a device: use a GPU index, "
                "'cuda:N', 'cpu' or 'disk'"
            )
    return device_map


def temporary_offload_folder() -> Path:
    """A folder for weights a device map puts on 'disk', removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="layercut-offload-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
