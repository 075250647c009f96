"""The harness bridges on small local tasks, fully offline.

- lmms-eval: the real CLI, `--model layercut` found through the entry point, on a physically
  pruned tiny LLaVA and on the unpruned one with `drop=` applied in memory: same answers.
- lm-eval: `run_lm_eval` on a layer-skip view equals a physically pruned, reloaded copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from layercut import api, models, surgery
from layercut.errors import LayercutError

DROP = [2, 3]
TASKS = {"layercut_colours_gen": "exact_match", "layercut_colours_mc": "acc"}  # lmms-eval task: metric
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
OFFLINE_ENV = {
    # Tiny models gain nothing from threads, and on a busy 2-core machine spinning threads cost 3x.
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ---------------------------------------------------------------- local tasks


def write_lmms_tasks(folder: Path) -> Path:
    """Two lmms-eval tasks over 6 coloured-square images: greedy exact match and multiple choice."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, name in enumerate(list(COLOURS) * 2):
        path = folder / "images" / f"{i}.png"
        Image.new("RGB", (32, 32), COLOURS[name]).save(path)
        rows.append({"id": i, "image": f"images/{i}.png", "question": "What colour is the square?",
                     "answer": name, "choices": list(COLOURS), "label": list(COLOURS).index(name)})
    data = folder / "colours.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Images resolve against this file's folder, so the task folder can move as one piece.
    (folder / "utils.py").write_text(textwrap.dedent('''
        from pathlib import Path
        from PIL import Image

        HERE = Path(__file__).parent

        def doc_to_visual(doc):
            return [Image.open(HERE / doc["image"]).convert("RGB")]

        def doc_to_text(doc, lmms_eval_specific_kwargs=None):
            return doc["question"] + " Answer with one word."

        def doc_to_choice(doc):
            return doc["choices"]

        def doc_to_target(doc):
            return doc["label"]
    '''))
    common = textwrap.dedent(f'''
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
    ''')
    head = "task: layercut_colours_gen\noutput_type: generate_until\n"
    (folder / "colours_gen.yaml").write_text(head + common + textwrap.dedent('''
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 3
          until: ["\\n"]
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
            ignore_case: true
    '''))
    head = "task: layercut_colours_mc\noutput_type: multiple_choice\n"
    (folder / "colours_mc.yaml").write_text(head + common + textwrap.dedent('''
        doc_to_choice: !function utils.doc_to_choice
        doc_to_target: !function utils.doc_to_target
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
    '''))
    return folder


def write_lm_tasks(folder: Path) -> Path:
    """Two lm-eval tasks: cloze multiple choice (acc) and rolling log-likelihood (perplexity)."""
    folder.mkdir(parents=True)
    cloze = [
        {"question": "The cat sat on the", "choices": ["mat", "library", "answer"], "label": 0},
        {"question": "People read books in the", "choices": ["cat", "library", "apples"], "label": 1},
        {"question": "Tom has 3 boxes with 4", "choices": ["apples", "doors", "mats"], "label": 0},
        {"question": "What is the value of the tallest", "choices": ["house", "bar", "study"], "label": 1},
        {"question": "The library is a quiet", "choices": ["place", "box", "seven"], "label": 0},
        {"question": "A cat sat near the door of the", "choices": ["bar", "value", "house"], "label": 2},
    ]
    texts = [
        {"text": "The library is a quiet place where people read books and study."},
        {"text": "A cat sat on the warm mat near the door of the house."},
        {"text": "Question: Tom has 3 boxes with 4 apples each. How many apples? Answer: 12."},
        {"text": "What is the value of the tallest bar? The answer is 7."},
    ]
    (folder / "cloze.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cloze))
    (folder / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    (folder / "cloze.yaml").write_text(textwrap.dedent(f'''
        task: layercut_cloze
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / "cloze.jsonl"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
    '''))
    (folder / "ppl.yaml").write_text(textwrap.dedent(f'''
        task: layercut_ppl
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / "text.jsonl"}
        test_split: test
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: word_perplexity
            aggregation: weighted_perplexity
            higher_is_better: false
          - metric: bits_per_byte
            aggregation: bits_per_byte
            higher_is_better: false
    '''))
    return folder


# ---------------------------------------------------------------- lmms-eval


def run_lmms_cli(model_args: str, tasks_dir: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV, "HF_DATASETS_CACHE": str(out / "hf-datasets")}
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", "layercut", "--model_args", model_args,
        "--tasks", ",".join(TASKS), "--include_path", str(tasks_dir),
        "--output_path", str(out), "--log_samples", "--verbosity", "WARNING",
    ]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)


def logged_samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"*samples_{task}.jsonl"))
    assert files, f"no samples file for {task} under {out}"
    rows = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def test_lmms_eval_cli_on_pruned_and_virtually_pruned_vlm(tiny_llava_dir, tmp_path):
    pytest.importorskip("lmms_eval")
    tasks_dir = write_lmms_tasks(tmp_path / "tasks")
    pruned = tmp_path / "pruned"
    api.prune(str(tiny_llava_dir), drop=DROP, out=pruned)

    runs = {}
    for name, model_args in {
        "pruned": f"pretrained={pruned}",
        "virtual": f"pretrained={tiny_llava_dir},drop={','.join(map(str, DROP))}",
    }.items():
        proc = run_lmms_cli(model_args, tasks_dir, tmp_path / f"out-{name}")
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        # The CLI reports a failed evaluation with exit code 0: the result table is the proof.
        for task, metric in TASKS.items():
            assert task in proc.stdout and metric in proc.stdout, log[-4000:]
        runs[name] = {task: logged_samples(tmp_path / f"out-{name}", task) for task in TASKS}

    gen = {name: [r["filtered_resps"] for r in run["layercut_colours_gen"]] for name, run in runs.items()}
    assert len(gen["pruned"]) == 6 and gen["pruned"] == gen["virtual"]
    mc = {name: [r["filtered_resps"] for r in run["layercut_colours_mc"]] for name, run in runs.items()}
    assert mc["pruned"] == mc["virtual"]

    # In memory, through a layer-skip view of the unpruned model: the same scores as the CLI's.
    from layercut.bridges.lmms_eval_plugin import run_lmms_eval

    adapter = models.load(str(tiny_llava_dir))
    with surgery.skipped(adapter, DROP):
        metrics = run_lmms_eval(adapter, list(TASKS), include_path=str(tasks_dir), include_defaults=False)
    cli = json.loads(next((tmp_path / "out-pruned").rglob("*_results.json")).read_text())["results"]
    for task, metric in TASKS.items():
        assert metrics[task][f"{metric},none"] == pytest.approx(cli[task][f"{metric},none"])


def test_lmms_backend_scores_and_rounds_in_process(tiny_llava_dir):
    """loglikelihood = summed NLL of the continuation after the prompt; drop changes it; multi-round runs."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance, unwrap_generation_output

    from layercut.bridges.lmms_eval_plugin import LayercutLMMS, parse_drop

    adapter = models.load(str(tiny_llava_dir))
    backend = LayercutLMMS(adapter=adapter)
    doc = {"image": Image.new("RGB", (32, 32), COLOURS["red"]), "question": "What colour?"}
    backend.task_dict = {"t": {"test": [doc]}}
    meta = {"task": "t", "doc_id": 0, "repeats": 1}

    def visual(d: dict) -> list:
        return [d["image"]]

    def ll(continuation: str) -> tuple[float, bool]:
        req = Instance("loglikelihood", ("What colour?", continuation, visual, 0, "t", "test"), 0, metadata=meta)
        # what lmms-eval's evaluator will hand to the task: the (log-prob, greedy) pair itself
        value, _ = unwrap_generation_output(backend.loglikelihood([req])[0])
        return value

    full, _ = ll(" red")
    # The same number by hand: prompt through processor + chat template, continuation appended.
    prompt = backend._encode([("What colour?", [doc["image"]])])
    cont = adapter.tokenizer(" red", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], torch.tensor([cont])], dim=1)
    with torch.no_grad():
        logits = adapter.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt["pixel_values"]
        ).logits
    n = prompt["input_ids"].shape[1]
    expected = torch.log_softmax(logits[0, n - 1 : n - 1 + len(cont)], -1).gather(1, torch.tensor(cont)[:, None]).sum()
    assert full == pytest.approx(-float(expected), abs=1e-4)
    with surgery.skipped(adapter, DROP):
        assert ll(" red")[0] != pytest.approx(full, abs=1e-4)
    assert ll(" red")[0] == pytest.approx(full, abs=1e-6)

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        if round_idx == 2:
            return None, None, True, previous_output, None
        return [doc["image"]], "And now?", False, previous_output, {"round": round_idx}

    req = Instance("generate_until_multi_round",
                   ("What colour?", {"max_new_tokens": 2}, visual, doc_to_text, 0, "t", "test"), 0, metadata=meta)
    rounds = backend.generate_until_multi_round([req])[0]
    assert isinstance(rounds, list) and len(rounds) == 2 and all(isinstance(r, str) for r in rounds)

    assert parse_drop("[2,3]") == parse_drop("2;3") == parse_drop("2,3") == [2, 3]
    with pytest.raises(LayercutError, match="unknown --model_args key 'drops'"):
        LayercutLMMS.create_from_arg_string(f"pretrained={tiny_llava_dir},drops=2")
    with pytest.raises(LayercutError, match="layer 9 does not exist"):
        LayercutLMMS.create_from_arg_string(f"pretrained={tiny_llava_dir},drop=2,9")


def test_lmms_backend_takes_allow_and_extends_mllamas_cross_attention_mask(tiny_mllama_dir):
    """`allow=` lifts Mllama's guard for `drop=`; a choice's continuation after an image prompt
    sees the image as the processor's mask would (every token from the image on, real tiles)."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance, unwrap_generation_output

    from layercut.bridges.lmms_eval_plugin import LayercutLMMS

    with pytest.raises(LayercutError, match="layer 2 is protected"):
        LayercutLMMS.create_from_arg_string(f"pretrained={tiny_mllama_dir},drop=2,3")
    with pytest.raises(LayercutError, match="no guarded layers called 'vision'"):
        LayercutLMMS.create_from_arg_string(f"pretrained={tiny_mllama_dir},drop=2,allow=vision")
    backend = LayercutLMMS.create_from_arg_string(f"pretrained={tiny_mllama_dir},drop=2,3,allow=cross-attention")
    assert backend.dropped == [2, 3] and backend.adapter.text_config.cross_attention_layers == [2]
    doc = {"image": Image.new("RGB", (16, 16), COLOURS["red"])}
    backend.task_dict = {"t": {"test": [doc]}}
    req = Instance("loglikelihood", ("What colour?", " red", lambda d: [d["image"]], 0, "t", "test"), 0,
                   metadata={"task": "t", "doc_id": 0, "repeats": 1})
    (nll, _), _ = unwrap_generation_output(backend.loglikelihood([req])[0])
    prompt = backend._encode([("What colour?", [doc["image"]])])
    cont = torch.tensor([backend.tokenizer(" red", add_special_tokens=False)["input_ids"]])
    ids = torch.cat([prompt["input_ids"], cont], dim=1)
    seen = ((ids == backend.adapter.image_token_id).cumsum(1) > 0).long()[:, :, None, None]
    pixels = {k: prompt[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
    with torch.no_grad():
        logits = backend.model(input_ids=ids, cross_attention_mask=seen * prompt["aspect_ratio_mask"][:, None],
                               **pixels).logits[0].float()
    n = prompt["input_ids"].shape[1]
    expected = -torch.log_softmax(logits[n - 1:-1], -1).gather(1, cont[0][:, None]).sum()
    assert nll == pytest.approx(float(expected), abs=1e-4)


# ---------------------------------------------------------------- lm-eval


def test_run_lm_eval_skip_view_equals_pruned_reload(tiny_text_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from layercut.bridges.lm_eval_bridge import run_lm_eval

    tasks_dir = write_lm_tasks(tmp_path / "lm-tasks")
    tasks = ["layercut_cloze", "layercut_ppl"]
    adapter = models.load(str(tiny_text_dir))
    with surgery.skipped(adapter, DROP):
        virtual = run_lm_eval(adapter, tasks, include_path=str(tasks_dir), batch_size=4)
    full = run_lm_eval(adapter, tasks, include_path=str(tasks_dir), batch_size=4, include_defaults=False)

    pruned_dir = tmp_path / "pruned"
    api.prune(str(tiny_text_dir), drop=DROP, out=pruned_dir)
    reloaded = run_lm_eval(
        models.load(str(pruned_dir)), tasks, include_path=str(tasks_dir), batch_size=4, include_defaults=False
    )

    assert set(virtual) == set(tasks)
    assert 0.0 <= virtual["layercut_cloze"]["acc,none"] <= 1.0
    ppl = virtual["layercut_ppl"]["word_perplexity,none"]
    assert ppl > 1.0
    assert virtual["layercut_cloze"]["acc,none"] == reloaded["layercut_cloze"]["acc,none"]
    assert ppl == pytest.approx(reloaded["layercut_ppl"]["word_perplexity,none"], rel=1e-6)
    # the view really removed layers, and left the model whole afterwards
    assert full["layercut_ppl"]["word_perplexity,none"] != pytest.approx(ppl, rel=1e-3)
    assert adapter.num_layers == 6


def test_run_lm_eval_unknown_task_is_one_line(tiny_text_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from layercut.bridges.lm_eval_bridge import run_lm_eval

    with pytest.raises(LayercutError, match="no task 'no_such_task'"):
        run_lm_eval(
            models.load(str(tiny_text_dir)), ["no_such_task"],
            include_path=str(write_lm_tasks(tmp_path / "t")), include_defaults=False,
        )
