"""Progress and status lines on stderr, so stdout stays for results.

Messages are plain text: ``[prune]`` is printed as written, never read as rich markup.
Piped into a log file they are whole lines (a terminal wraps them itself).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

console = Console(stderr=True, highlight=False)


def quiet() -> bool:
    """No progress: asked for ($COMPRESSKIT_QUIET), or a rank other than 0 under torchrun."""
    return os.environ.get("COMPRESSKIT_QUIET", "") not in ("", "0") or os.environ.get(
        "RANK", "0"
    ) != "0"


def status(message: str, *, style: str | None = None) -> None:
    """One line of what is happening now (``style``: a rich style such as "red")."""
    if not quiet():
        line = Text("· ", style="dim") + Text(message, style=style or "")
        console.print(line, soft_wrap=not console.is_terminal)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Progress]:
    """A bar with a task 0 of ``total`` steps; transient on a terminal, silent when quiet."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet() or not sys.stderr.isatty(),
    )
    with progress:
        progress.add_task(description, total=total, info="")
        yield progress
