"""The record of a search: every trial's proxy score and latency, the Pareto front, the
finally trained candidates measured against the baseline; as JSON, a markdown table and a
chart of predicted (proxy) against measured (final) points.

Example::

    write_outputs(record, run_dir)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compresskit.bench.plots import pareto_front
from compresskit.paths import write_text_atomic

DPI = 150


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Final(_Model):
    """A front member trained for longer, then measured by the run's harness (ONNX
    Runtime on the evaluation split, latency timed interleaved with the baseline)."""

    quality: float | None
    latency_ms: float | None
    speedup: float | None
    meets_budget: bool


class Trial(_Model):
    """One sampled configuration after the short (proxy) distillation."""

    number: int
    params: dict[str, Any]
    description: str
    state: Literal["complete", "failed"]
    error: str | None = None
    quality: float | None = Field(default=None, description="proxy: on the val split, torch")
    latency_ms: float | None = Field(default=None, description="p50 on the target at the batch")
    baseline_ms: float | None = Field(
        default=None, description="the baseline's p50, timed interleaved with this trial's model"
    )
    speedup: float | None = Field(default=None, description="baseline_ms / latency_ms")
    feasible: bool = False
    violations: list[float] = Field(
        default_factory=list, description="how far each budget limit is missed (<= 0: met)"
    )
    seconds: float = 0.0
    train_seconds: float = 0.0
    on_front: bool = False
    policy: str | None = Field(default=None, description="front/<trial>.yaml, for front members")
    final: Final | None = None

    @property
    def name(self) -> str:
        return f"t{self.number}"

    def promising(self, slack: float) -> bool:
        """Out of budget after the proxy only by a quality short of ``slack``, with every
        speed limit met: the longer final distillation may well recover that much."""
        if self.feasible or not self.violations:
            return False
        quality, *speed = self.violations
        return quality <= slack and all(v <= 0 for v in speed)


class SearchRecord(_Model):
    """Everything a search did, in the order it did it (``search.json``)."""

    checkpoint: str
    data: str
    task: str
    metric: str
    target: str
    batch: int
    budget: dict[str, float]
    seed: int
    time_limit: float
    seconds: float = 0.0
    stopped: str = ""
    baseline_quality: float
    baseline_latency_ms: float
    trials: list[Trial] = Field(default_factory=list)
    chosen: list[int] = Field(default_factory=list)
    final_epochs: int | None = None
    final_baseline: Final | None = Field(
        default=None, description="the baseline as the final run measured it"
    )
    final_report: str | None = None
    proxy_slack: float = Field(
        default=0.0,
        description="a trial whose proxy quality misses the budget by at most this (speed "
        "limits met) is still trained in full",
    )

    def front(self) -> list[Trial]:
        """Completed trials no other completed trial beats on both proxy quality and
        latency, fastest first."""
        done = [t for t in self.trials if t.state == "complete"]
        points = [(t.latency_ms or 0.0, t.quality or 0.0) for t in done]
        return [done[i] for i in pareto_front(points)]


def _budget_cell(trial: Trial, slack: float) -> str:
    if trial.feasible:
        return "met"
    return "near" if trial.promising(slack) else "missed"


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(record: SearchRecord) -> str:
    """The trials as a table, front members marked, with the final measurement beside."""
    lines = [
        f"# Search: {record.checkpoint} on {record.data}",
        "",
        f"Target {record.target} at batch {record.batch}; budget "
        + ", ".join(f"{k} {v:g}" for k, v in record.budget.items())
        + f"; seed {record.seed}; {len(record.trials)} trials in {record.seconds:.0f} s of "
        f"{record.time_limit:.0f} s ({record.stopped}).",
        "",
        f"Baseline: {record.metric} {record.baseline_quality:.4f} (val, torch), "
        f"p50 {record.baseline_latency_ms:.3f} ms"
        + (
            f"; in the final run {record.metric} {record.final_baseline.quality:.4f} (eval, "
            f"ONNX Runtime), p50 {record.final_baseline.latency_ms:.3f} ms."
            if record.final_baseline
            and record.final_baseline.quality is not None
            and record.final_baseline.latency_ms is not None
            else "."
        ),
        "",
        f"Proxy: short distillation, {record.metric} on the val split in torch. Final: "
        f"longer distillation, {record.metric} with ONNX Runtime on the evaluation split, "
        "latency timed interleaved with the baseline (see final/report.md). Budget "
        f'"near": the proxy misses the quality limit by at most {record.proxy_slack:g} '
        "with the speed limits met; the final training takes the fastest trial within "
        "budget first, then the near ones, fastest first.",
        "",
        f"| trial | configuration | front | proxy {record.metric} | proxy ms | proxy speedup "
        f"| budget | final {record.metric} | final ms | final speedup | final budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in record.trials:
        if t.state == "failed":
            error = (t.error or "").replace("|", "/")
            lines.append(f"| {t.name} | {t.description} | failed: {error} ||||||||")
            continue
        final = t.final
        lines.append(
            f"| {t.name} | {t.description} | {'yes' if t.on_front else ''} "
            f"| {_cell(t.quality, '.4f')} | {_cell(t.latency_ms, '.3f')} "
            f"| {_cell(t.speedup, '.2f')} | {_budget_cell(t, record.proxy_slack)} "
            f"| {_cell(final.quality if final else None, '.4f')} "
            f"| {_cell(final.latency_ms if final else None, '.3f')} "
            f"| {_cell(final.speedup if final else None, '.2f')} "
            f"| {('met' if final.meets_budget else 'missed') if final else ''} |"
        )
    return "\n".join(lines) + "\n"


def front_png(record: SearchRecord) -> bytes:
    """Proxy points of every trial, the proxy front joined, and each finally trained
    candidate's measured point linked to its proxy point."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=DPI, layout="constrained")
    axes: Any = figure.add_subplot()
    done = [t for t in record.trials if t.state == "complete"]
    axes.scatter(
        [t.latency_ms for t in done],
        [t.quality for t in done],
        color="0.6",
        s=18,
        label="trial (proxy)",
    )
    front = record.front()
    axes.plot(
        [t.latency_ms for t in front],
        [t.quality for t in front],
        "o-",
        color="tab:blue",
        label="front (proxy)",
    )
    for t in front:
        axes.annotate(
            t.name,
            (t.latency_ms, t.quality),
            xytext=(-4, 5),
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color="tab:blue",
        )
    finals = [t for t in done if t.final and t.final.latency_ms and t.final.quality is not None]
    for t in finals:
        assert t.final is not None
        axes.annotate(
            "",
            xy=(t.final.latency_ms, t.final.quality),
            xytext=(t.latency_ms, t.quality),
            arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.6},
        )
        axes.annotate(
            t.name,
            (t.final.latency_ms, t.final.quality),
            xytext=(4, -8),
            textcoords="offset points",
            fontsize=7,
            color="tab:red",
        )
    if finals:
        axes.scatter(
            [t.final.latency_ms for t in finals if t.final],
            [t.final.quality for t in finals if t.final],
            color="tab:red",
            marker="s",
            s=24,
            label="final (measured)",
        )
    axes.scatter(
        [record.baseline_latency_ms],
        [record.baseline_quality],
        color="black",
        marker="*",
        s=60,
        label="baseline (proxy)",
    )
    base = record.final_baseline
    if base and base.latency_ms is not None and base.quality is not None:
        axes.scatter(
            [base.latency_ms],
            [base.quality],
            facecolors="none",
            edgecolors="black",
            marker="*",
            s=80,
            label="baseline (final)",
        )
    axes.set_xlabel(f"p50 latency, ms ({record.target}, batch {record.batch})")
    axes.set_ylabel(record.metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_outputs(record: SearchRecord, directory: Path) -> None:
    """search.json, search.md and front.png into ``directory``."""
    write_text_atomic(directory / "search.json", record.model_dump_json(indent=2))
    write_text_atomic(directory / "search.md", markdown(record))
    png = front_png(record)
    tmp = directory / ".front.png.tmp"
    tmp.write_bytes(png)
    tmp.replace(directory / "front.png")
