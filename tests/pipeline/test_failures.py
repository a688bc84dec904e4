"""A pass that cannot handle the model says so before anything trains; a branch that
fails loses only itself: the others are exported, measured and reported."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from torch import nn

import compresskit
from compresskit.bench.report import Report
from compresskit.bench.verdict import EXIT_FAILED, exit_code
from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import Effects, Pass, PassConfig, register_pass
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.pipeline import BranchFailure, Pipeline, run_pipeline
from compresskit.testing import TinyCNN, tiny_data
from compresskit.testing.layers import TinyRecurrent


class BreakConfig(PassConfig):
    pass


@register_pass("test_break")
class Break(Pass[BreakConfig]):
    """Fails while it runs (after the up-front checks passed)."""

    config_cls = BreakConfig
    effects = Effects()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        raise CompressKitError("test_break: this layer cannot be done; set skip: true")


def test_a_refusal_comes_before_any_training() -> None:
    data = tiny_data()
    ctx = Context(data=data, teacher=TinyRecurrent(nn.LSTM), example_inputs=data.example_inputs(2))
    pipeline = (
        Pipeline()
        .add("distill", Distill(DistillConfig.model_validate({"train": {"epochs": 50}})))
        .add("int8", Quantize(QuantizeConfig()), after="distill")
    )
    start = time.perf_counter()
    with pytest.raises(CompressKitError, match="node 'int8' \\(quantize\\): quantize: layer 'rnn'"):
        run_pipeline(pipeline, TinyRecurrent(nn.LSTM), ctx)
    assert time.perf_counter() - start < 30  # 50 epochs of distillation would take longer


def test_a_failing_branch_is_listed_and_the_others_run() -> None:
    data = tiny_data()
    ctx = Context(data=data, teacher=None, example_inputs=data.example_inputs(2))
    pipeline = (
        Pipeline()
        .add("broken", Break(BreakConfig()))
        .add("after-broken", QuantizeDynamic(QuantizeDynamicConfig()), after="broken")
        .add("dynamic", QuantizeDynamic(QuantizeDynamicConfig()))
    )
    with pytest.raises(CompressKitError, match="cannot be done"):
        run_pipeline(pipeline, TinyCNN(), ctx)  # without a failures list: stops
    failures: list[BranchFailure] = []
    candidates = run_pipeline(pipeline, TinyCNN(), ctx, failures=failures)
    assert [c.name for c in candidates] == ["dynamic"]
    (failure,) = failures
    assert (failure.node, failure.pass_name, failure.candidates) == (
        "broken",
        "test_break",
        ["after-broken"],
    )


def test_the_run_reports_the_failed_candidate_and_exits_4(tmp_path: Path) -> None:
    pipeline = (
        Pipeline()
        .add("dynamic", QuantizeDynamic(QuantizeDynamicConfig()))
        .add("broken", Break(BreakConfig()))
    )
    result = compresskit.run(
        pipeline, model=TinyCNN(), data=tiny_data(), out=tmp_path / "run", latency_seconds=0.05
    )
    report = Report.load(tmp_path / "run" / "report.json")
    assert [c.name for c in report.candidates] == ["dynamic"]
    assert report.candidates[0].latency  # the one that finished was measured
    (failed,) = report.failed
    assert (failed.name, failed.node, failed.pass_name) == ("broken", "broken", "test_break")
    assert "set skip: true" in failed.error
    assert "broken: failed" in report.verdict.reasons and report.verdict.measured is False
    assert exit_code(report) == EXIT_FAILED and exit_code(result.report) == EXIT_FAILED
    markdown = (tmp_path / "run" / "report.md").read_text()
    html = (tmp_path / "run" / "report.html").read_text()
    assert "FAILED in node 'broken' (test_break)" in markdown
    assert "FAILED in node" in html
