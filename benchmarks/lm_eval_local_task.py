"""Write an offline lm-eval task from one of layercut's built-in choice tasks (its documents as a
local JSONL file and a task YAML reading it), for sweeps that mix layercut's and lm-eval's tasks.

    python benchmarks/lm_eval_local_task.py runs/adaptive/tasks --task mmlu-science --n 64
    layercut sweep ... --tasks nll-math,lm-eval:layercut_mmlu_science@general --include-path runs/adaptive/tasks
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from layercut.evaluation import get_task
from layercut.evaluation.sources import load_docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--task", default="mmlu-science")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    spec = get_task(args.task)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        docs = load_docs(spec.resolve(spec.source), args.n, 0, Path(work))
    rows = [{"question": d["question"], "choices": [str(c) for c in d["choices"]],
             "label": [str(c) for c in d["choices"]].index(str(d["answer"]))} for d in docs]
    name = "layercut_" + args.task.replace("-", "_")
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {(out / name).absolute()}.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n")
    print(f"wrote {out / name}.yaml and .jsonl ({len(rows)} documents): lm-eval:{name}")


if __name__ == "__main__":
    main()
