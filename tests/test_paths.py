"""Output paths: a run is staged beside --out and renamed, or removed whatever stops it."""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from compresskit import interrupts
from compresskit.errors import CompressKitError
from compresskit.paths import check_output_file, staged_directory, write_text_atomic


def test_a_completed_block_becomes_the_directory(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "r"
    with staged_directory(final) as tmp:
        (tmp / "report.json").write_text("{}")
        assert tmp.parent == final.parent and tmp.name.startswith(".r.")
    assert (final / "report.json").read_text() == "{}"
    assert [p.name for p in final.parent.iterdir()] == ["r"]


@pytest.mark.parametrize(
    "stop",
    [RuntimeError("a bug"), KeyboardInterrupt(), SystemExit(143)],
    ids=["exception", "ctrl-c", "sigterm"],
)
def test_anything_that_stops_the_block_leaves_nothing(tmp_path: Path, stop: BaseException) -> None:
    final = tmp_path / "r"
    with pytest.raises(type(stop)), staged_directory(final) as tmp:
        (tmp / "half.onnx").write_bytes(b"\0" * 10)
        raise stop
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cli_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI's remembered signals, installed in this process for one test."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(interrupts, "_received", None)
    interrupts.install()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_a_library_swallowed_still_leaves_nothing(
    tmp_path: Path, cli_signals: None, signum: int
) -> None:
    """A library may lose the interrupt (an ``except`` that fails while it propagates): the
    run must not be moved into place as if it had completed."""
    final = tmp_path / "r"
    stop = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(stop), staged_directory(final) as tmp:
        (tmp / "half.onnx").write_bytes(b"\0" * 10)
        try:
            signal.raise_signal(signum)
        except BaseException:  # noqa: BLE001 - the library that loses it
            pass
        (tmp / "more.onnx").write_bytes(b"\0" * 10)  # and the run carries on
    assert list(tmp_path.iterdir()) == []
    assert interrupts.received() == signum


def test_a_full_disk_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CompressKitError, match="No space left on device.*free some space"):
        with staged_directory(tmp_path / "r"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_output_files_are_checked_and_written_atomically(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    with pytest.raises(CompressKitError, match="is one of the inputs"):
        check_output_file(model, what="--json", inputs=[model])
    target = tmp_path / "out.json"
    check_output_file(target, what="--json", inputs=[model])
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.onnx",
        "out.json",
    ]
