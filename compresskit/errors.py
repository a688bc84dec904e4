"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations


class CompressKitError(Exception):
    """A problem with the user's input: names what is wrong and how to fix it.

    The CLI prints the message on one line and exits with code 2; the Python API lets it
    propagate. Internal bugs are any other exception.

    >>> raise CompressKitError("policy passes[2].ratio: 1.3 is not in (0, 1)")
    Traceback (most recent call last):
    ...
    compresskit.errors.CompressKitError: policy passes[2].ratio: 1.3 is not in (0, 1)
    """


def first_line(error: BaseException, *, limit: int = 200) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: how a foreign
    error (torch, ONNX, a user's factory) is quoted inside a one-line message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


class MissingDependencyError(CompressKitError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'compresskit[{extra}]'"
        )
