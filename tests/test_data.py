"""Calibration data: the JSONL format, its checks, and the built-in sets."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from layercut.data import Sample, by_domain, load_calib, write_calib
from layercut.data import images as image_sets
from layercut.data.builtin import build_calib, build_samples, pool_ids
from layercut.data.pools import hash_split
from layercut.errors import LayercutError


def _png(path: Path, color="red", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _raises(path: Path, line: int, *fragments: str) -> str:
    with pytest.raises(LayercutError) as e:
        load_calib(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert f"line {line}:" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --- format: round trip --------------------------------------------------------------------


def test_round_trip(tmp_path):
    a = _png(tmp_path / "images" / "a.png")
    b = _png(tmp_path / "images" / "b.png", "blue")
    outside = _png(tmp_path.parent / f"{tmp_path.name}-outside" / "c.png", "green")
    samples = [
        Sample("math", text="Question: 1+1?\nAnswer: 2", meta={"id": "q1", "answer": "2"}),
        Sample("general", text="Plain prose, ünïcode “quotes”."),
        Sample("math", text="What is the tallest bar?", images=[a], meta={"source": "x"}),
        Sample("math", messages=[
            {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                         {"type": "text", "text": "Compare."}]},
            {"role": "assistant", "content": "The first is red."}], images=[a, b]),
        Sample("general", text="Outside the folder.", images=[outside]),
    ]
    path = tmp_path / "calib.jsonl"
    write_calib(samples, path)
    assert load_calib(path) == samples

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[2]["image"] == "images/a.png"  # relative inside the folder
    assert rows[3]["images"] == ["images/a.png", "images/b.png"]
    assert rows[4]["image"] == str(outside)  # absolute outside it
    assert "image" not in rows[0] and rows[0]["id"] == "q1"


def test_relative_image_paths_resolve_against_the_file_folder(tmp_path, monkeypatch):
    _png(tmp_path / "set" / "imgs" / "x.png")
    _write_lines(tmp_path / "set" / "calib.jsonl",
                        [{"domain": "math", "text": "t", "image": "imgs/x.png"},
                         {"domain": "math", "text": "t", "images": ["imgs/../imgs/x.png"]},
                         {"domain": "math", "text": "t", "image": None}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    samples = load_calib(Path("..") / "set" / "calib.jsonl")
    expected = (tmp_path / "set" / "imgs" / "x.png").absolute()
    assert samples[0].images == [expected] and samples[1].images == [expected]
    assert samples[2].images == []
    assert all(p.is_absolute() for s in samples for p in s.images)


def test_blank_lines_skipped_extra_keys_kept_and_by_domain(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [
        {"domain": "math", "text": "a", "id": 1, "source": "gsm8k", "question": "q"},
        "",
        "   ",
        {"domain": "general", "text": "b"},
        {"domain": "math", "text": "c"}])
    samples = load_calib(path)
    assert [s.text for s in samples] == ["a", "b", "c"]
    assert samples[0].meta == {"id": 1, "source": "gsm8k", "question": "q"}
    groups = by_domain(samples)
    assert list(groups) == ["math", "general"]
    assert [s.text for s in groups["math"]] == ["a", "c"]


def test_write_calib_rejects_reserved_meta_keys_and_empty_samples(tmp_path):
    with pytest.raises(LayercutError, match="reserved"):
        write_calib([Sample("math", text="a", meta={"image": "x.png"})], tmp_path / "c.jsonl")
    with pytest.raises(LayercutError, match="exactly one"):
        write_calib([Sample("math")], tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()


# --- format: every bad input is a one-line error with its line number -----------------------

GOOD = {"domain": "math", "text": "fine"}
BAD_LINES = {
    "invalid json": ('{"domain": "math", "text": ', "not valid JSON", "fix or remove the line"),
    "not an object": ('["math", "text"]', "expected a JSON object"),
    "missing domain": ({"text": "a"}, 'missing "domain"'),
    "empty domain": ({"domain": " ", "text": "a"}, '"domain" must be a non-empty string'),
    "non-string domain": ({"domain": 3, "text": "a"}, '"domain" must be a non-empty string'),
    "neither text nor messages": ({"domain": "math"}, 'neither "text" nor "messages"'),
    "both text and messages": ({"domain": "math", "text": "a",
                                "messages": [{"role": "user", "content": "a"}]}, "both"),
    "empty text": ({"domain": "math", "text": ""}, '"text" must be a non-empty string'),
    "non-string text": ({"domain": "math", "text": 5}, '"text" must be a non-empty string'),
    "messages not a list": ({"domain": "math", "messages": "hi"}, '"messages" must be'),
    "messages empty": ({"domain": "math", "messages": []}, '"messages" must be'),
    "message not an object": ({"domain": "math", "messages": ["hi"]}, "messages[0]"),
    "message without role": ({"domain": "math", "messages": [{"content": "hi"}]}, '"role"'),
    "content not str or list": ({"domain": "math", "messages": [{"role": "user", "content": 3}]},
                                '["content"] must be'),
    "unknown item type": ({"domain": "math", "messages": [
        {"role": "user", "content": [{"type": "video"}]}]}, '["content"][0]'),
    "text item without text": ({"domain": "math", "messages": [
        {"role": "user", "content": [{"type": "text"}]}]}, 'no "text" string'),
    "image item without image": ({"domain": "math", "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]},
        '1 {"type": "image"} item(s) but 0 image(s)'),
    "image given without image item": ({"domain": "math", "images": ["ok.png"], "messages": [
        {"role": "user", "content": "q"}]}, '0 {"type": "image"} item(s) but 1 image(s)'),
    "images not a list": ({"domain": "math", "text": "a", "images": "ok.png"}, "must be a list"),
    "image and images": ({"domain": "math", "text": "a", "image": "ok.png",
                          "images": ["ok.png"]}, 'both "image" and "images"'),
    "image path not a string": ({"domain": "math", "text": "a", "image": 7}, "not a non-empty"),
    "image missing": ({"domain": "math", "text": "a", "image": "nope.png"},
                      "image 'nope.png' not found", "resolved against", "fix the path"),
    "image not an image": ({"domain": "math", "text": "a", "image": "fake.png"},
                           "image 'fake.png' is not a readable image"),
    "image truncated": ({"domain": "math", "text": "a", "image": "cut.png"},
                        "image 'cut.png' is not a readable image"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line_names_the_line_and_the_fix(tmp_path, case):
    bad, *fragments = BAD_LINES[case]
    _png(tmp_path / "ok.png")
    (tmp_path / "fake.png").write_bytes(b"this is not a png file at all")
    big = _png(tmp_path / "big.png", size=(64, 64))
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(big)  # incompressible
    (tmp_path / "cut.png").write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    # a good line, a blank line (still counted), a good line, then the bad one: line 4
    path = _write_lines(tmp_path / "calib.jsonl", [GOOD, "", GOOD, bad, GOOD])
    _raises(path, 4, str(path), *fragments)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LayercutError, match="not found") as e:
        load_calib(tmp_path / "absent.jsonl")
    assert "\n" not in str(e.value)
    with pytest.raises(LayercutError, match="not a file"):
        load_calib(tmp_path)
    for content in ("", "\n\n  \n"):
        (tmp_path / "empty.jsonl").write_text(content)
        with pytest.raises(LayercutError, match="no samples"):
            load_calib(tmp_path / "empty.jsonl")


def test_messages_sample_with_images_loads(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    path = _write_lines(tmp_path / "c.jsonl", [{
        "domain": "math", "images": ["a.png", "b.png"], "id": "m1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"},
                                                  {"type": "image"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "3"}]}]}])
    (s,) = load_calib(path)
    assert s.text is None and len(s.messages) == 3
    assert [p.name for p in s.images] == ["a.png", "b.png"]
    assert s.meta == {"id": "m1"}


# --- built-in sets -------------------------------------------------------------------------

N = 16


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """calib and eval sets of every kind, two seeds, plus a repeat of seed 0."""
    root = tmp_path_factory.mktemp("builtin")
    out = {}
    for name, seed, split in [("c0", 0, "calib"), ("c0again", 0, "calib"), ("c1", 1, "calib"),
                              ("e0", 0, "eval"), ("e1", 1, "eval")]:
        out[name] = build_samples("all", N, seed, split, image_dir=root / name)
    return out


def _part(samples, domain, image):
    return [s for s in samples if s.domain == domain and bool(s.images) == image]


def test_builtin_counts_and_content(built):
    samples = built["c0"]
    assert len(samples) == 4 * N
    assert {d: len(v) for d, v in by_domain(samples).items()} == {"math": 2 * N, "general": 2 * N}
    text_math = _part(samples, "math", False)
    assert len(text_math) == N
    assert {s.meta["source"] for s in text_math} == {"gsm8k", "math"}
    for s in text_math:
        assert s.text.startswith("Question: ") and "\nAnswer: " in s.text
        assert s.meta["answer"] and "<<" not in s.text
    general = _part(samples, "general", False)
    assert {s.meta["source"] for s in general} == {"pydoc-topics", "gutenberg-19362"}
    assert all(150 <= len(s.text) <= 2000 and "Gutenberg" not in s.text for s in general)
    for domain in ("math", "general"):
        images = _part(samples, domain, True)
        assert len(images) == N
        for s in images:
            assert s.text == f"Question: {s.meta['question']}\nAnswer: {s.meta['answer']}"
            assert s.meta["question"] and s.meta["answer"] and s.meta["id"] and s.meta["source"]
            (path,) = s.images
            with Image.open(path) as im:
                im.load()
                assert max(im.size) <= 224
    assert {s.meta["family"] for s in _part(samples, "math", True)} == set(image_sets._FAMILIES)
    assert {s.meta["source"] for s in _part(samples, "general", True)} == {"easy-vqa", "skimage"}
    assert len({s.meta["id"] for s in samples}) == len(samples)


def test_builtin_is_deterministic_for_a_seed(built):
    a, again, other = built["c0"], built["c0again"], built["c1"]
    assert [(s.text, s.meta) for s in a] == [(s.text, s.meta) for s in again]
    assert [_pixels(s) for s in a if s.images] == [_pixels(s) for s in again if s.images]
    ids = lambda samples: [s.meta["id"] for s in samples]  # noqa: E731
    assert ids(a) != ids(other)
    assert len(set(ids(a)) & set(ids(other))) < len(a) // 4


def test_rendered_answers_are_consistent():
    # the digit answers follow sklearn's labels; the triangle's angles add up to 180
    images, labels = image_sets._digits_data()
    assert len(images) == 1797 and all(len(x) == 64 for x in images)
    import random

    rng = random.Random(0)
    for _ in range(50):
        key, q, a, _draw, meta = image_sets._digits(rng, "calib")
        i, j = meta["digit_index"]
        want = str(labels[i] + labels[j]) if "sum" in q else f"{labels[i]}{labels[j]}"
        assert a == want
        key, q, a, _draw = image_sets._triangle(rng, "calib")
        angles = json.loads(key.split(":")[1])
        assert sum(angles) == 180 and a in map(str, angles)


def test_pools_of_the_two_splits_never_overlap():
    calib, evaluation = pool_ids("calib"), pool_ids("eval")
    assert calib.keys() == evaluation.keys()
    for source in calib:
        assert calib[source] and evaluation[source], source
        assert not calib[source] & evaluation[source], source
    assert {hash_split(f"k{i}") for i in range(100)} == {"calib", "eval"}


def test_built_splits_never_overlap(built):
    calib = built["c0"] + built["c1"]
    evaluation = built["e0"] + built["e1"]
    assert not {s.meta["id"] for s in calib} & {s.meta["id"] for s in evaluation}
    # text samples never share their text (image questions repeat, e.g. "Is there a red shape?")
    assert not ({s.text for s in calib if not s.images}
                & {s.text for s in evaluation if not s.images})
    # and no picture is shared, whatever its file name
    assert not ({_pixels(s) for s in calib if s.images}
                & {_pixels(s) for s in evaluation if s.images})
    pools = pool_ids("eval")
    for s in evaluation:
        source, sid = s.meta["source"], s.meta["id"]
        if source == "sklearn-digits":
            continue
        if source != "rendered":
            assert sid in pools[source], sid
    # items from the eval split are labelled as such
    assert {s.meta["split"] for s in evaluation} == {"eval"}


def test_rendered_splits_never_overlap_at_scale(tmp_path):
    calib = build_samples("image", 80, 5, "calib", image_dir=tmp_path / "c")
    evaluation = build_samples("image", 80, 5, "eval", image_dir=tmp_path / "e")
    rendered = lambda xs: [s for s in xs if s.domain == "math"]  # noqa: E731
    assert not ({_pixels(s) for s in rendered(calib)} & {_pixels(s) for s in rendered(evaluation)})
    for split, samples in (("calib", calib), ("eval", evaluation)):
        assert len({_pixels(s) for s in rendered(samples)}) == 80  # no repeats within a split
        pool = pool_ids(split)["sklearn-digits"]
        digits = [s for s in rendered(samples) if s.meta["family"] == "digits"]
        assert digits and all(f"digits/{i}" in pool for s in digits for i in s.meta["digit_index"])


def test_bad_arguments():
    with pytest.raises(LayercutError, match="unknown kind"):
        build_samples("video")
    with pytest.raises(LayercutError, match="unknown split"):
        build_samples("text", split="test")
    with pytest.raises(LayercutError, match="positive integer"):
        build_samples("text", n_per_domain=0)
    with pytest.raises(LayercutError, match="image_dir"):
        build_samples("image", n_per_domain=1)
    with pytest.raises(LayercutError, match="lower n_per_domain"):
        build_samples("text", n_per_domain=100_000)


# --- build_calib: whole or nothing ---------------------------------------------------------


def test_build_calib_writes_a_loadable_set(tmp_path):
    out = build_calib(tmp_path / "sets" / "calib.jsonl", kind="all", n_per_domain=4)
    samples = load_calib(out)
    assert len(samples) == 16
    assert sorted(os.listdir(out.parent)) == ["calib.jsonl", "calib_images"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["image"].startswith("calib_images/") for r in rows if "image" in r)
    assert {p.parent for s in samples for p in s.images} == {out.parent / "calib_images"}

    text_only = build_calib(tmp_path / "text.jsonl", kind="text", n_per_domain=3)
    assert len(load_calib(text_only)) == 6 and not (tmp_path / "text_images").exists()


def test_build_calib_refuses_to_overwrite_and_leaves_old_output(tmp_path):
    out = build_calib(tmp_path / "c.jsonl", kind="image", n_per_domain=2)
    before = out.read_bytes()
    with pytest.raises(LayercutError, match="already exists"):
        build_calib(out, kind="image", n_per_domain=3)
    assert out.read_bytes() == before
    # the image folder alone also blocks
    out.unlink()
    with pytest.raises(LayercutError, match="c_images"):
        build_calib(out, kind="image", n_per_domain=3)
    assert not out.exists()
    build_calib(out, kind="image", n_per_domain=3, overwrite=True)
    assert len(load_calib(out)) == 6
    assert sorted(os.listdir(tmp_path)) == ["c.jsonl", "c_images"]


def test_build_calib_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setitem(image_sets._FAMILIES, "triangle", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_calib(tmp_path / "c.jsonl", kind="all", n_per_domain=8)
    assert os.listdir(tmp_path) == []

    # with overwrite, a failed rebuild keeps the previous output intact
    monkeypatch.undo()
    out = build_calib(tmp_path / "c.jsonl", kind="image", n_per_domain=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c_images").iterdir()}
    monkeypatch.setitem(image_sets._FAMILIES, "triangle", broken)
    with pytest.raises(RuntimeError):
        build_calib(out, kind="image", n_per_domain=8, seed=3, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["c.jsonl", "c_images"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "c_images").iterdir()} == before
    assert len(load_calib(out)) == 4


def _pixels(sample: Sample) -> str:
    with Image.open(sample.images[0]) as im:
        return hashlib.sha256(im.convert("RGB").tobytes() + repr(im.size).encode()).hexdigest()
