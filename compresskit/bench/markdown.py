"""``report.md``: the report as markdown, for people and for diffs."""

from __future__ import annotations

from compresskit.bench.profile_view import profile_tables
from compresskit.bench.report import Report
from compresskit.bench.text import (
    budget_line,
    entry_lines,
    meta_line,
    notes,
    step_heading,
    table_rows,
    target_lines,
)
from compresskit.records import Line, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def blocks_markdown(blocks: list[Line | Table]) -> list[str]:
    """A record's summary: lines as bullets, tables under a bold title."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Line):
            out.append(f"- {block.text}")
        else:
            out += ["", f"**{block.title}**", "", *markdown_table(block.header, block.rows), ""]
    return out


def render_markdown(report: Report) -> str:
    header, rows = table_rows(report)
    lines = [
        f"# compresskit run: policy `{report.policy}`",
        "",
        meta_line(report),
        "",
        *markdown_table(header, rows),
        "",
    ]
    for note in notes(report):
        lines += [note, ""]
    if report.candidates or report.failed:
        lines += ["## Verdict", ""]
        if report.verdict is not None:
            lines += [f"{report.verdict.summary}.", ""]
        budget = budget_line(report)
        if budget:
            lines += [budget, ""]
        lines += [f"- **{e.name}**: {e.summary}" for e in report.candidates]
        lines += [f"- **{f.name}**: {f.line}" for f in report.failed]
        lines.append("")
    targets = target_lines(report)
    if targets:
        lines += ["## Targets", "", *(f"- {line}" for line in targets), ""]
    for entry in report.entries():
        lines += [f"## {entry.name}", ""]
        if entry.nodes:
            lines += [f"Passes: {' -> '.join(entry.nodes)}.", ""]
        lines += [f"- {line}" for line in entry_lines(report, entry)]
        lines.append("")
        if entry.continuations:
            runtime = entry.continuations[0].runtime
            rows = [[c.prompt, c.continuation] for c in entry.continuations]
            lines += [f"**Greedy continuations** ({runtime})", ""]
            lines += [*markdown_table(["prompt", "continuation"], rows), ""]
        lines += blocks_markdown(list(profile_tables(entry)))
        for step in entry.steps:
            lines += [f"### {step_heading(step.id, step.name, step.seconds)}", ""]
            lines += blocks_markdown(step.summary())
            lines.append("")
    return "\n".join(_squeeze(lines)).rstrip() + "\n"


def _squeeze(lines: list[str]) -> list[str]:
    """No two blank lines in a row."""
    out: list[str] = []
    for line in lines:
        if not (line == "" and out and out[-1] == ""):
            out.append(line)
    return out
