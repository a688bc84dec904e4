"""FSDP (torch ``fully_shard``) on 2 CPU processes over gloo: LM distillation through the
distill pass trains the same weights as one process (``tests/training/fsdp_script.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from compresskit.training import distributed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "training" / "fsdp_script.py"
RUN_TIMEOUT_S = 300


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        distributed.TIMEOUT_ENV: "120",
    }
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
    )


def test_fsdp_on_two_processes_trains_what_one_process_does(tmp_path: Path) -> None:
    two = _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(SCRIPT),
            str(tmp_path / "two.pt"),
        ],
        tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "fsdp ok on 2 process(es)" in two.stdout
    one = _run([str(SCRIPT), str(tmp_path / "one.pt")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert a["state"].keys() == b["state"].keys()
    for key, value in a["state"].items():
        torch.testing.assert_close(b["state"][key], value, rtol=1e-5, atol=1e-6)
    losses = [[e["loss"] for e in run["history"]["epochs"]] for run in (a, b)]
    assert len(losses[0]) == 2
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=0)
    # The student trained: the weights moved away from the initial ones.
    assert losses[0][1] < losses[0][0]
