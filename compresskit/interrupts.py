"""Ctrl-C and SIGTERM stop a run, even where a library loses them.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and a library
can lose it there: an ``except`` clause that itself fails while the interrupt propagates
replaces it with its own error (torch's ONNX exporter evaluates
``except torch._dynamo.exc.UserError`` while ``torch._dynamo`` is still half imported), and
an import that is cut short leaves its package half made. The CLI calls :func:`install`, so
a signal is also remembered; :func:`check` raises it again at the next safe point (a
fallback that would carry on, a pass boundary, a progress update, the moment a run
directory is moved into place). An interrupted run therefore never completes and never
leaves output.
"""

from __future__ import annotations

import signal
from types import FrameType

_received: int | None = None


def _stop(signum: int) -> BaseException:
    # SIGINT as Python's own KeyboardInterrupt (exit 130); SIGTERM as the exit status a
    # shell reports for it (143), unwinding so that temporary files are removed.
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    raise _stop(signum)


def install() -> None:
    """Remember SIGINT and SIGTERM in this process (the CLI's entry point calls it)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


def received() -> int | None:
    """The signal that interrupted this process, if one did since :func:`install`."""
    return _received


def check(error: BaseException | None = None) -> None:
    """Raise the interrupt again if this process received one, or if ``error`` is what a
    library made of a Ctrl-C (a ``KeyboardInterrupt`` among its causes or contexts; a
    ``SystemExit`` there may be a user's factory calling ``sys.exit``, so only the
    remembered SIGTERM counts).

    >>> check(ValueError("a foreign error, not an interrupt"))  # returns: nothing to raise
    """
    if _received is not None:
        raise _stop(_received)
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            raise current from None
        pending += [current.__cause__, current.__context__]
