"""What a `--calib` argument names, turned into samples: a JSONL file, a list of samples already
made, or a built-in set `builtin:text|image|all|vision[:N]` (N samples per domain, default 32).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from layercut.data import Sample, load_calib
from layercut.errors import LayercutError


def calibration(calib: str | Path | list[Sample], seed: int = 0) -> list[Sample]:
    """Samples from a JSONL file, a list, or a built-in set named `builtin:KIND[:N]`."""
    if isinstance(calib, list):
        if not calib:
            raise LayercutError("the calibration set is empty: give at least one sample")
        return calib
    calib = str(calib)
    if not calib.startswith("builtin:"):
        return load_calib(calib)
    from layercut.data import builtin

    parts = calib.split(":")
    kind = parts[1] if len(parts) > 1 else "text"
    if kind not in builtin.KINDS:
        raise LayercutError(f"unknown built-in set '{calib}': use one of "
                            + ", ".join(f"builtin:{k}" for k in builtin.KINDS))
    try:
        n = int(parts[2]) if len(parts) > 2 else 32
    except ValueError:
        raise LayercutError(f"'{calib}': the count after the kind must be a whole number") from None
    image_dir = None
    if kind != "text":
        # The rendered images must outlive this call (they are encoded later); gone at exit.
        image_dir = Path(tempfile.mkdtemp(prefix="layercut-calib-"))
        atexit.register(shutil.rmtree, image_dir, ignore_errors=True)
    return builtin.build_samples(kind=kind, n_per_domain=n, seed=seed, split="calib", image_dir=image_dir)
