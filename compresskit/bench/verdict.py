"""Judging a run: each candidate against the baseline and the policy's budget, and the run
as a whole, as flags and reason codes for machines and as sentences for people.

The task judges quality (``get_task(report.task).judge``: accuracy, agreement, cosine);
this module adds speed (every measured batch on every target that ran), int8 coverage,
ONNX parity and export. :func:`exit_code` maps the run's verdict to the documented exit
codes of ``compresskit compress``:

- ``0`` (:data:`EXIT_OK`): every candidate measured, ONNX parity held, budget met or not set;
- ``3`` (:data:`EXIT_BUDGET_MISSED`): a candidate misses the budget (quality or int8
  coverage). Speed is reported (``faster``) but is not part of the budget;
- ``4`` (:data:`EXIT_FAILED`): a candidate failed ONNX parity, was not measured on a
  target that ran, or could not be made (its branch failed; this wins over 3).

Example::

    report = judge(report, policy.budget)
    report.candidates[0].verdict.reasons
    # -> ['not_faster_cpu-ort_b1']
"""

from __future__ import annotations

from collections.abc import Iterable

from compresskit.bench.report import Entry, FailedCandidate, Report, RunVerdict, Verdict
from compresskit.budget import Budget
from compresskit.tasks import Task, get_task

FASTER = 1.05  # a speedup must beat timing noise by this much to count
DEFAULT_MIN_INT8 = 0.5  # int8 "really used" when no budget says how much
EXIT_OK, EXIT_BUDGET_MISSED, EXIT_FAILED = 0, 3, 4


def judge(report: Report, budget: Budget) -> Report:
    """Set every candidate's verdict and the run's (in place); returns ``report``."""
    task = get_task(report.task)
    report.budget = budget
    for entry in report.candidates:
        entry.verdict = judge_candidate(entry, report, task=task, budget=budget)
    report.verdict = judge_run(report.candidates, report.failed)
    unmeasured = [
        run.target
        for run in report.targets
        if not run.skipped
        and not any(x.target == run.target and x.workload is None for x in report.baseline.latency)
    ]
    if unmeasured:  # no speedup can be claimed for anything on those targets
        report.verdict.measured = False
        report.verdict.reasons += [f"baseline: not_measured_{target}" for target in unmeasured]
        report.verdict.summary += f"; baseline NOT measured on {', '.join(unmeasured)}"
    return report


def _all(flags: Iterable[bool | None]) -> bool | None:
    """False if any is False, None if none applies, else True."""
    known = [f for f in flags if f is not None]
    return None if not known else all(known)


def judge_candidate(entry: Entry, report: Report, *, task: Task, budget: Budget) -> Verdict:
    """``entry`` against ``report.baseline`` and ``budget``."""
    verdict = Verdict()
    clauses = _speed(entry, report, verdict)
    coverage_met = _low_bit(entry, budget, verdict, clauses)
    judgement = task.judge(entry.metrics, report.baseline.metrics, budget)
    clauses.append(judgement.clause)
    verdict.lines += judgement.lines + task.unused_budget(budget)
    if judgement.met is False:
        verdict.reasons.append(judgement.code)
    verdict.budget_met = _all([judgement.met, coverage_met])
    if entry.parity is None:
        verdict.reasons.append("export_skipped")
        clauses.append(f"not exported ({entry.export_skipped})")
    else:
        verdict.parity_ok = entry.parity.ok
        if not entry.parity.ok:
            verdict.reasons.append("parity_failed")
            clauses.append("ORT DISAGREES with torch")
    verdict.summary = "; ".join(clauses)
    return verdict


def _speed(entry: Entry, report: Report, verdict: Verdict) -> list[str]:
    """Speed clauses per target; sets ``faster``, ``measured`` and their reasons."""
    clauses, faster, measured = [], [], []
    ran = [t.target for t in report.targets if not t.skipped]
    for target in ran:
        points = [x for x in entry.latency if x.target == target and x.workload is None]
        measured.append(bool(points))
        if not points:
            verdict.reasons.append(f"not_measured_{target}")
            clauses.append(f"not measured on {target}")
            continue
        ratios = [x for x in points if x.speedup is not None]
        for x in ratios:
            assert x.speedup is not None
            fast = x.speedup > FASTER
            faster.append(fast)
            if not fast:
                verdict.reasons.append(f"not_faster_{target}_b{x.batch}")
            verdict.lines.append(
                f"{'faster' if fast else 'NOT faster'} on {target} at batch {x.batch}: "
                f"{x.speedup:.2f}x{' (noisy)' if x.noisy else ''}"
            )
        if not ratios:
            clauses.append(f"measured on {target}, no baseline to compare")
            continue
        flags = [x.speedup is not None and x.speedup > FASTER for x in ratios]
        word = "faster" if all(flags) else ("NOT faster" if not any(flags) else "faster at some")
        text = ", ".join(f"b{x.batch} {x.speedup:.2f}x" for x in ratios)
        noisy = " (noisy)" if any(x.noisy for x in ratios) else ""
        clauses.append(f"{word} on {target} ({text}){noisy}")
    clauses += [f"{name} skipped" for name in report.skipped_targets]
    if not ran:
        verdict.reasons.append("no_target_ran")
    verdict.faster = _all(faster)
    verdict.measured = all(measured) if ran else False
    return clauses


def _low_bit(entry: Entry, budget: Budget, verdict: Verdict, clauses: list[str]) -> bool | None:
    """int8 coverage of an exported quantized candidate; sets ``low_bit``. Returns whether
    the budget's minimum coverage is met (None: no minimum, or not applicable)."""
    coverage = entry.int8_coverage or 0.0
    quantized = (
        entry.precision == "int8"
        or coverage > 0
        or any("quantize" in node or node == "qat" for node in entry.nodes)
    )
    if not quantized:
        clauses.append("float (no int8)")
        return None
    if entry.export_skipped is not None:
        return None  # low-bit in torch only: ORT's kernels cannot be checked
    minimum = budget.min_int8_coverage
    verdict.low_bit = coverage >= (DEFAULT_MIN_INT8 if minimum is None else minimum)
    kind = "int4" if entry.precision == "int4" else "int8"  # int4: MatMulNBits weights
    verdict.lines.append(f"{kind} kernels run {coverage:.0%} of the MACs in ONNX Runtime")
    word = f"{kind} used" if verdict.low_bit else f"{kind} NOT really used"
    clauses.append(f"{word} ({coverage:.0%} of MACs)")
    if minimum is None:
        if not verdict.low_bit:
            verdict.reasons.append("int8_not_used")
        return None
    if coverage < minimum:
        verdict.reasons.append("int8_coverage_below_budget")
        verdict.lines.append(f"BELOW the budget's int8 coverage of {minimum:.0%}")
    return coverage >= minimum


def judge_run(candidates: list[Entry], failed: Iterable[FailedCandidate] = ()) -> RunVerdict:
    """The candidates' verdicts combined (see :class:`RunVerdict`); a failed candidate
    counts as not measured."""
    verdicts = [(e.name, e.verdict) for e in candidates if e.verdict is not None]
    failed = list(failed)
    run = RunVerdict(
        reasons=[f"{name}: {code}" for name, v in verdicts for code in v.reasons]
        + [f"{f.name}: failed" for f in failed],
    )
    parts = []
    for field, label in (
        ("budget_met", "within budget"),
        ("faster", "faster"),
        ("low_bit", "int8 used"),
        ("measured", "measured"),
        ("parity_ok", "ONNX parity"),
    ):
        flags = [getattr(v, field) for _, v in verdicts]
        setattr(run, field, _all(flags))
        known = [f for f in flags if f is not None]
        if known:
            parts.append(f"{label} {sum(known)} of {len(known)}")
    if failed:
        run.measured = False
        parts.append(f"FAILED {len(failed)} of {len(verdicts) + len(failed)}")
    count = len(verdicts) + len(failed)
    run.summary = f"{count} candidate{'s' if count != 1 else ''}: " + (", ".join(parts) or "-")
    return run


def exit_code(report: Report) -> int:
    """The exit code the run's verdict calls for (see the module docstring). Reports
    without a machine-readable verdict (schema 1 and 2) give :data:`EXIT_OK`."""
    verdict = report.verdict or judge_run(report.candidates, report.failed)
    if report.failed or verdict.measured is False or verdict.parity_ok is False:
        return EXIT_FAILED
    if verdict.budget_met is False:
        return EXIT_BUDGET_MISSED
    return EXIT_OK
