"""The report of a synthetic sweep folder: files, self-contained HTML, tables and verdicts."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from layercut import report as report_module
from layercut.errors import LayercutError
from layercut.regimes import Analysis
from layercut.report import read_sweep, write_report
from layercut.scoring import DomainScores, LayerScores
from tests.test_regimes import ACC, BUDGETS, sweep_frame

L = 24
PROTECT = [0, L - 1]


def drop_sets(method: str, k: int) -> list[int]:
    """Drop sets with each family's shape, for the dropped-layers map."""
    if k == 0:
        return []
    if method == "block":
        return list(range(12 - k // 2, 12 - k // 2 + k))
    if method == "last":
        return list(range(L - 2, L - 2 - k, -1))
    if method in ("uniform", "spacing", "hybrid"):
        c = list(range(1, L - 1))
        return [c[(2 * j + 1) * len(c) // (2 * k)] for j in range(k)]
    offset = {"math": 0, "nonmath": 3, "bi": 5}.get(method, 1)
    return sorted({1 + (offset + 7 * j) % (L - 2) for j in range(k)})[:k]


def scores() -> LayerScores:
    def domain(shift: float) -> DomainScores:
        cos = [0.80 + 0.19 * (1 - abs(l - 14 - shift) / 14) for l in range(L)]
        block = [[min(1.0, 0.05 * n * (1 + abs(l - 12) / 12)) for n in range(1, L - l + 1)] for l in range(L)]
        return DomainScores(cosine=cos, angular=[0.0] * L, tokens=[100] * L, zero_norm=[0] * L, samples=10,
                            block_distance=block, block_samples=10)

    return LayerScores(num_layers=L, domains={"math": domain(0.0), "general": domain(-4.0)}, model="tiny/test")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep")
    df = sweep_frame()
    extra = df[df.method == "math"].copy()  # hybrid = math below 12, spacing from 12
    extra["method"] = "hybrid"
    spacing = df[df.method == "spacing"].set_index(["task", "metric", "budget"])["value"]
    late = extra.budget >= 12
    extra.loc[late, "value"] = [spacing[(t, m, k)] for t, m, k in extra.loc[late, ["task", "metric", "budget"]].values]
    df = pd.concat([df, extra], ignore_index=True)
    df["drop"] = [",".join(map(str, drop_sets(m, k))) for m, k in zip(df.method, df.budget)]
    df.to_parquet(path / "results.parquet")
    df.to_csv(path / "results.csv", index=False)
    spec = {"model": "tiny/test", "methods": list(ACC) + ["hybrid"], "budgets": BUDGETS,  # as sweep.SweepSpec
            "tasks": ["gsm8k", "mathvqa", "easyvqa"], "protect": "default", "num_layers": L, "protected": PROTECT,
            "options": {"domain": "math", "hybrid_threshold": 12, "hybrid_threshold_found": True}}
    (path / "sweep.json").write_text(json.dumps(spec))
    scores().save(path / "scores.json")
    return path


@pytest.fixture(scope="module")
def report(sweep_dir):
    return write_report(sweep_dir)


def test_report_files_exist_and_pngs_are_real(report, sweep_dir):
    assert report == sweep_dir / "report"
    names = {p.name for p in report.iterdir()}
    expected = {"report.md", "report.html", "analysis.json", "curves_accuracy.png", "spread_accuracy.png",
                "curves_nll.png", "spread_nll.png", "layer_scores.png", "block_distance.png", "dropped_layers.png"}
    assert expected <= names
    for png in report.glob("*.png"):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png.name
    assert not [p for p in sweep_dir.iterdir() if p.name.startswith(".report.tmp")]  # no temp left behind


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(list(report.glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert "href=" not in page


def test_markdown_has_boundaries_claims_and_hybrid(report):
    md = (report / "report.md").read_text()
    assert "## Regime boundaries" in md
    assert "| series | ε | 1 ranking-sensitive | 2 converging | 3 structure-dominated | k2 | k3 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| `domain:math/accuracy` |"))
    assert "k=2–4" in row and "k=6–10" in row and "k=12–16" in row and row.endswith("| 6 | 12 |")
    general = next(line for line in md.splitlines() if line.startswith("| `domain:general/accuracy` |"))
    assert "absent: " in general
    assert "## Claims" in md
    claims = next(line for line in md.splitlines() if line.startswith("| `domain:math/accuracy` | holds"))
    assert claims == "| `domain:math/accuracy` | holds | holds | holds |"
    assert "**H1** (at low budgets the choice of method matters): **holds** — spread S*=" in md
    assert "Hybrid threshold: k = 12." in md
    assert "The sweep ran `hybrid` with threshold k = 12 (found by the same analysis" in md
    assert "consistent with the above" in md and "**protected layers** 0, 23" in md
    assert "## Hybrid vs its parents" in md and "| k | hybrid | math | spacing | better parent |" in md
    assert "Regime 3 (structure-dominated) starts at k3" in md  # the rule is printed
    for png in report.glob("*.png"):
        assert f"]({png.name})" in md


def test_analysis_json_matches_the_report(report):
    a = Analysis.load(report / "analysis.json")
    d = a.get("domain", "math")
    assert (d.k2, d.k3) == (6, 12)
    assert a.get("domain", "general").regime(1).present is False


def test_rerun_replaces_the_report(sweep_dir, report, monkeypatch):
    monkeypatch.setattr(report_module, "draw_figures", lambda *args: [])  # the files, not the plots, matter here
    monkeypatch.setattr(report_module, "frontier_blocks", lambda *args, **kwargs: [])  # it draws frontier.png
    (report / "stale.txt").write_text("old")
    again = write_report(sweep_dir)
    assert again == report and not (again / "stale.txt").exists()
    assert (again / "report.html").is_file() and not list(again.glob("*.png"))


def test_csv_only_sweep_and_no_scores(tmp_path, sweep_dir):
    df = pd.read_csv(sweep_dir / "results.csv")
    df[(df.task == "gsm8k") & df.method.isin(["math", "block", "spacing"])].to_csv(tmp_path / "results.csv", index=False)
    sweep = read_sweep(tmp_path)
    assert sweep.scores is None and sweep.spec == {}
    assert sweep.results.loc[sweep.results.budget == 0, "drop"].eq("").all()
    out = write_report(tmp_path, out=tmp_path / "elsewhere")
    names = {p.name for p in out.iterdir()}
    assert "layer_scores.png" not in names and "block_distance.png" not in names
    assert "dropped_layers.png" in names  # the layer count is inferred from the drops


def test_missing_sweep_names_the_fix(tmp_path):
    with pytest.raises(LayercutError, match="layercut sweep"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(LayercutError, match="results.parquet or results.csv"):
        write_report(tmp_path)
