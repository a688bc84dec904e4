"""Writing a report's files: ``report.json``, ``report.md`` and the self-contained
``report.html``, each replaced atomically (a reader never sees half a file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compresskit.bench.html import render_html
from compresskit.bench.markdown import render_markdown
from compresskit.bench.report import Report


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it and a rename."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(report: Report, directory: Path, *, json_too: bool = True) -> list[Path]:
    """Write ``report.json`` (unless ``json_too`` is False), ``report.md`` and
    ``report.html`` into ``directory``; returns the paths written."""
    directory = Path(directory)
    files = {"report.md": render_markdown(report), "report.html": render_html(report)}
    if json_too:
        files = {"report.json": report.model_dump_json(indent=2), **files}
    for name, text in files.items():
        write_atomic(directory / name, text)
    return [directory / name for name in files]
