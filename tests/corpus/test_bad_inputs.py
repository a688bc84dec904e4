"""Every bad input of the corpus (``corpus_cases``) ends in exit 2 and one line on stderr
that names what is wrong, with no traceback; the inputs are unchanged, nothing is written
beside them, and no code named by an input ran (marker files)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from corpus_cases import all_cases
from corpus_kit import Case, Kit, make_kit

from compresskit.cli.main import cli

CASES = all_cases()


@pytest.fixture(scope="module")
def kit_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kit")
    make_kit(directory)
    return directory


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (not following links) with a hash of what it holds."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            entries[relative] = "link:" + os.readlink(path)
        elif path.is_fifo():
            entries[relative] = "fifo"
        elif path.is_dir():
            entries[relative] = "dir"
        else:
            entries[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def _unblock_fifos(root: Path, stop: threading.Event) -> None:
    """A regression that reads a FIFO would block forever: after a while, open each FIFO's
    writing end so the reader gets EOF and the case fails instead of hanging the suite."""
    if stop.wait(20):
        return
    for fifo in (p for p in root.rglob("*") if p.is_fifo()):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(
    case: Case, kit_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for entry in kit_template.iterdir():
        (tmp_path / entry.name).write_bytes(entry.read_bytes())
    kit = Kit(tmp_path, tmp_path / "w.pt", tmp_path / "data.npz", tmp_path / "policy.yaml")
    saved_environ = dict(os.environ)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    args = case.build(kit)
    before = _tree(tmp_path)
    stop = threading.Event()
    guard = threading.Thread(target=_unblock_fifos, args=(tmp_path, stop), daemon=True)
    guard.start()
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        stop.set()
        os.environ.clear()
        os.environ.update(saved_environ)
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output[-800:], result.exception)
    assert "Traceback" not in result.output
    assert message.count("\n") == 0 and message.startswith("Error: "), result.output[-800:]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert _tree(tmp_path) == before, "the inputs changed or files were left beside them"
    for marker in case.markers:
        assert not (tmp_path / marker).exists(), f"code from the input ran: {marker} written"
