"""The tiny VLM's visual tasks: generators, disjoint splits, shuffled-image control, task specs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from layercut.data import vision
from layercut.errors import LayercutError
from layercut.evaluation.sources import SHUFFLED, load_docs, shuffle_images
from layercut.evaluation.tasks import get_task


def test_every_question_has_its_answer_among_its_candidates():
    for family in vision.FAMILIES:
        for qa in vision.documents(family, "test", 60):
            assert qa.answer in qa.choices, (qa.task, qa.answer)
            assert qa.image.size == (vision.SIZE, vision.SIZE)
            assert vision.TASK_FAMILY[qa.task] == family


def test_bar_answers_follow_the_drawn_values():
    rng = random.Random(3)
    for task in ("bar-max", "bar-argmax", "bar-diff", "bar-above"):
        for _ in range(30):
            qa = vision.make(task, rng, "train")
            values = [int(v) for v in qa.caption[:4]]
            line = int(qa.scene_key.split(":")[2])
            expected = {"bar-max": str(max(values)),
                        "bar-argmax": vision.ORDINALS[values.index(max(values))],
                        "bar-diff": str(max(values) - min(values)),
                        "bar-above": str(sum(v > line for v in values))}[task]
            assert qa.answer == expected
            if task == "bar-argmax":
                assert values.count(max(values)) == 1  # the question has one answer


def test_count_draws_as_many_shapes_as_it_says():
    import numpy as np
    from scipy import ndimage

    rng = random.Random(5)
    for _ in range(20):
        qa = vision.make("count", rng, "train")
        ink = np.asarray(qa.image).min(axis=2) < 250
        assert ndimage.label(ink)[1] == int(qa.answer)


def test_splits_are_disjoint_by_picture():
    keys = {}
    for split in ("calib", "test"):
        keys[split] = {qa.scene_key for f in vision.FAMILIES
                       for qa in vision.documents(f, split, 300)}
    rng = random.Random(0)
    keys["train"] = {vision.make(t, rng, "train").scene_key
                     for t in vision.TASK_FAMILY for _ in range(300)}
    assert not keys["train"] & keys["calib"]
    assert not keys["train"] & keys["test"]
    assert not keys["calib"] & keys["test"]
    for split in ("calib", "test"):  # rendered scenes sit in the split their hash names
        assert all(vision.split_of(k) == split for k in keys[split] if not k.startswith("easy-vqa"))
    # easy-VQA: train pictures come from its train file, calib and test halve its test file
    assert all(k.startswith("easy-vqa:train:") for k in keys["train"] if k.startswith("easy-vqa"))
    assert all(k.startswith("easy-vqa:test:") for s in ("calib", "test") for k in keys[s]
               if k.startswith("easy-vqa"))


def test_yes_no_is_balanced_and_documents_are_seeded():
    for split in vision.SPLITS:
        answers = [a for _, a, _, _ in vision._evqa_pool(split)["yesno"]]
        assert answers.count("yes") == answers.count("no") > 100
    a = vision.documents("general-vision", "test", 20, seed=0)
    b = vision.documents("general-vision", "test", 20, seed=0)
    c = vision.documents("general-vision", "test", 20, seed=1)
    assert [(x.scene_key, x.question) for x in a] == [(x.scene_key, x.question) for x in b]
    assert [(x.scene_key, x.question) for x in a] != [(x.scene_key, x.question) for x in c]
    assert [x.task for x in a[:5]] == list(vision.FAMILIES["general-vision"])  # round robin


def test_shuffled_images_are_a_seeded_derangement():
    docs = [{"id": str(i), "image": f"{i}.png", "question": f"q{i}"} for i in range(9)]
    out = shuffle_images(docs, seed=0)
    assert [d["question"] for d in out] == [d["question"] for d in docs]
    assert sorted(d["image"] for d in out) == sorted(d["image"] for d in docs)
    assert all(d["image"] != o["image"] for d, o in zip(docs, out))
    assert out == shuffle_images(docs, seed=0)
    assert out != shuffle_images(docs, seed=1)
    with pytest.raises(LayercutError, match="at least 2"):
        shuffle_images(docs[:1])
    with pytest.raises(LayercutError, match="image"):
        shuffle_images([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])


def test_shuffled_task_variant_is_data_not_code(tmp_path):
    spec = get_task("math-vision:shuffled")
    assert spec.shuffle_images and spec.name == "math-vision-shuffled"
    assert spec.resolve(spec.source).endswith(SHUFFLED)
    true = load_docs("vision/math-vision/test", 10, 0, tmp_path / "a")
    (tmp_path / "b").mkdir()
    shuffled = load_docs(spec.resolve(spec.source), 10, 0, tmp_path / "b")
    assert [d["question"] for d in true] == [d["question"] for d in shuffled]
    assert all(Path(t["image"]).name != Path(s["image"]).name for t, s in zip(true, shuffled))
    with pytest.raises(LayercutError, match="image task"):
        get_task("nll-math:shuffled")


def test_vision_task_specs_cover_three_metrics():
    for family, domain in (("math-vision", "math"), ("general-vision", "general")):
        kinds = {get_task(family + suffix).kind for suffix in ("", "-nll", "-gen")}
        assert kinds == {"choice", "nll", "generate"}
        assert get_task(family).domain == domain and get_task(family).image


def test_vision_calibration_set_is_chat_form(tmp_path):
    from layercut.data import builtin, load_calib

    path = builtin.build_calib(tmp_path / "c.jsonl", kind="vision", n_per_domain=5)
    samples = load_calib(path)
    assert [s.domain for s in samples].count("math") == 5
    assert [s.domain for s in samples].count("general") == 5
    assert all(s.messages and len(s.images) == 1 and s.images[0].is_file() for s in samples)
    test_keys = {qa.scene_key for f in vision.FAMILIES for qa in vision.documents(f, "test", 50)}
    assert not {s.meta["scene_key"] for s in samples} & test_keys
