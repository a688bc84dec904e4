"""The run report: a versioned JSON schema, and a markdown rendering for people.

Schema history: 1 -> 2 added latency percentiles, throughput and noise flags, per-target
thread settings, session load time and memory, exporter fallback reasons and a one-line
summary per candidate. Version 1 files still load (the new fields take defaults).
``Report.task`` (embedding reports score cosine to the baseline instead of accuracy) was
added within version 2 with a default, so older files still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compresskit.errors import CompressKitError

SCHEMA_VERSION = 2


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyEntry(_Model):
    target: str
    batch: int
    p50_ms: float
    p90_ms: float
    repeats: int
    speedup: float | None = Field(
        default=None, description="baseline p50 / this p50, same target and batch, same run"
    )
    p99_ms: float | None = None
    mean_ms: float | None = None
    cv: float | None = Field(default=None, description="robust CV: IQR / 1.349 / median")
    throughput: float | None = Field(default=None, description="samples per second at p50")
    stable: bool = Field(default=True, description="the median settled before the time cap")
    noisy: bool = False
    noise_reason: str | None = None


class SessionEntry(_Model):
    """Loading one model on one target: time to a ready session, and memory it took."""

    target: str
    load_ms: float | None = None
    rss_delta_mb: float | None = Field(default=None, description="RSS after load - before")
    peak_rss_delta_mb: float | None = Field(
        default=None, description="peak RSS during load and one run per batch size - before"
    )
    error: str | None = Field(default=None, description="why it could not be measured")


class TargetEntry(_Model):
    """How a target was measured: its process's thread settings, and whether it was noisy."""

    name: str
    runtime: str
    provider: str
    precision: str
    threads: int | None = None
    inter_op_threads: int | None = None
    allow_spinning: bool | None = None
    noisy: bool = False
    noise_reasons: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class ParityEntry(_Model):
    """ONNX Runtime vs torch on the evaluation split."""

    max_abs_error: float
    mean_abs_error: float
    agreement: float
    samples: int
    tolerance: float
    min_agreement: float
    ok: bool
    precision: str = "fp32"


class StepEntry(_Model):
    id: str
    name: str = Field(description="pass name")
    seconds: float
    records: dict[str, Any] = Field(default_factory=dict)


class Entry(_Model):
    """The baseline or one candidate."""

    name: str
    nodes: list[str] = Field(description="names of the passes applied, in order")
    params: int
    macs: int
    onnx_bytes: int
    exporter: str
    exporter_fallback_reason: str | None = Field(
        default=None, description="why the dynamo exporter was not used, when it failed"
    )
    precision: str = Field(default="fp32", description="fp32, fp16 or int8 (parity tolerance)")
    metrics: dict[str, float] = Field(
        description="classification: accuracy, agreement with the baseline, kl, churn "
        "(good/bad) vs the baseline; embedding: cosine to the baseline (mean, cosine_p5, "
        "cosine_min) and mse"
    )
    int8_coverage: float | None = None
    latency: list[LatencyEntry] = Field(default_factory=list)
    sessions: list[SessionEntry] = Field(default_factory=list)
    parity: ParityEntry | None = Field(default=None, description="None when not exported")
    export_skipped: str | None = Field(
        default=None, description="why this candidate has no ONNX file (e.g. bitsandbytes)"
    )
    steps: list[StepEntry] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    verdict: list[str] = Field(default_factory=list)
    summary: str = Field(default="", description="one-line verdict: speed, int8, accuracy")


class Report(_Model):
    """What ``compresskit compress`` measured; ``report.json`` in the run directory."""

    schema_version: int = SCHEMA_VERSION
    compresskit_version: str
    created: str
    policy: str
    checkpoint: str
    data: str
    task: Literal["classification", "embedding", "causal-lm"] = Field(
        default="classification",
        description="what the metrics score: accuracy (classification) or the cosine of "
        "each embedding to the baseline's (embedding)",
    )
    seed: int
    seconds: float
    world_size: int = Field(default=1, description="processes that ran the training passes")
    backend: str | None = Field(default=None, description="torch.distributed backend, if any")
    skipped_targets: dict[str, str] = Field(default_factory=dict)
    targets: list[TargetEntry] = Field(default_factory=list)
    machine: dict[str, Any] = Field(default_factory=dict)
    baseline: Entry
    candidates: list[Entry]

    def entries(self) -> list[Entry]:
        return [self.baseline, *self.candidates]

    @classmethod
    def load(cls, path: Path) -> Report:
        """Read a ``report.json`` of this or an older schema version."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CompressKitError(f"{path}: not a readable report.json ({error})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CompressKitError(
                f"{path}: report schema_version {version!r} is not one this compresskit reads "
                f"(1 to {SCHEMA_VERSION}); upgrade compresskit"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise CompressKitError(f"{path}: {field}: {first['msg']}") from None


def _latency(entry: Entry, target: str, batch: int) -> LatencyEntry | None:
    return next((x for x in entry.latency if x.target == target and x.batch == batch), None)


# Per task: the two metric columns of the table (key, header), the primary metric the
# Pareto chart plots (key, axis label), and what the note under the table says.
METRIC_COLUMNS = {
    "classification": [("accuracy", "acc"), ("agreement", "agree")],
    "embedding": [("cosine", "cos"), ("cosine_p5", "cos p5")],
}
PRIMARY_METRIC = {
    "classification": ("accuracy", "accuracy"),
    "embedding": ("cosine", "cosine to baseline"),
}
MEASURED_NOTE = {
    "classification": "Accuracy is measured with ONNX Runtime on the held-out evaluation "
    "split; agreement is top-1 agreement with the baseline.",
    "embedding": "Cosine is measured with ONNX Runtime on the held-out evaluation split: "
    "each sample's embedding against the baseline's, mean (cos) and 5th percentile (cos p5).",
}
LATENCY_NOTE = (
    "Latency is p50 per call; speedup is baseline p50 / candidate p50 on the same target "
    "and batch, measured interleaved in the same process."
)


def primary_metric(report: Report) -> tuple[str, str]:
    """(metrics key, label) of the metric charts plot: accuracy, or cosine for embeddings."""
    return PRIMARY_METRIC[report.task]


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per model)."""
    columns = sorted({(x.target, x.batch) for e in report.entries() for x in e.latency})
    several = len({target for target, _ in columns}) > 1
    metric_columns = METRIC_COLUMNS[report.task]
    header = ["model", "params", "MACs", "ONNX", *(label for _, label in metric_columns), "int8"]
    for target, batch in columns:
        prefix = f"{target} " if several else ""
        header += [f"{prefix}b{batch} ms", "speedup"]
    rows = []
    for entry in report.entries():
        row = [
            entry.name,
            f"{entry.params:,}",
            si(entry.macs),
            human_bytes(entry.onnx_bytes),
            *(f"{entry.metrics.get(key, float('nan')):.4f}" for key, _ in metric_columns),
            "-" if entry.int8_coverage is None else f"{entry.int8_coverage:.0%}",
        ]
        for target, batch in columns:
            latency = _latency(entry, target, batch)
            row += (
                [
                    f"{latency.p50_ms:.3f}{'*' if latency.noisy else ''}",
                    f"{latency.speedup:.2f}x" if latency.speedup else "-",
                ]
                if latency
                else ["-", "-"]
            )
        rows.append(row)
    return header, rows


def write_reports(report: Report, directory: Path, *, json_too: bool = True) -> list[Path]:
    """Write ``report.json`` (unless ``json_too`` is False), ``report.md`` and the
    self-contained ``report.html`` into ``directory``; returns the paths written."""
    from compresskit.bench.html import render_html

    directory = Path(directory)
    written = []
    if json_too:
        (directory / "report.json").write_text(report.model_dump_json(indent=2))
        written.append(directory / "report.json")
    (directory / "report.md").write_text(render_markdown(report))
    (directory / "report.html").write_text(render_html(report))
    return [*written, directory / "report.md", directory / "report.html"]


NOISY_NOTE = "* noisy: the machine was busy or the timings varied; see Targets."


def render_markdown(report: Report) -> str:
    header, rows = table_rows(report)
    noisy = any(x.noisy for e in report.entries() for x in e.latency)
    lines = [
        f"# compresskit run: policy `{report.policy}`",
        "",
        f"Checkpoint `{report.checkpoint}`, data `{report.data}`, seed {report.seed}, "
        f"{report.seconds:.1f} s, compresskit {report.compresskit_version}, {report.created}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *([NOISY_NOTE, ""] if noisy else []),
        f"{MEASURED_NOTE[report.task]} {LATENCY_NOTE}",
        "",
    ]
    if report.candidates:
        lines += ["## Verdict", ""]
        lines += [f"- **{e.name}**: {e.summary or '; '.join(e.verdict)}" for e in report.candidates]
        lines.append("")
    lines += target_lines(report)
    for entry in report.entries():
        lines += [f"## {entry.name}", ""]
        if entry.nodes:
            lines += [f"Passes: {' -> '.join(entry.nodes)}.", ""]
        lines += [f"- {line}" for line in entry.verdict]
        if "churn" in entry.metrics:
            lines.append(
                f"- churn vs baseline {entry.metrics['churn']:.4f} (good "
                f"{entry.metrics['churn_good']:.4f}, bad {entry.metrics['churn_bad']:.4f})"
            )
        if entry.parity is None:
            lines.append(
                f"- not exported to ONNX; {primary_metric(report)[0]} and latency measured in "
                f"torch only: "
                f"{entry.export_skipped}"
            )
        else:
            lines.append(
                f"- ORT vs torch ({entry.precision}): max abs error "
                f"{entry.parity.max_abs_error:.2e} (allowed {entry.parity.tolerance:.2e}), "
                f"agreement {entry.parity.agreement:.4f} "
                f"({'ok' if entry.parity.ok else 'FAILED'}); exported with the {entry.exporter} "
                "exporter"
                + (
                    f" (fallback: {entry.exporter_fallback_reason})."
                    if entry.exporter_fallback_reason
                    else "."
                )
            )
        for session in entry.sessions:
            lines.append(f"- {session.target}: " + _session_text(session))
        lines += _step_lines(entry)
        lines.append("")
    return "\n".join(lines)


def target_lines(report: Report) -> list[str]:
    """The Targets section: thread settings, noise verdicts, and skipped targets."""
    lines: list[str] = []
    if report.targets or report.skipped_targets:
        lines += ["## Targets", ""]
    for target in report.targets:
        spinning = (
            ""
            if target.allow_spinning is None
            else f", spinning {'on' if target.allow_spinning else 'off'}"
        )
        noise = (
            f" **noisy**: {'; '.join(target.noise_reasons)}" if target.noisy else " quiet machine."
        )
        lines.append(
            f"- `{target.name}` ({target.runtime}, {target.provider}, {target.precision}): "
            f"{target.threads} intra-op thread(s), {target.inter_op_threads} inter-op{spinning};"
            f"{noise}"
        )
    lines += [f"- `{name}` skipped: {why}" for name, why in report.skipped_targets.items()]
    if lines:
        lines.append("")
    return lines


def _session_text(session: SessionEntry) -> str:
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


def _step_lines(entry: Entry) -> list[str]:
    lines = []
    for step in entry.steps:
        widths = step.records.get("widths")
        if widths:
            changed = {k: v for k, v in widths.items() if v[0] != v[1]}
            lines.append(
                f"- `{step.id}` pruned {len(changed)} of {len(widths)} layers: "
                + ", ".join(f"{k} {a}->{b}" for k, (a, b) in list(changed.items())[:8])
                + (" ..." if len(changed) > 8 else "")
            )
        history = step.records.get("history")
        if history and history.get("epochs"):
            lines.append(f"- `{step.id}` {_curve(history)}")
        floats = step.records.get("float_layers")
        if floats:
            lines.append(f"- `{step.id}` kept in float: {', '.join(floats)}")
    return lines


def _curve(history: dict[str, Any]) -> str:
    """One line of a training curve: loss and val metrics per validation, the kept one."""
    epochs = history["epochs"]
    # Embedding tasks validate by cosine to the teacher; there is no accuracy.
    cosine = "cosine" in epochs[0].get("metrics", {})
    key, label = ("cosine", "val cos") if cosine else ("accuracy", "val acc")
    points = " ".join(
        f"{e['loss']:.3f}/{e.get('metrics', {}).get(key, e.get(key, 0.0)):.3f}" for e in epochs[:12]
    ) + (" ..." if len(epochs) > 12 else "")
    kept = history.get("best_epoch")
    return (
        f"training curve (loss/{label}): {points}"
        + (f"; kept {kept}" if kept is not None else "")
        + (f"; {history['stopped']}" if history.get("stopped", "completed") != "completed" else "")
    )


def si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
