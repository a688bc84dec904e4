"""Charts of a report, drawn with matplotlib's Agg backend (no display needed).

``pareto_png``: the report's primary metric (accuracy; for embedding models the cosine to
the baseline) against p50 latency, one panel per target and batch, one point per model,
the Pareto front (no other model is both faster and better) joined.
``size_png``: ONNX size per model, with parameters and MACs.
"""

from __future__ import annotations

import io
import math
from typing import Any

from compresskit.bench.report import Entry, Report, human_bytes, primary_metric, si

MAX_PANELS = 6


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (latency, accuracy) that no other point beats on both (lower
    latency and higher accuracy, one of them strictly), ordered by latency."""
    front = []
    for i, (latency, accuracy) in enumerate(points):
        dominated = any(
            other_latency <= latency
            and other_accuracy >= accuracy
            and (other_latency, other_accuracy) != (latency, accuracy)
            for other_latency, other_accuracy in points
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def panels(report: Report) -> list[tuple[str, int]]:
    """(target, batch) pairs measured for the baseline, at most ``MAX_PANELS``."""
    pairs = sorted({(x.target, x.batch) for x in report.baseline.latency})
    return pairs[:MAX_PANELS]


def pareto_png(report: Report) -> bytes | None:
    """The primary metric (accuracy, or cosine) vs latency, or None when nothing was
    measured."""
    pairs = panels(report)
    if not pairs:
        return None
    key, label = primary_metric(report)
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure = _figure(4.2 * columns, 3.4 * rows)
    entries = report.entries()
    for index, (target, batch) in enumerate(pairs):
        axes = figure.add_subplot(rows, columns, index + 1)
        measured: list[tuple[Entry, float, float, bool]] = []
        for entry in entries:
            latency = next(
                (x for x in entry.latency if x.target == target and x.batch == batch), None
            )
            accuracy = entry.metrics.get(key)
            if latency is not None and accuracy is not None:
                measured.append((entry, latency.p50_ms, accuracy, latency.noisy))
        points = [(ms, accuracy) for _, ms, accuracy, _ in measured]
        front = pareto_front(points)
        if len(front) > 1:
            axes.plot(
                [points[i][0] for i in front],
                [points[i][1] for i in front],
                color="0.6",
                linestyle="--",
                linewidth=1,
                zorder=1,
                label="Pareto front",
            )
        for entry, ms, accuracy, noisy in measured:
            baseline = entry is report.baseline
            axes.scatter(
                [ms],
                [accuracy],
                s=60,
                marker="s" if baseline else "o",
                facecolors="none" if noisy else ("black" if baseline else "tab:blue"),
                edgecolors="black" if baseline else "tab:blue",
                zorder=2,
            )
            axes.annotate(
                entry.name,
                (ms, accuracy),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
        latencies = [ms for ms, _ in points]
        if latencies and max(latencies) > 10 * min(latencies) > 0:
            axes.set_xscale("log")
        axes.margins(x=0.3, y=0.2)
        axes.set_title(f"{target}, batch {batch}", fontsize=10)
        axes.set_xlabel("p50 latency (ms)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    noisy = any(x.noisy for e in entries for x in e.latency)
    figure.suptitle(
        f"{label} vs p50 latency, policy {report.policy}"
        + (" (hollow: noisy measurement)" if noisy else "")
        + "; square: baseline",
        fontsize=10,
    )
    return _png(figure)


def size_png(report: Report) -> bytes:
    """ONNX file size per model (bars), labelled with parameters and MACs."""
    entries = report.entries()
    figure = _figure(7, 0.5 * len(entries) + 1.2)
    axes = figure.add_subplot(1, 1, 1)
    names = [e.name for e in entries][::-1]
    sizes = [e.onnx_bytes / 1024 for e in entries][::-1]
    colors = ["0.3" if e is report.baseline else "tab:blue" for e in entries][::-1]
    bars = axes.barh(names, sizes, color=colors)
    for bar, entry in zip(bars, entries[::-1], strict=True):
        axes.annotate(
            f" {human_bytes(entry.onnx_bytes)}, {entry.params:,} params, {si(entry.macs)} MACs",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=8,
        )
    axes.set_xlabel("ONNX size (kB)")
    axes.set_xlim(0, max(sizes) * 1.8 if sizes and max(sizes) > 0 else 1)
    axes.set_title("model size", fontsize=10)
    return _png(figure)
