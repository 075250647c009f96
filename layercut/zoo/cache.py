"""Where zoo models live once built, and how a build is kept fresh.

Each entry is materialised once as a plain HF folder under the user's cache. A built folder
records what it was built from (`STAMP`: e.g. the package version, the committed weights'
digest); a folder built from other sources, e.g. before an upgrade of layercut's tiny-llava
weights, is rebuilt on next use instead of being used stale. Two processes that ask for the same
entry at once (two pytest workers, two users' jobs on one node) build it once: the second waits on
a lock file beside the folder and then finds it built.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from layercut.io import atomic_dir

STAMP = "layercut-zoo.json"  # in each built folder: {"source": ZooEntry.source()}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[Path], None]
    source: Callable[[], str]  # what a build is made from; another source means rebuild


def cache_dir() -> Path:
    """`$LAYERCUT_CACHE`, else `$XDG_CACHE_HOME/layercut`, else `~/.cache/layercut`."""
    if os.environ.get("LAYERCUT_CACHE"):
        return Path(os.environ["LAYERCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "layercut"


def state(entry: ZooEntry) -> str:
    """'built', 'stale' (built from other sources) or 'missing'."""
    path = cache_dir() / entry.name
    if not (path / "config.json").is_file():
        return "missing"
    try:
        source = json.loads((path / STAMP).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return "stale"
    return "built" if source == entry.source() else "stale"


def materialise(entry: ZooEntry) -> str:
    """The entry's cached folder, built on first use and rebuilt when stale."""
    path = cache_dir() / entry.name
    if state(entry) == "built":
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / f".{entry.name}.lock"):
        if state(entry) != "built":  # another process may have built it while we waited
            with atomic_dir(path, overwrite=True) as tmp:
                entry.build(tmp)
                (tmp / STAMP).write_text(json.dumps({"source": entry.source()}) + "\n")
    return str(path)


def for_older_clients(folder: Path, tokenizer_class: str) -> None:
    """Make a folder written by transformers 5 read right by transformers 4.x and llama.cpp's
    converter: the RoPE keys 4.x reads beside `rope_parameters` (without them it silently uses
    another base), and a tokenizer class both know (5.x writes "TokenizersBackend")."""
    from layercut.models.compat import transformers4_keys

    config = json.loads((folder / "config.json").read_text())
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            transformers4_keys(section)
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = tokenizer_class
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2, ensure_ascii=False) + "\n")
