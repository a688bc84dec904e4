"""Paths the user names: input files that must be regular files (a FIFO named ``.pt`` would
block a reader forever), and output paths checked before any work starts (a run that
finds its ``--out`` unusable after an hour has wasted the hour).

>>> regular_file(Path("w.pt"), what="checkpoint")
Traceback (most recent call last):
    ...
compresskit.errors.CompressKitError: checkpoint w.pt: no such file
>>> with tempfile.TemporaryDirectory() as tmp:
...     check_output_dir(Path(tmp, "runs", "mine"))             # missing parents are fine
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from compresskit import interrupts
from compresskit.errors import CompressKitError


def regular_file(path: Path, *, what: str) -> Path:
    """``path`` if it is a readable regular file (symlinks followed), else a one-line error."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CompressKitError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise CompressKitError(f"{what} {path}: cannot read it ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise CompressKitError(f"{what} {path}: is a directory; give a file")
    if not stat.S_ISREG(mode):
        raise CompressKitError(
            f"{what} {path}: not a regular file (a pipe or device?); give a file on disk"
        )
    if not os.access(path, os.R_OK):
        raise CompressKitError(f"{what} {path}: not readable (check its permissions)")
    return path


def _existing_ancestor(path: Path) -> tuple[Path, list[Path]]:
    """The nearest ancestor of ``path`` that exists, and the missing ones below it."""
    missing: list[Path] = []
    current = path.parent
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    return current, missing


def _probe_writable(directory: Path, *, what: str, path: Path) -> None:
    """Create and remove a file in ``directory``: the one sure test (read-only mounts,
    /proc and permissions all answer here, whoever runs us)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".compresskit-probe-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise CompressKitError(
            f"{what} {path}: cannot write in {directory} ({error.strerror}); choose a "
            "writable location"
        ) from None


def _check_parents(path: Path, *, what: str, create_parents: bool) -> None:
    ancestor, missing = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise CompressKitError(
            f"{what} {path}: {ancestor} is a file, not a directory; choose another path"
        )
    if missing and not create_parents:
        raise CompressKitError(
            f"{what} {path}: directory {path.parent} does not exist; create it first"
        )
    _probe_writable(ancestor, what=what, path=path)


def check_output_dir(path: Path, *, what: str = "--out") -> None:
    """Refuse an output directory that cannot be created and filled: an existing file (or a
    link to one, or a device such as /dev/null), a non-empty directory, a path under a file,
    or a place this process cannot write. Missing parents are fine (they are created)."""
    if os.path.lexists(path):
        if path.is_symlink() and not path.exists():
            raise CompressKitError(f"{what} {path}: a broken symbolic link; remove it first")
        if not path.is_dir():
            raise CompressKitError(
                f"{what} {path}: exists and is not a directory; give a new or empty directory"
            )
        if any(path.iterdir()):
            raise CompressKitError(
                f"{what} {path} exists and is not empty; choose another directory"
            )
        _probe_writable(path.parent, what=what, path=path)
        return
    _check_parents(path, what=what, create_parents=True)


def check_output_file(path: Path, *, what: str, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output file that would fail or do harm: a directory, a device, a path
    whose directory is missing, an unwritable place, or one of the ``inputs``."""
    if os.path.lexists(path):
        if path.is_dir():
            raise CompressKitError(f"{what} {path}: is a directory; give a file path")
        if path.exists() and not path.is_file():
            raise CompressKitError(f"{what} {path}: not a regular file; give a file path")
        for source in inputs:
            if path.exists() and source.exists() and os.path.samefile(path, source):
                raise CompressKitError(f"{what} {path}: is one of the inputs; write somewhere else")
    _check_parents(path, what=what, create_parents=False)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it and a rename, so a reader
    never sees half a file and an interrupted write leaves the old one."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextmanager
def staged_directory(final: Path, *, what: str = "--out") -> Iterator[Path]:
    """A hidden temporary directory beside ``final``, renamed to ``final`` when the block
    completes and removed when it fails or is interrupted (Ctrl-C, SIGTERM unwound by the
    CLI), so nothing half-written is ever left. A full or read-only disk is one line."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        interrupts.check()  # an interrupt a library lost: the run is not complete
        if final.exists():
            final.rmdir()  # checked empty before the run
        tmp.rename(final)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno in _DISK_ERRORS:
            raise CompressKitError(
                f"{what} {final}: writing failed ({error.strerror}); free some space or "
                "choose another place"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
