"""The built-in image sets: figures rendered here and photos from packaged data.

- math (`math_samples`): 192 px PNG figures with a reading question each, one family in turn
  (`_FAMILIES`): bar and line charts, triangles with two marked angles and shape counts (all
  generated here, no third-party content), and pairs of handwritten digits from scikit-learn's
  `load_digits()` file (UCI "Optical Recognition of Handwritten Digits", CC BY 4.0; cite
  Alpaydin & Kaynak, 1998). Digits are split by a stable hash of their index (`digit_pool`),
  the other figures by a stable hash of everything drawn in them.
- general (`general_samples`): easy-VQA (V. Zhou, MIT) questions over its 64 px shapes, train
  files for calib and test files for eval (`easy_vqa_pool`), and a quarter of the set from
  scikit-image's bundled photos (`photo_pool`, split by the `_PHOTOS` table) with hand-written
  questions, shrunk to at most 224 px; only photos that `skimage.data` states as public
  domain, CC0 or "no known copyright restrictions" are used.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import random
import re
import shutil
from pathlib import Path

from layercut.data import Sample, pools
from layercut.errors import LayercutError
from layercut.extras import package_dir

IMAGE_SIZE = 192  # rendered figures, pixels per side
PHOTO_MAX = 224  # scikit-image photos are shrunk to fit this


# --- image: math (rendered) ----------------------------------------------------------------


def math_samples(n: int, seed: int, split: str, image_dir: Path) -> list[Sample]:
    rng = pools.rng(seed, split, "image-math")
    families = list(_FAMILIES)
    samples, seen = [], set()
    for i in range(n):
        family = families[i % len(families)]
        for _ in range(10_000):  # rejection: keep content that belongs to this split, unseen
            key, question, answer, draw, *extra = _FAMILIES[family](rng, split)
            if key not in seen and (family == "digits" or pools.hash_split(key) == split):
                break
        else:
            raise LayercutError(f"could not draw {n} distinct {family} figures: "
                                "lower n_per_domain")
        seen.add(key)
        sample_id = f"{family}/{pools.digest(key)[:12]}"
        path = image_dir / _file_name(sample_id)
        draw(path)
        source = "sklearn-digits" if family == "digits" else "rendered"
        samples.append(_image_sample("math", question, answer, path, sample_id, source, split,
                                     family=family, **(extra[0] if extra else {})))
    return samples


def _bar_chart(rng: random.Random, split: str):
    k = rng.randint(4, 6)
    values = [rng.randint(1, 10) for _ in range(k)]
    labels = "ABCDEF"[:k]
    color = rng.choice(_COLORS)
    kind = rng.choice(["max", "min", "count", "bar"])
    if kind == "max" and values.count(max(values)) == 1:
        q, a = "What is the value of the tallest bar?", max(values)
    elif kind == "min" and values.count(min(values)) == 1:
        q, a = "What is the value of the shortest bar?", min(values)
    elif kind == "count":
        t = rng.randint(3, 7)
        values = [v + 1 if v == t else v for v in values]  # no bar exactly at the threshold
        q, a = f"How many bars are taller than {t}?", sum(v > t for v in values)
    else:
        j = rng.randrange(k)
        q, a = f"What is the value of bar {labels[j]}?", values[j]
    key = f"bar:{values}:{color}:{q}"

    def draw(path: Path) -> None:
        fig, ax = _figure()
        ax.bar(list(labels), values, color=color, width=0.6, zorder=2)
        _value_axis(ax, 11)
        fig.savefig(path)

    return key, q, str(a), draw


def _line_chart(rng: random.Random, split: str):
    k = rng.randint(5, 7)
    xs = list(range(1, k + 1))
    values = [rng.randint(0, 10) for _ in xs]
    color = rng.choice(_COLORS)
    kind = rng.choice(["at", "max", "argmin"])
    if kind == "max":
        q, a = "What is the highest value of the line?", max(values)
    elif kind == "argmin" and values.count(min(values)) == 1:
        q, a = "At which x is the line lowest?", xs[values.index(min(values))]
    else:
        x = rng.choice(xs)
        q, a = f"What is the value of the line at x = {x}?", values[x - 1]
    key = f"line:{values}:{color}:{q}"

    def draw(path: Path) -> None:
        fig, ax = _figure()
        ax.plot(xs, values, color=color, marker="o", markersize=3, linewidth=1.5, zorder=2)
        ax.set_xticks(xs)
        ax.set_xlim(0.5, k + 0.5)
        _value_axis(ax, 11)
        fig.savefig(path)

    return key, q, str(a), draw


def _triangle(rng: random.Random, split: str):
    while True:
        a, b = rng.randint(25, 110), rng.randint(25, 110)
        if 180 - a - b >= 25:
            break
    angles = [a, b, 180 - a - b]
    hidden = rng.randrange(3)
    key = f"triangle:{angles}:{hidden}"
    q = "Two angles of the triangle are marked. What is the missing angle, in degrees?"

    def draw(path: Path) -> None:
        # base from (0,0) to (1,0); angles[0] at the first corner, angles[1] at the second
        A, B, C = (math.radians(x) for x in angles)
        side = math.sin(B) / math.sin(C)  # law of sines, base 1
        pts = [(0.0, 0.0), (1.0, 0.0), (side * math.cos(A), side * math.sin(A))]
        cx, cy = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
        fig, ax = _figure(axes=False)
        ax.fill([p[0] for p in pts], [p[1] for p in pts], facecolor="#dde8f5",
                edgecolor="black", linewidth=1.2)
        for i, (px, py) in enumerate(pts):
            label = "?" if i == hidden else f"{angles[i]}\u00b0"
            ax.text(px + 0.3 * (cx - px), py + 0.3 * (cy - py), label, fontsize=8,
                    ha="center", va="center")
        ax.set_aspect("equal")
        ax.margins(0.08)
        fig.savefig(path)

    return key, q, str(angles[hidden]), draw


def _shape_count(rng: random.Random, split: str):
    target, other = rng.sample(["circle", "square", "triangle"], 2)
    k, m = rng.randint(1, 9), rng.randint(0, 4)
    r = 13
    spots: list[tuple[int, int]] = []
    while len(spots) < k + m:  # fits easily: 13 shapes of radius 13 in 192 px
        x, y = rng.randint(r + 4, IMAGE_SIZE - r - 4), rng.randint(r + 4, IMAGE_SIZE - r - 4)
        if all((x - u) ** 2 + (y - v) ** 2 > (2 * r + 6) ** 2 for u, v in spots):
            spots.append((x, y))
    colors = [rng.choice(_COLORS) for _ in spots]
    kinds = [target] * k + [other] * m
    key = f"shapes:{target}:{other}:{spots}:{colors}"
    q = f"How many {target}s are in the picture?"

    def draw(path: Path) -> None:
        from PIL import Image, ImageDraw

        im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
        d = ImageDraw.Draw(im)
        for kind, (x, y), c in zip(kinds, spots, colors):
            if kind == "circle":
                d.ellipse([x - r, y - r, x + r, y + r], fill=c, outline="black")
            elif kind == "square":
                d.rectangle([x - r + 2, y - r + 2, x + r - 2, y + r - 2], fill=c, outline="black")
            else:
                d.polygon([(x, y - r), (x - r, y + r - 2), (x + r, y + r - 2)], fill=c,
                          outline="black")
        im.save(path)

    return key, q, str(k), draw


def _digits(rng: random.Random, split: str):
    pool = digit_pool(split)
    images, labels = _digits_data()
    i, j = rng.sample(pool, 2)
    if labels[i] != 0 and rng.random() < 0.5:
        q, a = "What two-digit number is written in the picture?", f"{labels[i]}{labels[j]}"
    else:
        q, a = "What is the sum of the two digits?", str(labels[i] + labels[j])
    key = f"digits:{i}:{j}:{q}"

    def draw(path: Path) -> None:
        from PIL import Image

        im = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 255)
        cell = 80
        for slot, idx in enumerate((i, j)):
            # 8x8 ink counts 0..16 -> dark ink on white paper
            raw = bytes(255 - v * 255 // 16 for v in images[idx])
            digit = Image.frombytes("L", (8, 8), raw).resize((cell, cell), Image.BILINEAR)
            im.paste(digit, (12 + slot * (cell + 8), (IMAGE_SIZE - cell) // 2))
        im.convert("RGB").save(path)

    return key, q, a, draw, {"digit_index": [i, j]}  # rows of load_digits()


_FAMILIES = {"bar_chart": _bar_chart, "line_chart": _line_chart, "digits": _digits,
             "triangle": _triangle, "shape_count": _shape_count}
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"]


@functools.lru_cache(maxsize=None)
def _digits_data() -> tuple[list[list[int]], list[int]]:
    """sklearn's digits (the file behind load_digits(), read directly: no sklearn import)."""
    path = package_dir("sklearn", "the built-in image sets") / "datasets" / "data" / "digits.csv.gz"
    images, labels = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            values = [int(float(v)) for v in line.split(",")]
            images.append(values[:64])
            labels.append(values[64])
    return images, labels


@functools.lru_cache(maxsize=None)
def digit_pool(split: str) -> list[int]:
    return [i for i in range(len(_digits_data()[1])) if pools.hash_split(f"digit:{i}") == split]


def _figure(axes: bool = True):
    """A 192x192 px matplotlib figure with one axes, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(IMAGE_SIZE / 100, IMAGE_SIZE / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.14, 0.12, 0.82, 0.84] if axes else [0.02, 0.02, 0.96, 0.96])
    if not axes:
        ax.axis("off")
    ax.tick_params(labelsize=7, length=2, pad=1)
    return fig, ax


def _value_axis(ax, top: int) -> None:
    ax.set_ylim(0, top)
    ax.set_yticks(range(0, top))
    ax.grid(axis="y", linewidth=0.4, color="#bbbbbb", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# --- image: general (easy-VQA and scikit-image photos) -------------------------------------

# photo file, split, questions. Split by photo so no picture is in both splits.
_PHOTOS = {
    "astronaut": ("astronaut.png", "calib", [
        ("What is the person wearing?", "a spacesuit"),
        ("What is the person's job?", "astronaut"),
        ("Which flag is in the background?", "the American flag"),
        ("What model is standing behind the person?", "a space shuttle")]),
    "chelsea": ("chelsea.png", "calib", [
        ("What animal is in the picture?", "a cat"),
        ("Is the animal a dog or a cat?", "a cat"),
        ("What part of the animal fills the picture?", "its face")]),
    "coffee": ("coffee.png", "calib", [
        ("What drink is in the cup?", "coffee"),
        ("What color is the cup?", "red"),
        ("What is the cup standing on?", "a saucer on a wooden table")]),
    "camera": ("camera.png", "calib", [
        ("What is the man looking through?", "a camera"),
        ("What holds the camera up?", "a tripod"),
        ("Is the photo in color or black and white?", "black and white")]),
    "coins": ("coins.png", "calib", [
        ("What objects are shown?", "coins"),
        ("How are the coins arranged?", "in rows"),
        ("What color is the background?", "black")]),
    "hubble_deep_field": ("hubble_deep_field.jpg", "calib", [
        ("What does the picture show?", "galaxies in deep space"),
        ("What color is the background?", "black"),
        ("What kind of instrument took this picture?", "a space telescope")]),
    "brick": ("brick.png", "calib", [
        ("What does the picture show?", "a brick wall"),
        ("Is the picture in color?", "no")]),
    "retina": ("retina.jpg", "calib", [
        ("What part of the body is shown?", "the back of an eye"),
        ("What color is the picture mostly?", "red")]),
    "cell": ("cell.png", "calib", [
        ("How many cells are visible?", "one"),
        ("What does the picture show?", "a cell under a microscope")]),
    "immunohistochemistry": ("ihc.png", "calib", [
        ("What does the picture show?", "stained tissue under a microscope"),
        ("Which two colors are the stains?", "brown and blue")]),
    "text": ("text.png", "calib", [
        ("What is on the paper?", "handwritten formulas"),
        ("Is the writing handwritten or printed?", "handwritten")]),
    "rocket": ("rocket.jpg", "eval", [
        ("What is standing on the launch pad?", "a rocket"),
        ("Is it day or night?", "night"),
        ("What surrounds the rocket?", "launch towers")]),
    "horse": ("horse.png", "eval", [
        ("What animal is shown?", "a horse"),
        ("What color is the animal?", "black"),
        ("What color is the background?", "white")]),
    "clock": ("clock_motion.png", "eval", [
        ("What object is in the picture?", "a clock"),
        ("Is the picture sharp or blurred?", "blurred")]),
    "grass": ("grass.png", "eval", [
        ("What does the picture show?", "grass"),
        ("Is the picture in color?", "no")]),
    "gravel": ("gravel.png", "eval", [
        ("What does the picture show?", "gravel"),
        ("Is the picture in color?", "no")]),
    "microaneurysms": ("microaneurysms.png", "eval", [
        ("What are the dark lines?", "blood vessels"),
        ("What part of the body is shown?", "the back of an eye")]),
}


def general_samples(n: int, seed: int, split: str, image_dir: Path) -> list[Sample]:
    rng = pools.rng(seed, split, "image-general")
    photos = photo_pool(split)
    chosen = rng.sample(photos, min(n // 4, len(photos)))
    open_q, yesno_q = easy_vqa_pool(split)
    chosen += pools.round_robin([open_q, yesno_q], n - len(chosen), rng, f"easy-VQA ({split})")
    rng.shuffle(chosen)
    samples, written = [], set()
    for x in chosen:
        path = image_dir / x["file"]
        if path not in written:  # several questions can share one picture
            x["write"](path)
            written.add(path)
        samples.append(_image_sample("general", x["question"], x["answer"], path, x["id"],
                                     x["source"], split))
    return samples


@functools.lru_cache(maxsize=None)
def photo_pool(split: str) -> list[dict]:
    folder = package_dir("skimage", "the built-in image sets") / "data"
    return [{"id": f"skimage/{name}/{k}", "source": "skimage", "question": q, "answer": a,
             "file": f"skimage-{name}.png",
             "write": functools.partial(_write_photo, folder / file)}
            for name, (file, photo_split, qa) in _PHOTOS.items() if photo_split == split
            for k, (q, a) in enumerate(qa)]


def _write_photo(src: Path, dst: Path) -> None:
    from PIL import Image

    with Image.open(src) as im:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, "white")
            im = Image.alpha_composite(white, im)
        im = im.convert("RGB")
        im.thumbnail((PHOTO_MAX, PHOTO_MAX), Image.LANCZOS)
        im.save(dst)


@functools.lru_cache(maxsize=None)
def easy_vqa_pool(split: str) -> tuple[list[dict], list[dict]]:
    """(open questions, yes/no questions) from easy-VQA's train (calib) or test (eval) files."""
    part = "train" if split == "calib" else "test"
    folder = package_dir("easy_vqa", "the built-in image sets") / "data" / part
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    open_q, yesno_q = [], []
    for i, (question, answer, image_id) in enumerate(rows):
        src = folder / "images" / f"{image_id}.png"
        x = {"id": f"easy-vqa/{part}/{i}", "source": "easy-vqa",
             "question": question[:1].upper() + question[1:], "answer": answer,
             "file": f"easy-vqa-{part}-{image_id}.png",
             "write": functools.partial(shutil.copyfile, src)}
        (yesno_q if answer in ("yes", "no") else open_q).append(x)
    return open_q, yesno_q


def _image_sample(domain: str, question: str, answer: str, path: Path, sample_id: str,
                  source: str, split: str, **extra) -> Sample:
    return Sample(domain, text=f"Question: {question}\nAnswer: {answer}", images=[path],
                  meta={"id": sample_id, "source": source, "split": split,
                        "question": question, "answer": answer, **extra})


def _file_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", sample_id) + ".png"

