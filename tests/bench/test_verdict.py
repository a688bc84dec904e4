"""The machine-readable verdict: flags, reason codes and exit codes per candidate and run."""

from __future__ import annotations

from typing import Any

from test_report import report_dict

from compresskit.bench.report import Report
from compresskit.bench.verdict import (
    EXIT_BUDGET_MISSED,
    EXIT_FAILED,
    EXIT_OK,
    exit_code,
    judge,
)
from compresskit.budget import Budget


def judged(budget: Budget, change: Any = None) -> Report:
    data = report_dict()
    if change is not None:
        change(data)
    report = Report.model_validate(data)
    for entry in report.candidates:
        entry.verdict = None
    return judge(report, budget)


def test_a_good_candidate_and_one_over_budget_and_slower() -> None:
    report = judged(Budget(max_accuracy_drop=0.02, min_int8_coverage=0.9))
    good, slow = report.candidates
    assert good.verdict is not None and slow.verdict is not None
    assert good.verdict.reasons == []
    assert (good.verdict.budget_met, good.verdict.faster) == (True, True)
    assert (good.verdict.low_bit, good.verdict.measured, good.verdict.parity_ok) == (
        True,
        True,
        True,
    )
    assert "accuracy within budget (-1.00 points, allowed -2.0)" in good.summary
    assert "faster on cpu-ort (b1 2.00x, b8 2.00x) (noisy)" in good.summary
    assert "cuda-ort skipped" in good.summary
    assert slow.verdict.reasons == [
        "not_faster_cpu-ort_b1",
        "not_faster_cpu-ort_b8",
        "accuracy_over_budget",
    ]
    assert (slow.verdict.budget_met, slow.verdict.faster) == (False, False)
    assert "NOT faster on cpu-ort at batch 1: 0.67x" in slow.verdict.lines
    run = report.verdict
    assert run is not None and run.budget_met is False and run.measured is True
    assert "slow: accuracy_over_budget" in run.reasons
    assert run.summary.startswith("2 candidates: within budget 1 of 2, faster 1 of 2")
    assert exit_code(report) == EXIT_BUDGET_MISSED
    saved = Report.model_validate_json(report.model_dump_json())
    assert saved.verdict == run and saved.budget == Budget(
        max_accuracy_drop=0.02, min_int8_coverage=0.9
    )


def test_int8_coverage_below_the_budget_is_a_missed_budget() -> None:
    report = judged(Budget(min_int8_coverage=0.99))
    verdict = report.candidates[0].verdict
    assert verdict is not None and verdict.low_bit is False and verdict.budget_met is False
    assert "int8_coverage_below_budget" in verdict.reasons
    assert "BELOW the budget's int8 coverage of 99%" in verdict.lines
    assert "int8 NOT really used (95% of MACs)" in verdict.summary


def test_unmeasured_or_disagreeing_candidates_fail_the_run() -> None:
    def unmeasured(data: dict) -> None:
        data["candidates"][0]["latency"] = []
        data["candidates"][0]["sessions"] = [{"target": "cpu-ort", "error": "OOM"}]

    report = judged(Budget(), unmeasured)
    verdict = report.candidates[0].verdict
    assert verdict is not None and verdict.measured is False and verdict.faster is None
    assert verdict.reasons == ["not_measured_cpu-ort"]
    assert "not measured on cpu-ort" in verdict.summary
    assert exit_code(report) == EXIT_FAILED

    def disagrees(data: dict) -> None:
        data["candidates"][1]["parity"]["ok"] = False

    report = judged(Budget(max_accuracy_drop=0.5), disagrees)
    verdict = report.candidates[1].verdict
    assert verdict is not None and verdict.parity_ok is False and "parity_failed" in verdict.reasons
    assert exit_code(report) == EXIT_FAILED

    def nothing_ran(data: dict) -> None:
        data["targets"] = []

    verdict = judged(Budget(), nothing_ran).candidates[0].verdict
    assert verdict is not None and verdict.measured is False and "no_target_ran" in verdict.reasons


def test_no_budget_means_no_budget_verdict_and_exit_ok() -> None:
    report = judged(Budget())
    assert [e.verdict.budget_met for e in report.candidates if e.verdict] == [None, None]
    assert report.verdict is not None and report.verdict.budget_met is None
    assert "accuracy -1.00 points (no budget)" in report.candidates[0].summary
    assert (
        "accuracy 0.00 points"
        in judged(Budget(), lambda d: d["candidates"][0]["metrics"].update(accuracy=0.95))
        .candidates[0]
        .summary
    )  # never -0.00 or +0.00
    assert exit_code(report) == EXIT_OK


def test_export_skipped_and_each_task_reads_its_own_budget() -> None:
    def torch_only(data: dict) -> None:
        data["candidates"][0].update(parity=None, export_skipped="bitsandbytes layers")

    report = judged(Budget(min_cosine=0.9), torch_only)
    verdict = report.candidates[0].verdict
    assert verdict is not None and verdict.parity_ok is None and verdict.low_bit is None
    assert "export_skipped" in verdict.reasons
    assert "not exported (bitsandbytes layers)" in verdict.summary
    assert "budget min_cosine does not apply to the classification task; ignored" in verdict.lines


def test_an_unmeasured_baseline_or_a_failed_candidate_fails_the_run() -> None:
    def drop_baseline_latency(data: dict) -> None:
        data["baseline"]["latency"] = []

    report = judged(Budget(), drop_baseline_latency)
    assert report.verdict is not None and report.verdict.measured is False
    assert "baseline: not_measured_cpu-ort" in report.verdict.reasons
    assert exit_code(report) == EXIT_FAILED

    def add_failure(data: dict) -> None:
        data["failed"] = [
            {"name": "x", "node": "q", "pass_name": "quantize", "error": "layer 'rnn' ..."}
        ]

    report = judged(Budget(), add_failure)
    assert "x: failed" in report.verdict.reasons and "FAILED 1 of 3" in report.verdict.summary
    assert exit_code(report) == EXIT_FAILED
