"""Visual questions for the zoo's tiny VLM: small 64x64 pictures, short answers, seeded, offline.

Two families of five tasks each. Every question has a closed candidate set, so it can be scored
by candidate log-likelihood, by the NLL of the gold answer and by greedy exact match.

math-vision (reading quantities, never arithmetic in the language model):
- count: 1-9 small shapes scattered on white, "How many shapes are in the picture?"
- bar-max: four bars of 1-9 units and a dashed line, "What is the value of the tallest bar?"
- bar-argmax: "Which bar is the tallest: first, second, third or fourth?"
- bar-diff: "What is the difference between the tallest and the shortest bar?" (0-8)
- bar-above: "How many bars are taller than the dashed line?" (0-4)

general-vision:
- color / shape / yesno: easy-VQA (V. Zhou, MIT) open colour questions, open shape questions and
  yes/no questions with as many yes as no.
- position: one shape near an edge, "Where is the shape: left, right, top or bottom?"
- size: one shape, big or small, "Is the shape big or small?"

Splits train / calib / test are disjoint by construction: a rendered scene goes to the split its
content hash falls in (one in eight test, one in eight calib, the rest train), so no picture is in
two splits; easy-VQA's train file is the train split and its test file's images are halved into
calib and test by image id. `scene_key` of every document names its picture for checking.

Each sample also carries `caption`: the words the picture answers (e.g. the four bar values, the
tallest's rank, the difference, the count above the line), which the trainer's first stage uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from layercut.errors import LayercutError
from layercut.extras import package_dir

SIZE = 64  # pixels per side
SPLITS = ("train", "calib", "test")
FAMILIES = {
    "math-vision": ("count", "bar-max", "bar-argmax", "bar-diff", "bar-above"),
    "general-vision": ("color", "shape", "yesno", "position", "size"),
}
TASK_FAMILY = {t: f for f, ts in FAMILIES.items() for t in ts}
DIGITS = tuple(str(i) for i in range(10))
ORDINALS = ("first", "second", "third", "fourth")
EVQA_COLORS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
EVQA_SHAPES = ("circle", "rectangle", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
SIZES = ("big", "small")
CHOICES = {
    "count": DIGITS[1:],
    "bar-max": DIGITS[1:],
    "bar-argmax": ORDINALS,
    "bar-diff": DIGITS[:9],
    "bar-above": DIGITS[:5],
    "color": EVQA_COLORS,
    "shape": EVQA_SHAPES,
    "yesno": ("yes", "no"),
    "position": POSITIONS,
    "size": SIZES,
}
# scene colours for rendered pictures (named so captions can say them)
PALETTE = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "black": (20, 20, 20), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")


@dataclass
class VisualQA:
    task: str
    question: str
    answer: str
    image: "object"  # a PIL.Image (RGB, 64x64)
    scene_key: str  # identifies the picture; decides its split
    caption: list[str] = field(default_factory=list)

    @property
    def choices(self) -> list[str]:
        return list(CHOICES[self.task])


def split_of(key: str) -> str:
    """The split a rendered scene belongs to, by a stable hash of its content."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 8
    return "test" if h == 0 else "calib" if h == 1 else "train"


def make(task: str, rng: random.Random, split: str) -> VisualQA:
    """One question of `task` whose picture belongs to `split`."""
    if task not in TASK_FAMILY:
        raise LayercutError(f"unknown visual task '{task}': use one of {', '.join(TASK_FAMILY)}")
    if split not in SPLITS:
        raise LayercutError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    if task in ("color", "shape", "yesno"):
        return _easy_vqa(task, rng, split)
    for _ in range(10_000):
        qa = _RENDER[task](rng)
        if split_of(qa.scene_key) == split:
            return qa
    raise LayercutError(f"could not draw a {task} scene in split {split}")  # pragma: no cover


def documents(family_or_task: str, split: str, n: int, seed: int = 0) -> list[VisualQA]:
    """n questions, round-robin over a family's tasks (or one task), deterministic for a seed,
    no picture twice."""
    tasks = FAMILIES.get(family_or_task) or (family_or_task,)
    rngs = {t: random.Random(f"layercut/vision/{t}/{split}/{seed}") for t in tasks}
    out, seen = [], set()
    while len(out) < n:
        before = len(out)
        for t in tasks:
            if len(out) >= n:
                break
            for _ in range(1000):
                qa = make(t, rngs[t], split)
                if (t, qa.scene_key, qa.question) not in seen:
                    seen.add((t, qa.scene_key, qa.question))
                    out.append(qa)
                    break
        if len(out) == before:  # pragma: no cover (the pools are far larger than any n used)
            raise LayercutError(f"only {len(out)} distinct {family_or_task} questions in {split}")
    return out


# --- rendered scenes -----------------------------------------------------------------------


def _canvas():
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (SIZE, SIZE), "white")
    return im, ImageDraw.Draw(im)


def _shape(d, kind: str, x: float, y: float, r: float, color) -> None:
    if kind == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=color)
    elif kind == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=color)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=color)


def _count(rng: random.Random) -> VisualQA:
    k, r = rng.randint(1, 9), 4
    spots: list[tuple[int, int]] = []
    while len(spots) < k:
        x, y = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
        if all((x - u) ** 2 + (y - v) ** 2 > (2 * r + 4) ** 2 for u, v in spots):
            spots.append((x, y))
    objs = [(rng.choice(SHAPES), rng.choice(list(PALETTE))) for _ in spots]
    im, d = _canvas()
    for (x, y), (kind, c) in zip(spots, objs):
        _shape(d, kind, x, y, r, PALETTE[c])
    return VisualQA("count", "How many shapes are in the picture?", str(k), im,
                    f"count:{spots}:{objs}", [str(k)])


def _bars(rng: random.Random, task: str) -> VisualQA:
    values = [rng.randint(1, 9) for _ in range(4)]
    line = rng.randint(1, 8)  # drawn at line + 0.5 units: never level with a bar top
    color = rng.choice([c for c in PALETTE if c != "black"])
    unit, base = 6, SIZE - 5
    im, d = _canvas()
    d.line([(3, base), (SIZE - 3, base)], fill=(0, 0, 0))
    for i, v in enumerate(values):
        x0 = 6 + 14 * i
        d.rectangle([x0, base - v * unit, x0 + 9, base - 1], fill=PALETTE[color])
    y = base - (line + 0.5) * unit
    for x in range(2, SIZE - 2, 4):  # dashed
        d.line([(x, y), (x + 1, y)], fill=(0, 0, 0))
    top = max(values)
    argmax = ORDINALS[values.index(top)]
    diff = top - min(values)
    above = sum(v > line + 0.5 for v in values)
    caption = [str(v) for v in values] + [str(top), argmax, str(diff), str(above)]
    key = f"bars:{values}:{line}:{color}"
    if task == "bar-max":
        q, a = "What is the value of the tallest bar?", str(top)
    elif task == "bar-argmax":
        q, a = "Which bar is the tallest: first, second, third or fourth?", argmax
    elif task == "bar-diff":
        q, a = "What is the difference between the tallest and the shortest bar?", str(diff)
    else:
        q, a = "How many bars are taller than the dashed line?", str(above)
    return VisualQA(task, q, a, im, key, caption)


def _bars_unique(task: str):
    def render(rng: random.Random) -> VisualQA:
        while True:
            qa = _bars(rng, task)
            values = [int(v) for v in qa.caption[:4]]
            if task != "bar-argmax" or values.count(max(values)) == 1:
                return qa
    return render


def _position(rng: random.Random) -> VisualQA:
    where = rng.choice(POSITIONS)
    r = rng.randint(5, 8)
    near, mid = r + 3 + rng.randint(0, 3), SIZE / 2 + rng.randint(-8, 8)
    x, y = {"left": (near, mid), "right": (SIZE - 1 - near, mid),
            "top": (mid, near), "bottom": (mid, SIZE - 1 - near)}[where]
    kind, color = rng.choice(SHAPES), rng.choice(list(PALETTE))
    im, d = _canvas()
    _shape(d, kind, x, y, r, PALETTE[color])
    return VisualQA("position", "Where is the shape: left, right, top or bottom?", where, im,
                    f"position:{where}:{x}:{y}:{r}:{kind}:{color}", [color, kind, where])


def _size(rng: random.Random) -> VisualQA:
    size = rng.choice(SIZES)
    r = rng.randint(17, 24) if size == "big" else rng.randint(4, 8)
    x, y = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
    kind, color = rng.choice(SHAPES), rng.choice(list(PALETTE))
    im, d = _canvas()
    _shape(d, kind, x, y, r, PALETTE[color])
    return VisualQA("size", "Is the shape big or small?", size, im,
                    f"size:{x}:{y}:{r}:{kind}:{color}", [color, kind, size])


_RENDER = {
    "count": _count,
    "bar-max": _bars_unique("bar-max"),
    "bar-argmax": _bars_unique("bar-argmax"),
    "bar-diff": _bars_unique("bar-diff"),
    "bar-above": _bars_unique("bar-above"),
    "position": _position,
    "size": _size,
}


# --- easy-VQA ------------------------------------------------------------------------------


def _easy_vqa(task: str, rng: random.Random, split: str) -> VisualQA:
    from PIL import Image

    pool = _evqa_pool(split)[task]
    q, a, folder, image_id = pool[rng.randrange(len(pool))]
    color, shape = _evqa_attributes(folder).get(image_id, ("shape", "shape"))
    with Image.open(Path(folder) / "images" / f"{image_id}.png") as im:
        image = im.convert("RGB")
    return VisualQA(task, q[:1].upper() + q[1:], a, image,
                    f"easy-vqa:{Path(folder).name}:{image_id}", [color, shape])


@functools.lru_cache(maxsize=None)
def _evqa_pool(split: str) -> dict[str, list[tuple[str, str, str, int]]]:
    """Per task: (question, answer, folder, image id); yes/no balanced by dropping extras."""
    part = "train" if split == "train" else "test"
    folder = _easy_vqa_dir() / part
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    out: dict[str, list] = {"color": [], "shape": [], "yes": [], "no": []}
    for q, a, image_id in rows:
        if split != "train" and _evqa_test_half(image_id) != split:
            continue
        key = "color" if a in EVQA_COLORS else "shape" if a in EVQA_SHAPES else a
        out[key].append((q, a, str(folder), image_id))
    m = min(len(out["yes"]), len(out["no"]))
    pick = random.Random(f"layercut/vision/yesno/{split}")
    yesno = pick.sample(out.pop("yes"), m) + pick.sample(out.pop("no"), m)
    yesno.sort(key=lambda r: (r[3], r[0]))
    out["yesno"] = yesno
    return out


def _evqa_test_half(image_id: int) -> str:
    h = int(hashlib.sha256(f"easy-vqa/test/{image_id}".encode()).hexdigest()[:8], 16)
    return "test" if h % 2 == 0 else "calib"


@functools.lru_cache(maxsize=None)
def _evqa_attributes(folder: str) -> dict[int, tuple[str, str]]:
    """(colour, shape) of every picture, read off its open questions."""
    rows = json.loads((Path(folder) / "questions.json").read_text(encoding="utf-8"))
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, i in rows:
        if a in EVQA_COLORS:
            color[i] = a
        elif a in EVQA_SHAPES:
            shape[i] = a
            for c in EVQA_COLORS:  # "what is the blue shape?"
                if f" {c} " in f" {q} ":
                    color[i] = c
    for q, a, i in rows:  # yes/no questions fill the rest ("is there a red shape?" -> yes)
        if a == "yes" and " not " not in f" {q} ":
            for c in EVQA_COLORS:
                if f" {c} " in f" {q} ":
                    color.setdefault(i, c)
            for s in EVQA_SHAPES:
                if f" {s}" in f" {q}":
                    shape.setdefault(i, s)
    return {i: (color.get(i, "shape"), shape.get(i, "shape")) for i in set(color) | set(shape)}


def _easy_vqa_dir() -> Path:
    return package_dir("easy_vqa", "the visual tasks") / "data"


def calibration_samples(n_per_domain: int, seed: int, split: str, image_dir: Path) -> list:
    """Domain-tagged chat samples with their pictures written to `image_dir`: math-vision questions
    as domain "math", general-vision as "general" (the answer as the assistant turn)."""
    from layercut.data import Sample

    samples = []
    for domain, family in (("math", "math-vision"), ("general", "general-vision")):
        for i, qa in enumerate(documents(family, split, n_per_domain, seed)):
            path = Path(image_dir) / f"{family}-{split}-{seed}-{i}.png"
            qa.image.save(path)
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": qa.question}]},
                        {"role": "assistant", "content": qa.answer}]
            samples.append(Sample(domain, messages=messages, images=[path],
                                  meta={"id": f"{qa.task}/{split}/{i}", "source": "vision",
                                        "task": qa.task, "question": qa.question,
                                        "answer": qa.answer, "scene_key": qa.scene_key}))
    return samples
