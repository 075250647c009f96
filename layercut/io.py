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
    out = check_out(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise _unwritable(out, out.parent, exc) from None
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
    out = check_out(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    except OSError as exc:
        raise _unwritable(out, out.parent, exc) from None
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())
    tmp.replace(out)


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Fail at once, before any work, when `out` cannot be written: it exists (and `overwrite`
    is off), or the folder it would go in cannot be written. Leaves nothing behind."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders still to make will be made inside this one
    try:
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder")
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _unwritable(out, folder, exc) from None
    return out


def _unwritable(out: Path, folder: Path, exc: OSError) -> LayercutError:
    reason = exc.strerror or exc.__class__.__name__
    return LayercutError(f"cannot write '{out}': no new file can be made in '{folder}' ({reason}): "
                         "choose an --out in a folder you can write")


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
