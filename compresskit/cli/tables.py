"""Rich tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from compresskit.bench.report import NOISY_NOTE, Report, table_rows

if TYPE_CHECKING:
    from compresskit.bench.harness import TargetRun


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 110))
    header, rows = table_rows(report)
    targets = sorted({latency.target for latency in report.baseline.latency})
    table = Table(
        title=f"policy {report.policy} on {report.checkpoint} / {report.data}"
        + (f": p50 latency on {targets[0]}" if len(targets) == 1 else ""),
    )
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if any(x.noisy for e in report.entries() for x in e.latency):
        console.print(f"[yellow]{NOISY_NOTE}[/yellow]")
    for name, why in report.skipped_targets.items():
        console.print(f"[dim]target {name} skipped: {why}[/dim]")
    for entry in report.candidates:
        console.print(f"[bold]{entry.name}[/bold]: " + (entry.summary or "; ".join(entry.verdict)))


def print_runs(runs: Sequence[TargetRun], console: Console | None = None) -> None:
    """One table per measured target; skipped targets and models with their reasons."""
    console = console or Console(width=max(Console().width, 110))
    for run in runs:
        if run.skipped:
            console.print(f"target {run.target} skipped: {run.skipped}")
            continue
        spinning = "" if run.allow_spinning is None else f", spinning {run.allow_spinning}"
        table = Table(
            title=f"{run.target} ({run.runtime}, {run.provider}, {run.precision}; "
            f"{run.threads} threads{spinning})"
        )
        for index, column in enumerate(
            [
                "model",
                "batch",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "samples/s",
                "speedup",
                "load ms",
                "peak MB",
                "noisy",
            ]
        ):
            table.add_column(column, justify="left" if index in (0, 9) else "right")
        for model in run.models:
            if model.error:
                table.add_row(model.name, *["-"] * 8, f"not measured: {model.error}")
            for latency in model.latency:
                speedup = model.speedup.get(latency.batch)
                table.add_row(
                    model.name,
                    str(latency.batch),
                    f"{latency.p50_ms:.3f}",
                    f"{latency.p90_ms:.3f}",
                    f"{latency.p99_ms:.3f}",
                    f"{latency.throughput:,.0f}",
                    "-" if speedup is None else f"{speedup:.2f}x",
                    "-" if model.load_ms is None else f"{model.load_ms:.1f}",
                    "-" if model.peak_rss_delta_mb is None else f"{model.peak_rss_delta_mb:.1f}",
                    "yes" if latency.noisy else "no",
                )
        console.print(table)
        if run.noisy:
            console.print(f"[yellow]noisy machine: {'; '.join(run.noise_reasons)}[/yellow]")
