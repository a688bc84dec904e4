"""The run report: a versioned JSON schema, and a markdown rendering for people."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


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


class ParityEntry(_Model):
    """ONNX Runtime vs torch on the evaluation split."""

    max_abs_error: float
    mean_abs_error: float
    agreement: float
    samples: int
    tolerance: float
    min_agreement: float
    ok: bool


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
    metrics: dict[str, float] = Field(description="accuracy, agreement with the baseline, kl")
    int8_coverage: float | None = None
    latency: list[LatencyEntry] = Field(default_factory=list)
    parity: ParityEntry | None = Field(default=None, description="None when not exported")
    export_skipped: str | None = Field(
        default=None, description="why this candidate has no ONNX file (e.g. bitsandbytes)"
    )
    steps: list[StepEntry] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    verdict: list[str] = Field(default_factory=list)


class Report(_Model):
    """What ``compresskit compress`` measured; ``report.json`` in the run directory."""

    schema_version: int = SCHEMA_VERSION
    compresskit_version: str
    created: str
    policy: str
    checkpoint: str
    data: str
    seed: int
    seconds: float
    skipped_targets: dict[str, str] = Field(default_factory=dict)
    baseline: Entry
    candidates: list[Entry]

    def entries(self) -> list[Entry]:
        return [self.baseline, *self.candidates]


def _latency(entry: Entry, target: str, batch: int) -> LatencyEntry | None:
    return next((x for x in entry.latency if x.target == target and x.batch == batch), None)


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per model)."""
    columns = sorted({(x.target, x.batch) for e in report.entries() for x in e.latency})
    several = len({target for target, _ in columns}) > 1
    header = ["model", "params", "MACs", "ONNX", "acc", "agree", "int8"]
    for target, batch in columns:
        prefix = f"{target} " if several else ""
        header += [f"{prefix}b{batch} ms", "speedup"]
    rows = []
    for entry in report.entries():
        row = [
            entry.name,
            f"{entry.params:,}",
            _si(entry.macs),
            _bytes(entry.onnx_bytes),
            f"{entry.metrics.get('accuracy', float('nan')):.4f}",
            f"{entry.metrics.get('agreement', float('nan')):.4f}",
            "-" if entry.int8_coverage is None else f"{entry.int8_coverage:.0%}",
        ]
        for target, batch in columns:
            latency = _latency(entry, target, batch)
            row += (
                [f"{latency.p50_ms:.3f}", f"{latency.speedup:.2f}x" if latency.speedup else "-"]
                if latency
                else ["-", "-"]
            )
        rows.append(row)
    return header, rows


def render_markdown(report: Report) -> str:
    header, rows = table_rows(report)
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
        "Accuracy is measured with ONNX Runtime on the held-out evaluation split; agreement is "
        "top-1 agreement with the baseline. Speedup is baseline p50 / candidate p50 on the same "
        "target and batch, measured in this run.",
        "",
    ]
    if report.skipped_targets:
        lines += ["## Skipped targets", ""]
        lines += [f"- `{name}`: {why}" for name, why in report.skipped_targets.items()]
        lines.append("")
    for entry in report.candidates:
        lines += [f"## {entry.name}", "", f"Passes: {' -> '.join(entry.nodes)}.", ""]
        lines += [f"- {line}" for line in entry.verdict]
        if entry.parity is None:
            lines.append(
                f"- not exported to ONNX; accuracy and latency measured in torch only: "
                f"{entry.export_skipped}"
            )
        else:
            lines += [
                f"- ORT vs torch: max abs error {entry.parity.max_abs_error:.2e}, agreement "
                f"{entry.parity.agreement:.4f} ({'ok' if entry.parity.ok else 'FAILED'}); "
                f"exported with the {entry.exporter} exporter.",
            ]
        for step in entry.steps:
            widths = step.records.get("widths")
            if widths:
                changed = {k: v for k, v in widths.items() if v[0] != v[1]}
                lines.append(
                    f"- `{step.id}` pruned {len(changed)} of {len(widths)} layers: "
                    + ", ".join(f"{k} {a}->{b}" for k, (a, b) in list(changed.items())[:8])
                    + (" ..." if len(changed) > 8 else "")
                )
            floats = step.records.get("float_layers")
            if floats:
                lines.append(f"- `{step.id}` kept in float: {', '.join(floats)}")
        lines.append("")
    return "\n".join(lines)


def _si(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
