"""Reports of embedding tasks: cosine metrics, cos columns, the cosine chart and the CLI
table; reports written before ``task`` existed still read as classification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_report import report_dict, version_2

from compresskit.bench.markdown import render_markdown
from compresskit.bench.output import write_reports
from compresskit.bench.plots import pareto_png
from compresskit.bench.report import Report
from compresskit.bench.text import table_rows
from compresskit.bench.verdict import judge
from compresskit.budget import Budget
from compresskit.cli.main import cli
from compresskit.tasks import get_task


def embedding_report_dict() -> dict:
    data = report_dict() | {"task": "embedding"}
    cosines = {"baseline": 1.0, "int8": 0.98, "slow": 0.91}
    for item in [data["baseline"], *data["candidates"]]:
        cosine = cosines[item["name"]]
        item["metrics"] = {
            "cosine": cosine,
            "cosine_p5": cosine - 0.05 * (cosine < 1),
            "cosine_min": cosine - 0.1 * (cosine < 1),
            "mse": 1 - cosine,
        }
    return data


def test_embedding_metrics_against_the_baseline() -> None:
    baseline = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    outputs = np.array([[2.0, 0.0], [0.0, -1.0], [4.0, 3.0]], dtype=np.float32)
    score = get_task("embedding").score
    labels = np.zeros(3)  # placeholders: an embedding task reads no labels
    metrics = score(outputs, labels, baseline)
    cosines = np.array([1.0, -1.0, 24 / 25])
    assert metrics["cosine"] == pytest.approx(cosines.mean())
    assert metrics["cosine_min"] == pytest.approx(-1.0)
    assert metrics["cosine_p5"] == pytest.approx(np.percentile(cosines, 5))
    assert metrics["mse"] == pytest.approx(((outputs - baseline) ** 2).mean())
    assert score(baseline, labels, baseline)["cosine"] == pytest.approx(1.0)
    assert "accuracy" not in metrics


def test_reports_without_a_task_read_as_classification(tmp_path: Path) -> None:
    old = version_2(report_dict())
    assert "task" not in old
    (tmp_path / "report.json").write_text(json.dumps(old))
    report = Report.load(tmp_path / "report.json")
    assert report.task == "classification"
    header, rows = table_rows(report)
    assert header[4:6] == ["acc", "agree"] and rows[0][4] == "0.9500"
    assert "Accuracy is measured with ONNX Runtime" in render_markdown(report)


def test_embedding_report_shows_cosine_columns_note_and_chart(tmp_path: Path) -> None:
    report = Report.model_validate(embedding_report_dict())
    header, rows = table_rows(report)
    assert header[4:6] == ["cos", "cos p5"]
    assert [row[4:6] for row in rows] == [
        ["1.0000", "1.0000"],
        ["0.9800", "0.9300"],
        ["0.9100", "0.8600"],
    ]
    markdown = render_markdown(report)
    assert "Cosine is measured with ONNX Runtime" in markdown
    assert "Accuracy is measured" not in markdown and "| acc |" not in markdown
    assert (pareto_png(report) or b"").startswith(b"\x89PNG")
    write_reports(report, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Cosine to baseline vs latency</h2>" in html and "<th>cos p5</th>" in html
    assert "Accuracy vs latency" not in html
    assert Report.load(tmp_path / "report.json").task == "embedding"


def test_cli_report_prints_the_cosine_table(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps(embedding_report_dict()))
    result = CliRunner().invoke(cli, ["report", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cos p5" in result.output and "0.9300" in result.output
    assert " acc " not in result.output


def test_each_task_reads_its_own_budget() -> None:
    budget = Budget(max_accuracy_drop=0.02, min_cosine=0.95)
    classification = judge(Report.model_validate(report_dict()), budget)
    entry = classification.candidates[0]
    assert "accuracy within budget (-1.00 points" in entry.summary
    assert entry.verdict is not None
    assert "budget min_cosine does not apply to the classification task" in entry.verdict.lines[-1]
    embedding = judge(Report.model_validate(embedding_report_dict()), budget)
    good, bad = embedding.candidates
    assert "cosine 0.9800 to the baseline, within budget (min 0.95)" in good.summary
    assert "BELOW budget (min 0.95)" in bad.summary
    assert bad.verdict is not None and bad.verdict.budget_met is False
    assert bad.verdict.reasons[-1] == "cosine_below_budget"
    lines = bad.verdict.lines
    assert "cosine 0.9100 to the baseline, BELOW budget (min 0.95); p5 0.8600" in lines[-2]
    assert "max_accuracy_drop does not apply" in lines[-1]
