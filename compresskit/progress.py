"""Progress and status lines on stderr, so stdout stays for results.

Status lines are log records at INFO on the ``compresskit`` logger (the child logger of the
module that speaks, e.g. ``compresskit.pipeline.runner``). That logger prints them on
stderr through its own handler, so they show without any logging setup; a library user
silences them with ``logging.getLogger("compresskit").setLevel(logging.WARNING)``, or routes
them into their own logging with :func:`route_to_root`. ``$COMPRESSKIT_QUIET`` and ranks
other than 0 under torchrun stay quiet. Bars are drawn only on a terminal.

Messages are plain text: ``[prune]`` is printed as written, never read as rich markup.
Piped into a log file they are whole lines (a terminal wraps them itself).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from compresskit import interrupts

console = Console(stderr=True, highlight=False)
logger = logging.getLogger("compresskit")


class ConsoleHandler(logging.Handler):
    """Writes records to :data:`console` as ``· message`` lines (a record's ``style``
    extra: a rich style such as "red"; warnings are yellow)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and _env_quiet():
            return
        try:
            style = getattr(record, "style", None) or (
                "yellow" if record.levelno >= logging.WARNING else ""
            )
            line = Text("· ", style="dim") + Text(record.getMessage(), style=style)
            console.print(line, soft_wrap=not console.is_terminal)
        except Exception:
            self.handleError(record)


_handler = ConsoleHandler()
if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def set_verbosity(verbosity: int) -> None:
    """The CLI's ``-q`` (-1: warnings only), default (0: status lines) and ``-v`` (1: debug)."""
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))


def route_to_root() -> None:
    """Hand compresskit's records to the application's logging instead of printing them."""
    logger.removeHandler(_handler)
    logger.propagate = True


def _env_quiet() -> bool:
    return (
        os.environ.get("COMPRESSKIT_QUIET", "") not in ("", "0")
        or os.environ.get("RANK", "0") != "0"
    )


def quiet() -> bool:
    """No progress: asked for ($COMPRESSKIT_QUIET, ``-q``), or a rank other than 0 under
    torchrun."""
    return _env_quiet() or not logger.isEnabledFor(logging.INFO)


def status(message: str, *, style: str | None = None) -> None:
    """One line of what is happening now (``style``: a rich style such as "red"), logged at
    INFO by the calling module's logger. A safe point to stop at an interrupt a library lost
    (:mod:`compresskit.interrupts`)."""
    interrupts.check()
    caller = sys._getframe(1).f_globals.get("__name__", "compresskit")
    name = caller if caller.startswith("compresskit") else "compresskit"
    logging.getLogger(name).info(message, extra={"style": style})


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
