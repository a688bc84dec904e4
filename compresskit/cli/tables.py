"""Rich tables for the terminal.

A table that does not fit the console (80 columns, or a log file's default) is split
into narrower ones stacked (size and quality, then latency per target) instead of
wrapped; sentences are whole lines in a log file and wrap at words on a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from compresskit.bench.measurement import Latency, Profile, TargetRun
from compresskit.bench.profile_view import profile_line, tables_of
from compresskit.bench.report import Report
from compresskit.bench.text import (
    NOISY_NOTE,
    latency_columns,
    model_columns,
    rows,
    step_heading,
    table_rows,
)
from compresskit.records import Line


def _table(header: list[str], body: list[list[str]], title: str | None = None) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
    )
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row in body:
        table.add_row(*row)
    return table


def _fits(console: Console, table: Table) -> bool:
    unbounded = console.options.update(max_width=100_000)  # its natural width
    return Measurement.get(console, unbounded, table).maximum <= console.width


def _say(console: Console, text: str | Text, style: str = "") -> None:
    """One sentence: whole in a log file, wrapped at words on a terminal."""
    line = text if isinstance(text, Text) else Text(text, style=style)
    console.print(line, soft_wrap=not console.is_terminal)


def report_tables(report: Report, console: Console) -> list[Table]:
    """The summary table, or (when it is wider than the console) size and quality, then
    latency per target."""
    targets = sorted({x.target for x in report.baseline.latency if x.workload is None})
    latency_title = f"p50 latency on {targets[0]}" if len(targets) == 1 else None
    whole = _table(*table_rows(report), title=latency_title)
    if _fits(console, whole):
        return [whole]
    tables = [_table(*rows(report, model_columns(report)), title="size and quality")]
    for target in targets:
        title = f"latency on {target} (p50 ms)"
        tables.append(_table(*rows(report, latency_columns(report, target)), title=title))
    return tables


def print_report(report: Report, console: Console | None = None) -> None:
    """The table(s), skipped targets, each candidate's verdict and what its passes did."""
    console = console or Console()
    _say(console, f"policy {report.policy} on {report.checkpoint} / {report.data}", "bold")
    for table in report_tables(report, console):
        console.print(table)
    if report.noisy():
        _say(console, NOISY_NOTE, "yellow")
    for name, why in report.skipped_targets.items():
        _say(console, f"target {name} skipped: {why}", "dim")
    baseline_profile = profile_line(report.baseline)
    if baseline_profile:
        _say(console, f"baseline: {baseline_profile}", "dim")
    for entry in report.candidates:
        _say(console, Text.assemble((entry.name, "bold"), ": ", entry.summary))
        where = profile_line(entry)
        if where:
            _say(console, f"  {where}", "dim")
        for step in entry.steps:
            lines = [b.text for b in step.summary() if isinstance(b, Line)]
            heading = step_heading(step.id, step.name, step.seconds).replace("`", "")
            for index, text in enumerate(lines[:3]):
                _say(console, f"  {heading}: {text}" if index == 0 else f"    {text}", "dim")
    for failure in report.failed:
        _say(console, Text.assemble((failure.name, "bold"), ": ", failure.line), "red")
    if report.verdict is not None:
        _say(console, f"verdict: {report.verdict.summary}")


def print_runs(runs: Sequence[TargetRun], console: Console | None = None) -> None:
    """Per measured target: latency per model and batch, then each model's session;
    skipped targets and models with their reasons."""
    console = console or Console()
    for run in runs:
        if run.skipped:
            _say(console, f"target {run.target} skipped: {run.skipped}")
            continue
        spinning = "" if run.allow_spinning is None else f", spinning {run.allow_spinning}"
        denormals = f", {run.denormals}" if run.denormals else ""
        _say(
            console,
            f"{run.target} ({run.runtime}, {run.provider}, {run.precision}; "
            f"{run.threads} threads{spinning}{denormals})",
            "bold",
        )
        header = ["model", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "speedup"]
        body = []
        for model in run.models:
            for x in model.latency:
                body.append(
                    [
                        model.name,
                        str(x.batch) + (f" {x.workload}" if x.workload else ""),
                        f"{x.p50_ms:.3f}{'*' if x.noisy else ''}",
                        f"{x.p90_ms:.3f}",
                        "-" if x.p99_ms is None else f"{x.p99_ms:.3f}",
                        "-" if x.throughput is None else f"{x.throughput:,.0f}",
                        "-" if x.speedup is None else f"{x.speedup:.2f}x",
                    ]
                )
        console.print(_table(header, body, title="latency"))
        sessions = [
            [
                m.name,
                "-" if m.session.load_ms is None else f"{m.session.load_ms:.1f}",
                "-"
                if m.session.peak_rss_delta_mb is None
                else f"{m.session.peak_rss_delta_mb:.1f}",
            ]
            for m in run.models
            if not m.error and m.session.load_ms is not None
        ]
        if sessions:
            console.print(_table(["model", "load ms", "peak MB"], sessions, title="sessions"))
        for model in run.models:
            if model.error:
                _say(console, f"{model.name}: not measured: {model.error}", "red")
            for reason in model.skipped:
                _say(console, f"{model.name}: not timed: {reason}", "yellow")
        for model in run.models:
            for profile in model.profiles:
                _print_profile(console, model.name, profile)
        noisy = [x for m in run.models for x in m.latency if x.noisy]
        if noisy:
            _say(console, "* noisy: " + _noise_summary(noisy))
        if run.noisy:
            _say(console, f"noisy machine: {'; '.join(run.noise_reasons)}", "yellow")


def _print_profile(console: Console, name: str, profile: Profile) -> None:
    """One model's profile at one batch: costliest modules, then kernel types."""
    for table in tables_of(profile):
        console.print(_table(table.header, table.rows, title=f"{name}: {table.title}"))


def _noise_summary(noisy: list[Latency]) -> str:
    """The distinct reasons of noisy timings, the spread of timings as its largest CV."""
    reasons: list[str] = []
    for x in noisy:
        for part in (x.noise_reason or "").split("; "):
            if part.startswith("median not stable"):
                part = "medians not stable within the time cap"
            if part and not part.startswith("timings vary") and part not in reasons:
                reasons.append(part)
    cvs = [x.cv for x in noisy if x.cv is not None and x.noise_reason and "vary" in x.noise_reason]
    if cvs:
        reasons.append(f"timings vary (robust CV up to {max(cvs):.0%})")
    return "; ".join(reasons) or "see the noisy flags"
