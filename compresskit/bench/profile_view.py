"""Where the time goes, as every rendering shows it: per model a table of its costliest
modules per target and batch (markdown, HTML), one line of its top three (terminal), and
a chart of the largest costs of every model side by side (HTML).

Example::

    profile_tables(report.candidates[0])[0].rows[0]
    # -> ['layer1.conv1', 'QLinearConv', '0.355', '17%']
"""

from __future__ import annotations

from compresskit.bench.measurement import LayerCost, Profile
from compresskit.bench.plots import _figure, _png
from compresskit.bench.report import Entry, Report
from compresskit.records import Table

TABLE_ROWS = 8
CHART_ROWS = 8
_INTEGER = ("QLinear", "QGemm", "QAttention", "MatMulInteger", "ConvInteger", "DynamicQuantize")
_CONVERSION = ("QuantizeLinear", "DequantizeLinear", "Transpose", "Reorder", "Cast")


def module_label(module: str) -> str:
    return module or "(top level)"


def kernel_kind(layer: LayerCost) -> str:
    """int8, float or conversion: what its costliest kernel is."""
    op = layer.ops[0] if layer.ops else ""
    if op.startswith(_CONVERSION) or op in ("QuantizeLinear", "DequantizeLinear"):
        return "conversion"
    return "int8" if op.startswith(_INTEGER) else "float"


def _at(profile: Profile) -> str:
    return f"workload {profile.workload}" if profile.workload else f"batch {profile.batch}"


def _title(profile: Profile) -> str:
    return (
        f"where the time goes on {profile.target}, {_at(profile)} "
        f"(kernels {profile.kernel_ms:.3f} ms per call, median of {profile.runs} runs)"
    )


def profile_table(profile: Profile, *, limit: int = TABLE_ROWS) -> Table:
    """The costliest ``limit`` modules, the rest summed in one row."""
    rows = [
        [module_label(x.module), ", ".join(x.ops[:3]), f"{x.ms:.3f}", f"{x.share:.0%}"]
        for x in profile.layers[:limit]
    ]
    rest = profile.layers[limit:]
    if rest:
        ms = sum(x.ms for x in rest)
        share = sum(x.share for x in rest)
        rows.append([f"{len(rest)} more modules", "", f"{ms:.3f}", f"{share:.0%}"])
    if profile.unmapped_ms:
        share = profile.unmapped_ms / profile.kernel_ms if profile.kernel_ms else 0.0
        rows.append(["(no module found)", "", f"{profile.unmapped_ms:.3f}", f"{share:.0%}"])
    return Table(title=_title(profile), header=["module", "kernels", "ms", "share"], rows=rows)


def kernel_table(profile: Profile, *, limit: int = TABLE_ROWS) -> Table | None:
    """Kernel time by ORT kernel type, costliest ``limit`` first, the rest summed: the
    float attention core of an int8 transformer, or the conversions, at a glance."""
    if not profile.by_op:
        return None
    total = profile.kernel_ms or sum(profile.by_op.values())
    items = list(profile.by_op.items())
    rows = [[op, f"{ms:.3f}", f"{ms / total:.0%}"] for op, ms in items[:limit]]
    rest = items[limit:]
    if rest:
        ms = sum(ms for _, ms in rest)
        rows.append([f"{len(rest)} more kernel types", f"{ms:.3f}", f"{ms / total:.0%}"])
    return Table(
        title=f"by kernel type on {profile.target}, {_at(profile)}",
        header=["kernel", "ms", "share"],
        rows=rows,
    )


def tables_of(profile: Profile) -> list[Table]:
    """One profile's costliest modules, then (where recorded) its kernel types."""
    kernels = kernel_table(profile)
    return [profile_table(profile), *([kernels] if kernels is not None else [])]


def profile_tables(entry: Entry) -> list[Table]:
    """:func:`tables_of` each of ``entry``'s profiles."""
    return [table for profile in entry.profiles for table in tables_of(profile)]


def profile_line(entry: Entry, *, top: int = 3) -> str | None:
    """Its top modules at the largest batch of its first profiled target, in one line."""
    profile = _largest(entry.profiles)
    if profile is None or not profile.layers:
        return None
    parts = [
        f"{module_label(x.module)} {x.share:.0%} ({x.ops[0] if x.ops else '?'})"
        for x in profile.layers[:top]
    ]
    return f"where the time goes ({profile.target} b{profile.batch}): " + ", ".join(parts)


def _largest(profiles: list[Profile]) -> Profile | None:
    plain = [p for p in profiles if p.workload is None]
    if not plain:
        return None
    target = plain[0].target
    return max((p for p in plain if p.target == target), key=lambda p: p.batch)


def charted(report: Report) -> tuple[str, int] | None:
    """The (target, batch) the chart shows: the baseline's largest profiled batch."""
    profile = _largest(report.baseline.profiles) or next(
        (p for e in report.candidates if (p := _largest(e.profiles))), None
    )
    return (profile.target, profile.batch) if profile else None


def profile_png(report: Report) -> bytes | None:
    """Each model's ``CHART_ROWS`` costliest modules (kernel ms per call, one shared
    scale), coloured by kernel kind; None when nothing was profiled."""
    pair = charted(report)
    if pair is None:
        return None
    shown = [(e.name, p) for e in report.entries() if (p := e.profile_at(*pair)) is not None]
    figure = _figure(7.5, sum(0.22 * min(CHART_ROWS, len(p.layers)) + 0.7 for _, p in shown))
    axes_list = figure.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    colors = {"int8": "tab:blue", "float": "tab:orange", "conversion": "0.6"}
    for axes, (name, profile) in zip(axes_list, shown, strict=True):
        layers = profile.layers[:CHART_ROWS][::-1]
        axes.barh(
            [module_label(x.module) for x in layers],
            [x.ms for x in layers],
            color=[colors[kernel_kind(x)] for x in layers],
        )
        axes.set_title(
            f"{name}: {profile.kernel_ms:.3f} ms of kernels per call", fontsize=9, loc="left"
        )
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(axis="x", alpha=0.3)
    axes_list[-1].set_xlabel("kernel time per call (ms), median of the profiled runs")
    from matplotlib.patches import Patch

    figure.legend(
        handles=[Patch(color=c, label=f"{k} kernels") for k, c in colors.items()],
        loc="outside lower center",
        ncols=3,
        fontsize=8,
    )
    figure.suptitle(f"where the time goes: {pair[0]}, batch {pair[1]}", fontsize=11)
    return _png(figure)
