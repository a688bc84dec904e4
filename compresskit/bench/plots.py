"""Charts of a report, drawn with matplotlib's Agg backend (no display needed).

``pareto_png``: the report's primary metric (accuracy; for embedding models the cosine to
the baseline) against p50 latency, one panel per target and batch, one point per model,
the Pareto front (no other model is both faster and better) joined and named in the
legend; labels are placed where they overlap neither points nor each other.
``size_png``: ONNX size per model, with parameters and MACs.
"""

from __future__ import annotations

import io
import math
from typing import Any

from compresskit.bench.report import Entry, Report
from compresskit.bench.text import primary
from compresskit.units import human_bytes, si

MAX_PANELS = 6
DPI = 150
# Where a label may go, in points from its marker: right, left, above, below, further out.
_OFFSETS = [(7, 4), (7, -4), (-7, 4), (-7, -4), (0, 9), (0, -9), (14, 12), (-14, 12)]
_OFFSETS += [(14, -12), (-14, -12), (0, 18), (0, -18)]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # a renderer to measure labels with
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
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
    pairs = sorted({(x.target, x.batch) for x in report.baseline.latency if x.workload is None})
    return pairs[:MAX_PANELS]


def _overlaps(box: Any, taken: list[Any]) -> bool:
    return any(box.overlaps(other) for other in taken)


def place_labels(axes: Any, points: list[tuple[float, float, str]]) -> list[Any]:
    """Annotate each (x, y, text) at the first offset whose text overlaps no marker and no
    label placed before, inside the axes if possible; returns the annotations."""
    figure = axes.figure
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()  # final limits and layout before measuring
    pad = 8  # pixels: the markers are 7 points wide
    taken = []
    for x, y, _ in points:
        px, py = axes.transData.transform((x, y))
        taken.append(_box(px - pad, py - pad, px + pad, py + pad))
    inside = axes.get_window_extent(renderer)
    placed = []
    for x, y, text in points:
        chosen, free_outside = None, None
        for dx, dy in _OFFSETS:
            label = _annotate(axes, text, x, y, dx, dy)
            box = label.get_window_extent(renderer)
            if not _overlaps(box, taken):
                if _within(box, inside):
                    chosen = label
                    break
                if free_outside is None:
                    free_outside = label
                    continue
            label.remove()
        if chosen is None:
            # Free but outside the axes, else (crowded) the first place.
            chosen = free_outside or _annotate(axes, text, x, y, *_OFFSETS[0])
        elif free_outside is not None:
            free_outside.remove()
        taken.append(chosen.get_window_extent(renderer))
        placed.append(chosen)
    return placed


def _annotate(axes: Any, text: str, x: float, y: float, dx: float, dy: float) -> Any:
    return axes.annotate(
        text,
        (x, y),
        xytext=(dx, dy),
        textcoords="offset points",
        ha="left" if dx > 0 else ("right" if dx < 0 else "center"),
        va="bottom" if dy > 0 else "top",
        fontsize=8,
        annotation_clip=False,
    )


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _within(box: Any, outer: Any) -> bool:
    return bool(
        box.x0 >= outer.x0 and box.x1 <= outer.x1 and box.y0 >= outer.y0 and box.y1 <= outer.y1
    )


def pareto_png(report: Report) -> bytes | None:
    """The primary metric (accuracy, or cosine) vs latency, or None when nothing was
    measured."""
    pairs = panels(report)
    if not pairs:
        return None
    metric = primary(report)
    columns = min(2, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure = _figure(5.2 * columns, 3.9 * rows + 0.5)
    entries = report.entries()
    noisy = report.noisy()
    to_label: list[tuple[Any, list[tuple[float, float, str]]]] = []
    for index, (target, batch) in enumerate(pairs):
        axes = figure.add_subplot(rows, columns, index + 1)
        measured: list[tuple[Entry, float, float, bool]] = []
        for entry in entries:
            latency = entry.latency_at(target, batch)
            value = entry.metrics.get(metric.key)
            if latency is not None and value is not None:
                measured.append((entry, latency.p50_ms, value, latency.noisy))
        points = [(ms, value) for _, ms, value, _ in measured]
        front = pareto_front(points)
        if len(front) > 1:
            axes.plot(
                [points[i][0] for i in front],
                [points[i][1] for i in front],
                color="0.55",
                linestyle="--",
                linewidth=1,
                zorder=1,
            )
        for entry, ms, value, is_noisy in measured:
            baseline = entry is report.baseline
            color = "black" if baseline else "tab:blue"
            axes.scatter(
                [ms],
                [value],
                s=50,
                marker="s" if baseline else "o",
                facecolors="none" if is_noisy else color,
                edgecolors=color,
                linewidths=1.5,
                zorder=3,
                clip_on=False,
            )
        latencies = [ms for ms, _ in points]
        if latencies and max(latencies) > 10 * min(latencies) > 0:
            axes.set_xscale("log")
        axes.margins(x=0.25, y=0.25)
        low, high = axes.get_ylim()
        if metric.key in ("accuracy", "cosine", "agreement") and high > 1.0:
            axes.set_ylim(low, 1.0)  # a share: nothing lies above 1
        axes.set_title(f"{target}, batch {batch}", fontsize=10, pad=9)
        axes.set_xlabel("p50 latency (ms), lower is better")
        axes.set_ylabel(f"{metric.title}, higher is better")
        axes.grid(alpha=0.3)
        to_label.append((axes, [(ms, value, e.name) for e, ms, value, _ in measured]))
    figure.legend(handles=_legend(noisy), loc="outside lower center", ncols=4, fontsize=8)
    figure.suptitle(f"{metric.title} vs p50 latency, policy {report.policy}", fontsize=11)
    for axes, labels in to_label:
        place_labels(axes, labels)
    return _png(figure)


def _legend(noisy: bool) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="0.55", linestyle="--", label="Pareto front"),
        Line2D([], [], marker="s", color="black", linestyle="", label="baseline"),
        Line2D([], [], marker="o", color="tab:blue", linestyle="", label="candidate"),
    ]
    if noisy:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                markerfacecolor="none",
                color="tab:blue",
                linestyle="",
                label="noisy measurement",
            )
        )
    return handles


def size_png(report: Report) -> bytes:
    """ONNX file size per model (bars), labelled with parameters and MACs."""
    entries = report.entries()
    figure = _figure(7.5, 0.45 * len(entries) + 1.3)
    axes = figure.add_subplot(1, 1, 1)
    largest = max((e.onnx_bytes for e in entries), default=0)
    unit, scale = ("MB", 1e6) if largest >= 1e6 else ("kB", 1e3)
    names = [e.name for e in entries][::-1]
    sizes = [e.onnx_bytes / scale for e in entries][::-1]
    colors = ["0.3" if e is report.baseline else "tab:blue" for e in entries][::-1]
    bars = axes.barh(names, sizes, color=colors)
    for bar, entry in zip(bars, entries[::-1], strict=True):
        size = human_bytes(entry.onnx_bytes) if entry.onnx_bytes else "not exported"
        axes.annotate(
            f" {size}, {entry.params:,} params, {si(entry.macs)} MACs",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=8,
        )
    axes.set_xlabel(f"ONNX size ({unit}, 1 {unit} = {scale:,.0f} bytes)")
    axes.set_xlim(0, max(sizes) * 1.9 if sizes and max(sizes) > 0 else 1)
    axes.set_title("model size", fontsize=10)
    return _png(figure)
