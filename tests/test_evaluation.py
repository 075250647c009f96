"""Evaluation: task specs, preparation and scoring on tiny models, held-out data, judge."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import math
import threading
import time
from typing import ClassVar

import pytest
import torch

from layercut import api, models, surgery
from layercut.data import text
from layercut.data.builtin import build_samples, pool_ids
from layercut.data.encode import Batch
from layercut.errors import LayercutError
from layercut.evaluation import (
    HIGHER_IS_BETTER,
    TASKS,
    batching,
    evaluate,
    get_task,
    load_task,
    prepare,
    sources,
    teacher,
    token_nll,
)
from layercut.evaluation.batching import SEQ_KEYS, Context, Item
from tests.tiny import FAMILY_IDS, TEXT_HI, TEXT_LO, build_tiny, make_tiny, tiny_config

TEXT_TASKS = [n for n, t in TASKS.items() if not t.image]
# Image sources read from layercut[data]'s packages (easy-vqa, scikit-image, scikit-learn); the
# tiny VLM's math-vision set is drawn here and needs none.
DATA_SOURCES = {"easy-vqa/test", "vision/general-vision/test", "builtin/image-math"}
IMAGE_TASKS = [pytest.param(n, marks=pytest.mark.needs_data) if t.source in DATA_SOURCES else n
               for n, t in TASKS.items() if t.image]


@pytest.fixture(scope="module")
def text_adapter(tiny_text_dir):
    return models.load(str(tiny_text_dir))


@pytest.fixture(scope="module")
def llava_adapter(tiny_llava_dir):
    return models.load(str(tiny_llava_dir))


def _short(name: str, **changes):
    """A built-in task with few new tokens, so tiny-model generation stays fast."""
    spec = TASKS[name]
    if spec.kind == "generate":
        changes.setdefault("max_new_tokens", 6)
    return dataclasses.replace(spec, **changes)


def _check_metrics(spec, metrics: dict, n: int) -> None:
    assert metrics["n"] == n
    if spec.kind == "nll":
        assert metrics["tokens"] > 0 and 0 < metrics["nll"] < 50
    else:
        assert 0.0 <= metrics["accuracy"] <= 1.0
    assert any(k in HIGHER_IS_BETTER for k in metrics)


# --- the registry --------------------------------------------------------------------------


def test_builtin_tasks_are_registered():
    assert {"gsm8k", "math500", "mathvision", "easyvqa", "easyvqa-gen", "mmlu-science",
            "mmlu-math", "nll-math", "nll-general", "nll-mmlu-math", "nll-mmlu-science"} <= set(TASKS)
    assert {t.domain for t in TASKS.values()} == {"math", "general"}
    assert {t.kind for t in TASKS.values()} == {"generate", "choice", "nll"}
    assert get_task("gsm8k") is TASKS["gsm8k"]
    with pytest.raises(LayercutError, match="unknown task 'nope'"):
        get_task("nope")


# --- every built-in task prepares and evaluates on a tiny model ----------------------------


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_text_tasks_run_on_a_tiny_model(name, text_adapter):
    spec = _short(name)
    prepared = prepare(spec, text_adapter, limit=2)
    details: list = []
    metrics = evaluate(text_adapter, prepared, batch_size=2, details=details)
    _check_metrics(spec, metrics, 2)
    assert len(details) == 2
    # the same prepared task evaluates again under a layer-skip view of the same adapter
    with surgery.skipped(text_adapter, [2, 3]):
        _check_metrics(spec, evaluate(text_adapter, prepared, batch_size=2), 2)


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_image_tasks_run_on_a_tiny_vlm(name, llava_adapter):
    spec = _short(name)
    prepared = prepare(spec, llava_adapter, limit=3)
    image_token = llava_adapter.image_token_id
    assert all((it.context.ids == image_token).sum() > 0 for it in prepared.items)
    assert all("pixel_values" in it.context.extras for it in prepared.items)
    _check_metrics(spec, evaluate(llava_adapter, prepared, batch_size=2), 3)
    with surgery.skipped(llava_adapter, [1]):
        _check_metrics(spec, evaluate(llava_adapter, prepared, batch_size=3), 3)


def test_image_task_needs_a_vlm(text_adapter):
    with pytest.raises(LayercutError, match="no image processor"):
        prepare("mathvision", text_adapter, limit=1)


def test_generation_is_batch_independent(text_adapter):
    """Left padding does not change greedy outputs: batch 1 and batch 3 agree."""
    prepared = prepare(_short("nll-math", kind="generate", target="{answer}", max_new_tokens=5,
                              extractor="number", metric="math_equiv", until=("\n\n",)),
                       text_adapter, limit=3)
    one, three = [], []
    evaluate(text_adapter, prepared, batch_size=1, details=one)
    evaluate(text_adapter, prepared, batch_size=3, details=three)
    assert [d["output"] for d in one] == [d["output"] for d in three]


# --- teacher forcing: scored-position LM head, nll and choice ------------------------------


def _reference_token_nll(adapter, batches):
    """The plain computation: full logits at every position, then pick the targets."""
    sums, counts = 0.0, 0
    for b in batches:
        inputs = adapter.complete_inputs(b.inputs)
        ids = inputs["input_ids"]
        attn = inputs["attention_mask"].bool()
        ok = attn[:, 1:] & attn[:, :-1] & ~adapter.image_mask(ids)[:, 1:]
        logits = adapter.model(**inputs, use_cache=False).logits[:, :-1][ok].float()
        sums += float(torch.nn.functional.cross_entropy(logits, ids[:, 1:][ok], reduction="sum"))
        counts += int(ok.sum())
    return sums / counts


def _tiny(family: str):
    if family == "gemma3_text":  # with Gemma's final logit soft-capping switched on
        cfg = tiny_config(family)
        cfg.final_logit_softcapping = 3.0
        return build_tiny(family, cfg)
    return make_tiny(family)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_lm_head_at_scored_positions_equals_full_logits(family):
    tiny = _tiny(family)
    adapter = models.Adapter.wrap(tiny.model)
    inputs = tiny.inputs(batch=2, pad=True)
    ids = inputs["input_ids"]
    rows, cols = (inputs["attention_mask"] > 0).nonzero(as_tuple=True)
    rows, cols = rows[::3], cols[::3]
    with torch.no_grad():
        full = tiny.model(**inputs).logits[rows, cols]
        part, _ = batching.logits_at(adapter, inputs, rows, cols)
        assert part.shape == full.shape
        assert torch.allclose(part, full, atol=1e-5, rtol=1e-5)
        batches = [Batch("d", inputs, 2)]
        assert token_nll(adapter, batches)["all"] == pytest.approx(
            _reference_token_nll(adapter, batches), rel=1e-5)
    assert int(ids.numel()) > len(rows)


def _plain_logprob(model, inputs: dict, cont: torch.Tensor) -> float:
    full = dict(inputs)
    T = inputs["input_ids"].shape[1]
    full["input_ids"] = torch.cat([inputs["input_ids"], cont[None]], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    for k in ("token_type_ids", "mm_token_type_ids"):
        if k in inputs:
            full[k] = torch.cat([inputs[k], torch.zeros(1, len(cont), dtype=torch.long)], 1)
    logp = torch.log_softmax(model(**full).logits[0].float(), -1)
    return sum(float(logp[T - 1 + j, cont[j]]) for j in range(len(cont)))


def context_item(tiny) -> Item:
    """One choice item: the tiny model's own input (image included) as context, three seeded
    candidates of 1, 3 and 4 text tokens."""
    inputs = tiny.inputs(batch=1, pad=False)
    ctx = Context(ids=inputs["input_ids"][0],
                  seq={k: v[0] for k, v in inputs.items() if k in SEQ_KEYS and k != "attention_mask"},
                  extras={k: v for k, v in inputs.items() if k not in SEQ_KEYS and k != "input_ids"})
    gen = torch.Generator().manual_seed(1)
    conts = [torch.randint(TEXT_LO, TEXT_HI, (n,), generator=gen) for n in (1, 3, 4)]
    return Item(id="x", context=ctx, continuations=conts, gold=0, chars=[1, 1, 1])


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_candidate_scores_match_plain_forwards(family):
    """Shared-context scoring (where the model supports it) and plain rows both equal one full
    forward per candidate."""
    tiny = _tiny(family)
    adapter = models.Adapter.wrap(tiny.model)
    item = context_item(tiny)
    inputs, ctx, conts = tiny.inputs(batch=1, pad=False), item.context, item.continuations
    with torch.no_grad():
        expected = [_plain_logprob(tiny.model, inputs, c) for c in conts]
        rows = [lp for lp, _ in teacher.score_continuations(adapter, [(ctx, c) for c in conts], 2)]
        assert rows == pytest.approx(expected, abs=1e-4)
        if teacher.check_shared(adapter, item):
            assert teacher._shared_scores(adapter, item) == pytest.approx(expected, abs=1e-4)


def test_nll_equals_a_straightforward_computation(text_adapter):
    spec = TASKS["nll-math"]
    prepared = prepare(spec, text_adapter, limit=3)
    got = evaluate(text_adapter, prepared, batch_size=2)
    tok, model = text_adapter.tokenizer, text_adapter.model
    total, count = 0.0, 0
    for doc in sources.load_docs(spec.source, 3, seed=0):
        ctx = tok(spec.prompt.format(**doc))["input_ids"]
        cont = tok(" " + doc["solution"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        for p in range(len(ctx), len(ctx) + len(cont)):
            total -= float(logp[p - 1, ids[0, p]])
            count += 1
    assert got["tokens"] == count
    assert got["nll"] == pytest.approx(total / count, rel=1e-5)


def test_choice_picks_the_highest_likelihood(tmp_path, tiny_text_dir):
    """With the final norm zeroed every next-token distribution is uniform, so a candidate's
    log-likelihood is exactly -tokens * log(V): the shortest candidate wins, and the
    length-normalised score prefers the most characters per token."""
    adapter = models.load(str(tiny_text_dir))
    with torch.no_grad():
        adapter.model.model.norm.weight.zero_()
    tok = adapter.tokenizer
    candidates = ["the", "a cat sat on the mat", "q z x"]
    ntok = [len(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in candidates]
    assert ntok[0] < ntok[1] and ntok[0] < ntok[2]
    data = tmp_path / "docs.jsonl"
    rows = [{"question": "Pick one.", "options": candidates, "gold": 0},
            {"question": "Pick again.", "options": candidates, "gold": 2}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pick.yaml").write_text(
        "name: pick\nkind: choice\nsource: docs.jsonl\nprompt: 'Q: {question}'\n"
        "target: '{gold}'\nchoices: options\n")
    prepared = prepare(load_task(tmp_path / "pick.yaml"), adapter)
    details: list = []
    metrics = evaluate(adapter, prepared, details=details)
    logv = math.log(adapter.model.config.vocab_size)
    for d in details:
        assert d["logprobs"] == pytest.approx([-n * logv for n in ntok], abs=1e-3)
        assert d["pick"] == 0
        chars_per_token = [len(c) / n for c, n in zip(candidates, ntok)]
        assert d["pick_norm"] == max(range(3), key=lambda i: chars_per_token[i])
    assert metrics["accuracy"] == 0.5 and metrics["n"] == 2


# --- held out: no evaluated item is a calibration item -------------------------------------


def _pixels(path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


@pytest.mark.needs_data
def test_builtin_task_items_are_never_calibration_items(tmp_path):
    calib_ids = set().union(*pool_ids("calib").values())
    ids = pool_ids("calib")
    n_general = len(ids["pydoc-topics"]) + len(ids["gutenberg-19362"])
    calib_general = [s.text for s in build_samples("text", n_general, 0, split="calib")
                     if s.domain == "general"]  # every general calibration chunk
    calib_sentences = set().union(*(text.sentences(t) for t in calib_general))
    calib_texts = sources._train_questions()
    calib_images = {_pixels(s.images[0])
                    for s in build_samples("image", 64, 0, "calib", image_dir=tmp_path / "c")}
    for name, spec in TASKS.items():
        for seed in (0, 1):
            docs = sources.load_docs(spec.resolve(spec.source), spec.limit, seed, tmp_path / name)
            assert len(docs) == spec.limit, name
            assert len({d["id"] for d in docs}) == len(docs), name
            for d in docs:
                assert d["id"] not in calib_ids, (name, d["id"])
                if "text" in d:
                    assert not text.sentences(d["text"]) & calib_sentences, (name, d["id"])
                elif spec.source != "easy-vqa/test":  # easy-VQA reuses question templates
                    question = " ".join(d["question"].split()).lower()
                    assert question not in calib_texts, (name, d["id"])
                if spec.image:
                    assert _pixels(d["image"]) not in calib_images, (name, d["id"])
    eval_vqa = pool_ids("eval")["easy-vqa"]
    assert all(d["id"] in eval_vqa for d in sources.load_docs("easy-vqa/test", 50, 0))


def test_sources_are_seeded_and_balanced():
    a = sources.load_docs("gsm8k/test", 20, seed=0)
    assert a == sources.load_docs("gsm8k/test", 20, seed=0)
    assert a != sources.load_docs("gsm8k/test", 20, seed=1)
    assert {len(d["choices"]) for d in sources.load_docs("mmlu-stem/science", 50, 0)} == {4}
    assert all(d["answer"] in d["choices"] for d in sources.load_docs("mmlu-stem/math", 50, 0))


@pytest.mark.needs_data
def test_easy_vqa_source_is_balanced():
    vqa = sources.load_docs("easy-vqa/test", 400, seed=0)
    yesno = sum(d["answer"] in ("yes", "no") for d in vqa)
    assert 0.4 < yesno / len(vqa) < 0.6


# --- a user's task: one YAML file and a JSONL file -----------------------------------------


def test_user_yaml_task_with_local_jsonl(tmp_path, text_adapter):
    folder = tmp_path / "mytask"
    folder.mkdir()
    docs = [{"id": f"q{i}", "q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(4)]
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "adds.yaml").write_text(
        "name: adds\ndomain: math\nkind: generate\nsource: data.jsonl\n"
        "prompt: 'Question: {q}\\nAnswer:'\ntarget: '{a}'\nextractor: number\n"
        "metric: math_equiv\nuntil: ['\\n']\nmax_new_tokens: 4\nlimit: 3\n")
    spec = get_task(str(folder / "adds.yaml"))
    assert (spec.name, spec.kind, spec.domain, spec.limit) == ("adds", "generate", "math", 3)
    prepared = prepare(str(folder / "adds.yaml"), text_adapter)
    details: list = []
    metrics = evaluate(text_adapter, prepared, details=details)
    assert metrics["n"] == 3 and {d["id"] for d in details} <= {"q0", "q1", "q2", "q3"}
    assert metrics["accuracy"] == sum(d["correct"] for d in details) / 3

    (folder / "nll.yaml").write_text("name: adds-nll\nkind: nll\nsource: data.jsonl\n"
                                     "prompt: '{q}'\ntarget: '{a}'\n")
    assert evaluate(text_adapter, prepare(str(folder / "nll.yaml"), text_adapter))["n"] == 4


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("name: x\nkind: choice\nsource: a.jsonl\nchoices: [yes, no]\n", "quote it"),
    ("name: x\nkind: guess\nsource: a.jsonl\n", "kind 'guess'"),
    ("name: x\nkind: nll\nsource: a.jsonl\ncolour: red\n", "unknown field 'colour'"),
    ("name: x\nkind: nll\n", "missing 'source'"),
    ("name: x\nkind: generate\nsource: a.jsonl\nextractor: magic\n", "unknown extractor"),
    ("name: x\nkind: generate\nsource: a.jsonl\nfewshot: 2\n", "fewshot_source"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_task_files_say_what_to_fix(tmp_path, yaml_text, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text)
    with pytest.raises(LayercutError, match=message):
        load_task(path)


def test_missing_data_and_template_fields_are_reported(tmp_path, text_adapter):
    (tmp_path / "t.yaml").write_text("name: t\nkind: nll\nsource: none.jsonl\n")
    with pytest.raises(LayercutError, match="not found"):
        prepare(str(tmp_path / "t.yaml"), text_adapter)
    (tmp_path / "d.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "u.yaml").write_text("name: u\nkind: nll\nsource: d.jsonl\ntarget: '{gold}'\n")
    with pytest.raises(LayercutError, match="needs 'gold'"):
        prepare(str(tmp_path / "u.yaml"), text_adapter)


# --- an LLM judge through an OpenAI-compatible endpoint ------------------------------------


class _JudgeHandler(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _JudgeHandler.seen.append((self.path, body))
        prompt = body["messages"][-1]["content"]
        # "correct" when the response mentions the reference answer
        ref = prompt.split("Reference answer: ")[1].split("\n")[0]
        response = prompt.split("Response: ")[1].rsplit("\nVerdict:", 1)[0]
        verdict = "CORRECT" if ref and ref in response else "INCORRECT"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


def test_judge_through_a_local_server(tmp_path, text_adapter):
    server = http.server.HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.timeout = 0.5
    deadline = time.monotonic() + 60  # the server stops by itself even if the test fails

    def serve():
        while time.monotonic() < deadline and not getattr(server, "stop", False):
            server.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # gold answers chosen so that some outputs contain them and some do not
        prepared = prepare(_short("gsm8k", fewshot=0, max_new_tokens=6), text_adapter, limit=3)
        rule: list = []
        evaluate(text_adapter, prepared, details=rule)
        for it, d in zip(prepared.items, rule):
            it.gold = d["output"][:2].strip() if it.id == prepared.items[0].id else "zzz-no"
        judged: list = []
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        metrics = evaluate(text_adapter, prepared, judge_url=url, judge_model="m", details=judged)
        expected = [bool(it.gold) and it.gold in d["output"] for it, d in zip(prepared.items, rule)]
        assert [d["correct"] for d in judged] == expected
        assert metrics["accuracy"] == sum(expected) / 3
        path, body = _JudgeHandler.seen[-1]
        assert path == "/v1/chat/completions" and body["model"] == "m"
    finally:
        server.stop = True
        thread.join(timeout=5)
        server.server_close()
    with pytest.raises(LayercutError, match="did not answer"):
        evaluate(text_adapter, prepared, judge_url=url)


# --- the real model (slow) -----------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_text_tasks():
    """SmolLM2-135M-Instruct on every built-in text task; run with -s to see the numbers.

    A few documents each (the generation tasks run up to 160 greedy tokens, ~3 s a document):
    only ranges are checked, and that dropping layers hurts. One torch thread: on a shared
    2-core machine two threads per process ran up to 8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapter = api.load_model("smollm2-135m")
        results = {}
        limits = {"nll-math": 12, "nll-general": 12, "mmlu-math": 12, "mmlu-science": 12, "gsm8k": 4, "math500": 4}
        for name, limit in limits.items():
            t0 = time.perf_counter()
            prepared = prepare(name, adapter, limit=limit)
            t1 = time.perf_counter()
            metrics = evaluate(adapter, prepared, batch_size=8)
            results[name] = metrics
            print(f"\n{name}: {metrics} (prepare {t1 - t0:.1f} s, evaluate "
                  f"{time.perf_counter() - t1:.1f} s)")
        assert 0.5 < results["nll-math"]["nll"] < 3.0
        assert 1.5 < results["nll-general"]["nll"] < 5.0
        # cloze MMLU and GSM8K sit near chance/zero for a 135M model: only ranges are checked
        assert all(0.0 <= r.get("accuracy", 0.0) <= 1.0 for r in results.values())
        with surgery.skipped(adapter, list(range(10, 16))):
            hurt = evaluate(adapter, prepare("nll-math", adapter, limit=limits["nll-math"]))
        print(f"\nnll-math without layers 10-15: {hurt}")
        assert hurt["nll"] > results["nll-math"]["nll"]
    finally:
        torch.set_num_threads(threads)
