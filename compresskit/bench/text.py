"""What every rendering of a report says (markdown, HTML, terminal): the table's columns,
the notes, the facts per model and the targets, as plain text; the renderers only lay
it out. Lines may hold ``code`` and **bold** in markdown's syntax.
"""

from __future__ import annotations

from collections.abc import Callable

from compresskit.bench.measurement import Session
from compresskit.bench.report import Entry, Report
from compresskit.tasks import MetricColumn, get_task
from compresskit.units import human_bytes, si

NOISY_NOTE = "* noisy: the machine was busy or the timings varied; see Targets."
LATENCY_NOTE = (
    "Latency is p50 per call; speedup is baseline p50 / candidate p50 on the same target "
    "and batch, measured interleaved in the same process."
)

# A column of the summary table: its header and the cell of one model.
Column = tuple[str, Callable[[Entry], str]]


def primary(report: Report) -> MetricColumn:
    """The metric charts put on their quality axis: accuracy, or cosine for embeddings."""
    return get_task(report.task).primary


def _metric(key: str) -> Callable[[Entry], str]:
    def cell(entry: Entry) -> str:
        value = entry.metrics.get(key)
        return "-" if value is None else f"{value:.4f}"

    return cell


def model_columns(report: Report) -> list[Column]:
    """Size, the task's metric columns and the int8 share."""
    columns: list[Column] = [
        ("params", lambda e: f"{e.params:,}"),
        ("MACs", lambda e: si(e.macs)),
        ("ONNX", lambda e: human_bytes(e.onnx_bytes) if e.onnx_bytes else "-"),
    ]
    columns += [(c.header, _metric(c.key)) for c in get_task(report.task).columns]
    # A causal LM's weights are int4 or int8 MatMulNBits: the share is of low-bit kernels.
    low_bit = "low-bit" if report.task == "causal-lm" else "int8"
    columns.append(
        (low_bit, lambda e: "-" if e.int8_coverage is None else f"{e.int8_coverage:.0%}")
    )
    return columns + generation_columns(report)


def generation_columns(report: Report) -> list[Column]:
    """Time to first token and decode tokens/s of causal LMs, where they were timed."""
    timed = [e.generation for e in report.entries() if e.generation is not None]
    if not timed:
        return []
    columns: list[Column] = []
    for length in sorted({n for g in timed for n in g.ttft_ms}):

        def ttft(entry: Entry, length: int = length) -> str:
            value = entry.generation.ttft_ms.get(length) if entry.generation else None
            return "-" if value is None else f"{value:.1f}"

        columns.append((f"TTFT p{length} ms", ttft))
    for batch in sorted({b for g in timed for b in g.decode_tok_s}):

        def decode(entry: Entry, batch: int = batch) -> str:
            value = entry.generation.decode_tok_s.get(batch) if entry.generation else None
            return "-" if value is None else f"{value:.1f}"

        columns.append((f"tok/s b{batch}", decode))
    return columns


def latency_pairs(report: Report) -> list[tuple[str, int]]:
    """(target, batch) measured for any model, in order."""
    return sorted(
        {(x.target, x.batch) for e in report.entries() for x in e.latency if x.workload is None}
    )


def latency_columns(report: Report, target: str | None = None) -> list[Column]:
    """p50 and speedup per (target, batch); the target's name leads the header when the
    table shows several targets (``target`` given: that target's columns only)."""
    pairs = [p for p in latency_pairs(report) if target is None or p[0] == target]
    several = target is None and len({t for t, _ in pairs}) > 1
    columns: list[Column] = []
    for name, batch in pairs:

        def p50(entry: Entry, name: str = name, batch: int = batch) -> str:
            x = entry.latency_at(name, batch)
            return "-" if x is None else f"{x.p50_ms:.3f}{'*' if x.noisy else ''}"

        def speedup(entry: Entry, name: str = name, batch: int = batch) -> str:
            x = entry.latency_at(name, batch)
            return "-" if x is None or x.speedup is None else f"{x.speedup:.2f}x"

        prefix = f"{name} " if several else ""
        columns += [(f"{prefix}b{batch} ms", p50), ("speedup", speedup)]
    return columns


def rows(report: Report, columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per model (``model`` first) of ``columns``."""
    header = ["model", *(h for h, _ in columns)]
    return header, [[e.name, *(cell(e) for _, cell in columns)] for e in report.entries()]


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The whole summary table: size, metrics, int8 and latency per model."""
    return rows(report, model_columns(report) + latency_columns(report))


def notes(report: Report) -> list[str]:
    """The notes under the table: noisy marks, and how the numbers were measured."""
    measured = f"{get_task(report.task).measured_note} {LATENCY_NOTE}"
    return [NOISY_NOTE, measured] if report.noisy() else [measured]


def meta_line(report: Report) -> str:
    return (
        f"Checkpoint `{report.checkpoint}`, data `{report.data}` ({report.task}), seed "
        f"{report.seed}, {report.seconds:.1f} s, compresskit {report.compresskit_version}, "
        f"{report.created}, report schema {report.schema_version}."
    )


def budget_line(report: Report) -> str | None:
    if report.budget is None:
        return None
    limits = report.budget.model_dump(exclude_none=True)
    shown = ", ".join(f"{k} {v:g}" for k, v in limits.items()) or "none set"
    return f"Budget: {shown}."


def entry_lines(report: Report, entry: Entry) -> list[str]:
    """The facts about one model: verdict lines, churn, ONNX parity, sessions."""
    lines = list(entry.verdict.lines) if entry.verdict else []
    if "churn" in entry.metrics and entry is not report.baseline:
        lines.append(
            f"churn vs baseline {entry.metrics['churn']:.4f} (good "
            f"{entry.metrics.get('churn_good', 0.0):.4f}, bad "
            f"{entry.metrics.get('churn_bad', 0.0):.4f})"
        )
    if entry.parity is None:
        lines.append(
            f"not exported to ONNX; {primary(report).key} and latency measured in torch "
            f"only: {entry.export_skipped}"
        )
    else:
        parity = entry.parity
        fallback = (
            f" (fallback: {entry.exporter_fallback_reason})"
            if entry.exporter_fallback_reason
            else ""
        )
        noise = ""
        if parity.quantization_error is not None:
            within = parity.max_abs_error > parity.tolerance and parity.ok
            noise = (
                f", mean {parity.mean_abs_error:.2e} against {parity.quantization_error:.2e} "
                "for int8 in torch vs the float baseline"
                + (" (within the quantization noise)" if within else "")
            )
        lines.append(
            f"ORT vs torch ({parity.precision}): max abs error {parity.max_abs_error:.2e} "
            f"(allowed {parity.tolerance:.2e}){noise}, agreement {parity.agreement:.4f} "
            f"({'ok' if parity.ok else 'FAILED'}); exported with the {entry.exporter} "
            f"exporter{fallback}."
        )
    lines += [f"{s.target}: {session_text(s)}" for s in entry.sessions]
    return lines


def session_text(session: Session) -> str:
    if session.error:
        return f"not measured: {session.error}"
    parts = []
    if session.load_ms is not None:
        parts.append(f"session load {session.load_ms:.1f} ms")
    if session.peak_rss_delta_mb is not None:
        parts.append(f"peak memory +{session.peak_rss_delta_mb:.1f} MB")
    elif session.rss_delta_mb is not None:
        parts.append(f"memory +{session.rss_delta_mb:.1f} MB")
    return ", ".join(parts) or "-"


def target_lines(report: Report) -> list[str]:
    """One line per target (threads, noise verdict), per skipped target, and the machine."""
    lines = []
    for target in report.targets:
        spinning = (
            ""
            if target.allow_spinning is None
            else f", spinning {'on' if target.allow_spinning else 'off'}"
        )
        inter_op = (
            "" if target.inter_op_threads is None else f", {target.inter_op_threads} inter-op"
        )
        denormals = f", {target.denormals}" if target.denormals else ""
        noise = (
            f" **noisy**: {'; '.join(target.noise_reasons)}" if target.noisy else " quiet machine."
        )
        lines.append(
            f"`{target.target}` ({target.runtime}, {target.provider}, {target.precision}): "
            f"{target.threads} intra-op thread(s){inter_op}{spinning}{denormals};"
            f"{noise}"
        )
    lines += [f"`{name}` skipped: {why}" for name, why in report.skipped_targets.items()]
    machine = report.machine
    if machine:
        lines.append(
            "machine: "
            + ", ".join(
                f"{key} {machine[key]}"
                for key in (
                    "cores",
                    "processor",
                    "cpu",
                    "platform",
                    "python",
                    "torch",
                    "onnxruntime",
                )
                if key in machine
            )
        )
    return lines


def step_heading(step_id: str, pass_name: str, seconds: float) -> str:
    return f"`{step_id}` ({pass_name}, {seconds:.1f} s)"
