"""Calibration data: domain-tagged samples in a JSONL file, loaded and checked line by line.

Format: one JSON object per line (blank lines are skipped).

    {"domain": "math", "text": "Question: ...\\nAnswer: ...", "image": "images/bar-01.png"}
    {"domain": "general", "text": "Plain prose to score on."}
    {"domain": "math", "messages": [{"role": "user", "content": [{"type": "image"},
        {"type": "text", "text": "What is the tallest bar?"}]},
        {"role": "assistant", "content": "7"}], "images": ["a.png"]}

- "domain" (required): a non-empty string; scores are computed per domain ("math", "general", ...).
- exactly one of "text" (a non-empty string) or "messages" (chat form: a non-empty list of
  {"role": str, "content": str | [{"type": "text", "text": str} | {"type": "image"}, ...]}).
- "image" (a path or null) or "images" (a list of paths), not both. Relative paths are resolved
  against the folder holding the JSONL file. A "messages" sample has exactly one image per
  {"type": "image"} item, in order.
- any other key ("id", "source", "question", "answer", ...) is kept verbatim in `Sample.meta`.

`load_calib` checks every line (JSON, fields, image files that exist and decode) and raises a
one-line `LayercutError` naming the file, the line number and the fix. `write_calib` is its
inverse: image paths inside the file's folder are written relative to it, so the file and its
image folder can be moved together.

Built-in sets made from offline data live in `layercut.data.builtin`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from layercut.errors import LayercutError
from layercut.io import atomic_file

# Keys with a meaning in the format; everything else goes to `Sample.meta`.
RESERVED = ("domain", "text", "messages", "image", "images")


@dataclass
class Sample:
    domain: str  # which score this sample counts towards, e.g. "math" or "general"
    text: str | None = None  # plain text form ...
    messages: list[dict] | None = None  # ... or chat form; exactly one of the two is set
    images: list[Path] = field(default_factory=list)  # absolute paths, in prompt order
    meta: dict = field(default_factory=dict)  # every other key of the JSON object


def load_calib(path: str | Path) -> list[Sample]:
    """Read and check a calibration JSONL file; every problem is a one-line LayercutError."""
    path = Path(path)
    if not path.exists():
        raise LayercutError(
            f"calibration file '{path}' not found: check the path, or write a built-in set with "
            "`layercut calib build --out FILE`"
        )
    if not path.is_file():
        raise LayercutError(f"calibration file '{path}' is not a file: pass the .jsonl file itself")
    folder = Path(os.path.normpath(path.parent.absolute()))
    checked: set[Path] = set()  # images already opened (samples often share one)
    samples = []
    raw = path.read_bytes()
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # UTF-8 byte-order mark
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, lineno, "not UTF-8 text: save the file as UTF-8")
        if not line.strip():
            continue
        samples.append(_parse_line(line, path, lineno, folder, checked))
    if not samples:
        raise LayercutError(f"{path}: no samples (the file is empty): add one JSON object per line")
    return samples


def write_calib(samples: list[Sample], path: str | Path) -> None:
    """Write samples as JSONL (atomically, replacing `path`); `load_calib` reads them back equal."""
    path = Path(path)
    folder = Path(os.path.normpath(path.parent.absolute()))
    lines = []
    for i, s in enumerate(samples):
        clash = [k for k in s.meta if k in RESERVED]
        if clash:
            raise LayercutError(
                f"sample {i}: meta key '{clash[0]}' is a reserved field: rename it in Sample.meta"
            )
        if (s.text is None) == (s.messages is None):
            raise LayercutError(f"sample {i}: set exactly one of Sample.text and Sample.messages")
        obj: dict = {"domain": s.domain}
        if s.messages is not None:
            obj["messages"] = s.messages
        else:
            obj["text"] = s.text
        images = [_relative(Path(p), folder) for p in s.images]
        if len(images) == 1 and s.messages is None:
            obj["image"] = images[0]
        elif images:
            obj["images"] = images
        obj.update(s.meta)
        lines.append(json.dumps(obj, ensure_ascii=False))
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def by_domain(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Group samples by domain, domains in order of first appearance."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    return groups


# --- helpers -------------------------------------------------------------------------------


def _fail(path: Path, lineno: int, message: str) -> NoReturn:
    text = f"{path} line {lineno}: {message}"
    raise LayercutError(" ".join(text.split()))  # always one line, whatever the JSON held


def _parse_line(line: str, path: Path, lineno: int, folder: Path, checked: set[Path]) -> Sample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        _fail(path, lineno, f"not valid JSON ({e}): fix or remove the line")
    if not isinstance(obj, dict):
        _fail(path, lineno, f"expected a JSON object, got {type(obj).__name__}: "
                            'write {"domain": ..., "text": ...} on each line')

    domain = obj.get("domain")
    if "domain" not in obj:
        _fail(path, lineno, 'missing "domain": add e.g. "domain": "math"')
    if not isinstance(domain, str) or not domain.strip():
        _fail(path, lineno, f'"domain" must be a non-empty string, got {json.dumps(domain)}: '
                            'use e.g. "math" or "general"')

    text, messages = obj.get("text"), obj.get("messages")
    if text is None and messages is None:
        _fail(path, lineno, 'neither "text" nor "messages": give the sample one of them')
    if text is not None and messages is not None:
        _fail(path, lineno, 'both "text" and "messages": keep only one of them')
    if text is not None and (not isinstance(text, str) or not text.strip()):
        _fail(path, lineno, '"text" must be a non-empty string: fill it in or drop the line')
    n_image_items = None
    if messages is not None:
        n_image_items = _check_messages(messages, path, lineno)

    if "image" in obj and "images" in obj:
        _fail(path, lineno, 'both "image" and "images": put all paths in "images"')
    if "images" in obj:
        raw_images = obj["images"]
        if not isinstance(raw_images, list):
            _fail(path, lineno, '"images" must be a list of paths: write "images": ["a.png", ...]')
    else:
        raw_images = [] if obj.get("image") is None else [obj["image"]]
    images = []
    for p in raw_images:
        if not isinstance(p, str) or not p.strip():
            _fail(path, lineno, f"image path {json.dumps(p)} is not a non-empty string: "
                                "fix the path")
        images.append(_check_image(p, path, lineno, folder, checked))

    if n_image_items is not None and n_image_items != len(images):
        _fail(path, lineno, f'messages hold {n_image_items} {{"type": "image"}} item(s) but '
                            f'{len(images)} image(s) are given: list one path in "images" per '
                            "image item, in order")

    meta = {k: v for k, v in obj.items() if k not in RESERVED}
    return Sample(domain=domain, text=text, messages=messages, images=images, meta=meta)


def _check_messages(messages, path: Path, lineno: int) -> int:
    """Check the chat structure; return how many {"type": "image"} items it holds."""
    fix = 'write [{"role": "user", "content": "..."}, ...]'
    if not isinstance(messages, list) or not messages:
        _fail(path, lineno, f'"messages" must be a non-empty list: {fix}')
    n_images = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            _fail(path, lineno, f"{where} is not an object: {fix}")
        if not isinstance(m.get("role"), str) or not m["role"].strip():
            _fail(path, lineno, f'{where} has no "role" string: add e.g. "role": "user"')
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            _fail(path, lineno, f'{where}["content"] must be a string or a non-empty list of '
                                '{"type": "text", "text": ...} / {"type": "image"} items')
        for j, item in enumerate(content):
            at = f'{where}["content"][{j}]'
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "image":
                n_images += 1
            elif kind == "text":
                if not isinstance(item.get("text"), str):
                    _fail(path, lineno, f'{at} has no "text" string: add "text": "..."')
            else:
                _fail(path, lineno, f'{at} must be {{"type": "text", "text": ...}} or '
                                    '{"type": "image"}: fix the item')
    return n_images


def _check_image(p: str, path: Path, lineno: int, folder: Path, checked: set[Path]) -> Path:
    resolved = Path(os.path.normpath(folder / p))  # an absolute p stays as it is
    if resolved in checked:
        return resolved
    if not resolved.is_file():
        _fail(path, lineno, f"image '{p}' not found (relative paths are resolved against "
                            f"{folder}): fix the path")
    from PIL import Image  # imported here: text-only use never needs it

    try:
        with Image.open(resolved) as im:
            im.verify()  # structure and checksums
        with Image.open(resolved) as im:
            im.load()  # full decode: catches truncated files that verify() lets through
    except Exception as e:  # PIL raises many types for bad files
        _fail(path, lineno, f"image '{p}' is not a readable image ({type(e).__name__}: {e}): "
                            "replace the file or fix the path")
    checked.add(resolved)
    return resolved


def _relative(p: Path, folder: Path) -> str:
    p = Path(os.path.normpath(p.absolute()))
    return p.relative_to(folder).as_posix() if p.is_relative_to(folder) else str(p)
