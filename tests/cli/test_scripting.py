"""What a script can rely on: compress's exit code is the run's verdict (0 / 3 / 4),
``--json`` puts report.json alone on stdout, status lines are log records that ``-q``
silences and a library user can route, and a killed run leaves no temporary directory."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from compresskit.bench.report import Report
from compresskit.bench.verdict import EXIT_BUDGET_MISSED, EXIT_FAILED, EXIT_OK, judge
from compresskit.budget import Budget
from compresskit.cli.main import cli
from compresskit.testing import TinyCNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from test_report import report_dict  # noqa: E402

ARCH = "compresskit.testing.tiny:TinyCNN"


def _report(change: Any = None) -> Report:
    data = report_dict()
    if change is not None:
        change(data)
    report = Report.model_validate(data)
    for entry in report.candidates:
        entry.verdict = None
    return judge(report, Budget(max_accuracy_drop=0.02))


def _fail_parity(data: dict[str, Any]) -> None:
    data["candidates"][0]["parity"]["ok"] = False
    data["candidates"][0]["parity"]["max_abs_error"] = 1.0


def _meet_budget(data: dict[str, Any]) -> None:
    data["candidates"] = data["candidates"][:1]


@pytest.mark.parametrize(
    ("change", "code"),
    [(_meet_budget, EXIT_OK), (None, EXIT_BUDGET_MISSED), (_fail_parity, EXIT_FAILED)],
)
def test_compress_exits_with_the_verdict_and_json_goes_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any, code: int
) -> None:
    import compresskit.compress
    from compresskit.compress import RunResult

    report = _report(change)
    monkeypatch.setattr(
        compresskit.compress, "run", lambda *a, **k: RunResult(report, {}, tmp_path / "run")
    )
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    result = CliRunner().invoke(cli, ["compress", str(tmp_path / "w.pt"), "--arch", ARCH, "--json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout) == json.loads(report.model_dump_json())
    assert "run directory" in result.stderr


def test_status_lines_are_log_records_a_library_user_can_route() -> None:
    from compresskit import progress

    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(collector)
    progress.route_to_root()
    try:
        progress.status("[prune] prune_channels")
    finally:
        root.removeHandler(collector)
        logger = logging.getLogger("compresskit")
        logger.propagate = False
        logger.addHandler(progress._handler)
    (record,) = [r for r in records if "prune_channels" in r.getMessage()]
    assert record.levelno == logging.INFO and record.name.startswith("compresskit")


def test_quiet_and_verbose_set_the_compresskit_logger() -> None:
    logger = logging.getLogger("compresskit")
    try:
        assert CliRunner().invoke(cli, ["-q", "targets", "list"]).exit_code == 0
        assert logger.level == logging.WARNING and not logger.isEnabledFor(logging.INFO)
        assert CliRunner().invoke(cli, ["-v", "targets", "list"]).exit_code == 0
        assert logger.isEnabledFor(logging.DEBUG)
    finally:
        logger.setLevel(logging.INFO)


def test_an_internal_error_is_one_line_and_verbose_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import compresskit.export.targets as targets

    def broken() -> list[str]:
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(targets, "builtin_target_names", broken)
    quiet = CliRunner().invoke(cli, ["targets", "list"])
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    assert quiet.stderr.strip().count("\n") == 0 and "ZeroDivisionError: a bug" in quiet.stderr
    verbose = CliRunner().invoke(cli, ["-v", "targets", "list"])
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_run_leaves_nothing_beside_out(tmp_path: Path, signum: int) -> None:
    """Killed while it writes (export and timing on three targets): the hidden temporary
    run directory is removed and --out is not created."""
    from compresskit.testing import tiny_data

    x, y = tiny_data().train.tensors
    np.savez(tmp_path / "data.npz", x=x.numpy()[:64], y=y.numpy()[:64])
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    policy = {
        "version": 1,
        "name": "killed",
        "nodes": [{"id": "int8", "pass": "quantize"}],
        "targets": ["cpu-ort", "cpu-ort-1t", "torch-cpu"],
        "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    out = tmp_path / "runs" / "run"
    command = [
        sys.executable, "-m", "compresskit", "compress", str(tmp_path / "w.pt"), "--arch", ARCH,
        "--data", str(tmp_path / "data.npz"), "--policy", str(tmp_path / "policy.yaml"),
        "--out", str(out), "--latency-seconds", "20",
    ]  # fmt: skip
    env = {**os.environ, "COMPRESSKIT_QUIET": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if list(out.parent.glob(".run.*.tmp")):
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended first: {process.stderr.read()[-500:]}"  # type: ignore[union-attr]
    time.sleep(0.5)  # well inside the run: exporting or measuring
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (130 if signum == signal.SIGINT else 128 + signum), stderr
    assert "Traceback" not in stderr
    assert list(out.parent.iterdir()) == [], sorted(out.parent.iterdir())
