"""Small file helpers: outputs appear whole or not at all.

An output is written to a hidden temporary sibling `.NAME.tmp-PID@HOST-XXXX` and renamed when
whole. A run killed outright (SIGKILL, power loss) cannot remove its temporary: the next run that
writes NAME into the same folder removes those whose process is gone, and names the ones it may
not judge (another host's, or an older layercut's without an owner) in a note.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from layercut.errors import LayercutError


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it to `out` only if the block succeeds.

    A failure (or Ctrl-C, at any point until the rename) leaves no half-written output folder behind.
    """
    out = check_out(out, overwrite)
    tmp = None
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out) + _owner(), dir=out.parent))
        except OSError as exc:
            raise _unwritable(out, out.parent, exc) from None
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path for a single file; rename it to `out` on success (a failure
    or Ctrl-C at any point until then removes it)."""
    out = check_out(out, overwrite)
    tmp = None
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(out) + _owner(), dir=out.parent)
            tmp = Path(name)
            os.close(fd)
        except OSError as exc:
            raise _unwritable(out, out.parent, exc) from None
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        tmp.replace(out)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Fail at once, before any work, when `out` cannot be written: it exists (and `overwrite`
    is off), or the folder it would go in cannot be written. Leaves nothing behind."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayercutError(f"output '{out}' already exists: choose another --out or pass --overwrite")
    clear_stale(out)
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


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


notice: Callable[[str], None] = _note  # where the notes about stale temporaries go
_named: set[Path] = set()  # temporaries a note already named (each is named once per process)


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"


def _owner() -> str:
    """PID@HOST- : which process a temporary belongs to, so a later run can tell a stale one."""
    return f"{os.getpid()}@{_host()}-"


def clear_stale(out: str | Path) -> list[Path]:
    """Remove the temporaries of `out` (`.NAME.tmp-*` beside it) left by killed runs: only those
    of this output name, only when their process (recorded in the name) is gone on this host.
    Those it cannot judge are named in a note, not touched. Returns the removed paths."""
    out = Path(out)
    folder = out.absolute().parent
    prefix = _tmp_prefix(out)
    try:
        found = sorted(p for p in folder.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    removed, host = [], _host()
    for path in found:
        m = re.match(r"(\d+)@([A-Za-z0-9._-]+?)-[^-]*$", path.name[len(prefix):])
        if m is None or m.group(2) != host:
            if path in _named:
                continue
            _named.add(path)
            why = "an older layercut's" if m is None else f"from host {m.group(2)}"
            notice(f"'{path}' ({_size(path)}) looks like a killed run's temporary of '{out.name}' ({why}, "
                   "so not removed): delete it if no layercut run is writing there")
            continue
        pid = int(m.group(1))
        if _alive(pid):
            continue  # a live run (maybe this one) is writing it
        size = _size(path)
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError as exc:
            notice(f"could not remove '{path}' ({size}), a killed run's temporary: {exc.strerror or exc}")
            continue
        removed.append(path)
        notice(f"removed '{path}' ({size}): the temporary of a killed run (process {pid} is gone)")
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _size(path: Path) -> str:
    try:
        files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        total = sum(p.stat().st_size for p in files)
    except OSError:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""


def _unwritable(out: Path, folder: Path, exc: OSError) -> LayercutError:
    reason = exc.strerror or exc.__class__.__name__
    return LayercutError(f"cannot write '{out}': no new file can be made in '{folder}' ({reason}): "
                         "choose an --out in a folder you can write")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_nonfinite(cells: Iterable[tuple[str, Any]], source: str, fix: str) -> None:
    """One line naming the first (where, value) that is not a finite number, e.g. a NaN score in an
    edited file (sorting with NaN is undefined, so nothing may be chosen from it)."""
    for where, v in cells:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LayercutError(f"{source}: {where} {v!r}, not a finite number: {fix}")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
