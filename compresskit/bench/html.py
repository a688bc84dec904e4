"""A self-contained ``report.html``: everything ``report.md`` says (table, verdicts,
targets, parity, churn, sessions, every pass's record) plus the charts, inline as PNG."""

from __future__ import annotations

import base64
from html import escape

from compresskit.bench.plots import DPI, pareto_png, size_png
from compresskit.bench.profile_view import profile_png, profile_tables
from compresskit.bench.report import Report
from compresskit.bench.text import (
    budget_line,
    entry_lines,
    meta_line,
    notes,
    primary,
    step_heading,
    table_rows,
    target_lines,
)
from compresskit.records import Line, Table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; margin-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 0.4rem 0 1rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.2rem; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #e3e3e3; text-align: right;
         font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; font-size: 0.85rem; }
.wide { overflow-x: auto; }
code { background: #f4f4f4; padding: 0 0.2rem; border-radius: 3px; }
img { max-width: 100%; height: auto; }
"""


def _img(png: bytes | None, alt: str) -> str:
    """Inline, at its size in inches (CSS pixels are 1/96 in): sharp on dense screens,
    and its text the size of the page's."""
    if png is None:
        return f"<p class='note'>{escape(alt)}: nothing measured.</p>"
    data = base64.b64encode(png).decode("ascii")
    width = round(int.from_bytes(png[16:20], "big") * 96 / DPI)  # PNG IHDR width
    return f'<img alt="{escape(alt)}" width="{width}" src="data:image/png;base64,{data}">'


def inline_markdown(text: str) -> str:
    """Escape, then turn `code` and **bold** of our own markdown lines into HTML."""
    out, code, bold = [], False, False
    text = escape(text)
    index = 0
    while index < len(text):
        if text.startswith("**", index):
            out.append("</b>" if bold else "<b>")
            bold = not bold
            index += 2
            continue
        if text[index] == "`":
            out.append("</code>" if code else "<code>")
            code = not code
        else:
            out.append(text[index])
        index += 1
    return "".join(out)


def html_table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    parts = ["<div class='wide'><table>"]
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    parts.append("</table></div>")
    return "".join(parts)


def _list(lines: list[str]) -> str:
    if not lines:
        return ""
    return "<ul>" + "".join(f"<li>{inline_markdown(line)}</li>" for line in lines) + "</ul>"


def blocks_html(blocks: list[Line | Table]) -> str:
    """A record's summary: runs of lines as a list, tables with their title."""
    parts, lines = [], []
    for block in blocks:
        if isinstance(block, Line):
            lines.append(block.text)
            continue
        parts.append(_list(lines))
        lines = []
        parts.append(html_table(block.header, block.rows, block.title))
    parts.append(_list(lines))
    return "".join(parts)


def render_html(report: Report) -> str:
    """The whole report as one HTML page with embedded charts."""
    header, rows = table_rows(report)
    body = [
        f"<h1>compresskit run: policy <code>{escape(report.policy)}</code></h1>",
        f"<p class='note'>{inline_markdown(meta_line(report))}</p>",
        html_table(header, rows),
        *(f"<p class='note'>{escape(note)}</p>" for note in notes(report)),
    ]
    if report.candidates or report.failed:
        body.append("<h2>Verdict</h2>")
        if report.verdict is not None:
            body.append(f"<p>{escape(report.verdict.summary)}.</p>")
        budget = budget_line(report)
        if budget:
            body.append(f"<p class='note'>{escape(budget)}</p>")
        body.append(
            _list(
                [f"**{e.name}**: {e.summary}" for e in report.candidates]
                + [f"**{f.name}**: {f.line}" for f in report.failed]
            )
        )
    chart = f"{primary(report).title} vs latency"
    body += [
        f"<h2>{escape(chart[0].upper() + chart[1:])}</h2>",
        _img(pareto_png(report), chart),
        "<h2>Size</h2>",
        _img(size_png(report), "model size"),
    ]
    profiles = profile_png(report)
    if profiles is not None:
        body += ["<h2>Where the time goes</h2>", _img(profiles, "kernel time per module")]
    targets = target_lines(report)
    if targets:
        body += ["<h2>Targets</h2>", _list(targets)]
    body.append("<h2>Models</h2>")
    for entry in report.entries():
        passes = " -> ".join(entry.nodes) or "unchanged"
        body += [
            f"<h3>{escape(entry.name)}</h3>",
            f"<p class='note'>Passes: {escape(passes)}.</p>",
            _list(entry_lines(report, entry)),
        ]
        if entry.continuations:
            rows = [[c.prompt, c.continuation] for c in entry.continuations]
            caption = f"Greedy continuations ({entry.continuations[0].runtime})"
            body.append(html_table(["prompt", "continuation"], rows, caption))
        body.append(blocks_html(list(profile_tables(entry))))
        for step in entry.steps:
            body.append(
                f"<h4>{inline_markdown(step_heading(step.id, step.name, step.seconds))}</h4>"
            )
            body.append(blocks_html(step.summary()))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>compresskit run: {escape(report.policy)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            *(part for part in body if part),
            "</body></html>",
            "",
        ]
    )
