"""A self-contained ``report.html``: the table, verdicts, targets and charts (inline PNG)."""

from __future__ import annotations

import base64
from html import escape

from compresskit.bench.plots import pareto_png, size_png
from compresskit.bench.report import (
    LATENCY_NOTE,
    MEASURED_NOTE,
    NOISY_NOTE,
    Report,
    primary_metric,
    table_rows,
    target_lines,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.bad { color: #b00020; } .note { color: #666; font-size: 0.85rem; }
img { max-width: 100%; }
"""


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p class='note'>{escape(alt)}: nothing measured.</p>"
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _inline_markdown(text: str) -> str:
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


def render_html(report: Report) -> str:
    """The whole report as one HTML page with embedded charts."""
    header, rows = table_rows(report)
    table = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    table.append("</table>")
    verdicts = [
        f"<li><b>{escape(e.name)}</b>: {escape(e.summary or '; '.join(e.verdict))}</li>"
        for e in report.candidates
    ]
    details = []
    for entry in report.entries():
        items = list(entry.verdict)
        if entry.parity is None:
            items.append(f"not exported to ONNX: {entry.export_skipped}")
        elif not entry.parity.ok:
            items.append("ONNX Runtime output differs from torch beyond tolerance")
        if entry.exporter_fallback_reason:
            items.append(f"exporter fallback: {entry.exporter_fallback_reason}")
        for session in entry.sessions:
            if session.error:
                items.append(f"{session.target}: not measured: {session.error}")
            elif session.load_ms is not None:
                memory = session.peak_rss_delta_mb or session.rss_delta_mb or 0.0
                items.append(
                    f"{session.target}: session load {session.load_ms:.1f} ms, "
                    f"peak memory +{memory:.1f} MB"
                )
        details.append(
            f"<h3>{escape(entry.name)}</h3><p>{escape(' -> '.join(entry.nodes) or 'unchanged')}"
            f", exported with the {escape(entry.exporter)} exporter ({escape(entry.precision)})"
            "</p><ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"
        )
    targets = [
        f"<li>{_inline_markdown(line[2:])}</li>"
        for line in target_lines(report)
        if line.startswith("- ")
    ]
    noisy = any(x.noisy for e in report.entries() for x in e.latency)
    chart = f"{primary_metric(report)[1]} vs latency"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>compresskit run: {escape(report.policy)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>compresskit run: policy <code>{escape(report.policy)}</code></h1>",
            f"<p class='note'>Checkpoint <code>{escape(report.checkpoint)}</code>, data "
            f"<code>{escape(report.data)}</code>, seed {report.seed}, {report.seconds:.1f} s, "
            f"compresskit {escape(report.compresskit_version)}, {escape(report.created)}, "
            f"report schema {report.schema_version}.</p>",
            *table,
            f"<p class='note'>{escape(NOISY_NOTE)}</p>" if noisy else "",
            f"<p class='note'>{escape(MEASURED_NOTE[report.task])} {escape(LATENCY_NOTE)}</p>",
            "<h2>Verdict</h2><ul>" + "".join(verdicts) + "</ul>",
            f"<h2>{escape(chart[0].upper() + chart[1:])}</h2>",
            _img(pareto_png(report), chart),
            "<h2>Size</h2>",
            _img(size_png(report), "model size"),
            "<h2>Targets</h2><ul>" + "".join(targets) + "</ul>",
            "<h2>Models</h2>",
            *details,
            "</body></html>",
            "",
        ]
    )
