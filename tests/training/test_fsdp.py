"""LM distillation through the distill pass on 2 CPU processes over gloo, with DDP and with
FSDP (torch ``fully_shard``): both train the same weights as one process
(``tests/training/fsdp_script.py``)."""

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


def test_ddp_and_fsdp_on_two_processes_train_what_one_process_does(tmp_path: Path) -> None:
    one = _run([str(SCRIPT), str(tmp_path / "one.pt"), "fsdp"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt")
    losses = [e["loss"] for e in a["history"]["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]  # the student trains
    for sharding in ("ddp", "fsdp"):
        out = tmp_path / f"{sharding}.pt"
        two = _run(
            ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
            + [f"--log-dir={tmp_path / 'logs'}", str(SCRIPT), str(out), sharding],
            tmp_path,
        )
        assert two.returncode == 0, two.stderr[-3000:]
        assert f"{sharding} ok on 2 process(es)" in two.stdout
        b = torch.load(out)
        assert a["state"].keys() == b["state"].keys()
        for key, value in a["state"].items():
            torch.testing.assert_close(b["state"][key], value, rtol=1e-5, atol=1e-6)
        two_losses = torch.tensor([e["loss"] for e in b["history"]["epochs"]])
        torch.testing.assert_close(two_losses, torch.tensor(losses), rtol=1e-5, atol=0)
