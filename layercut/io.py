"""Small file helpers: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from layercut.errors import LayercutError


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it to `out` only if the block succeeds.

    A failure (or Ctrl-C) leaves no half-written output folder behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)


@contextlib.contextmanager
def atomic_file(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path for a single file; rename it to `out` on success."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    tmp.replace(out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
