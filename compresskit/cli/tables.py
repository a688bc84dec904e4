"""Rich tables for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from compresskit.bench.report import Report, table_rows


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
    for entry in report.candidates:
        console.print(f"[bold]{entry.name}[/bold]: " + "; ".join(entry.verdict))
