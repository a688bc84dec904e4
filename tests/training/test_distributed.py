"""Training on several processes: sharding and global batches in process, and real
2-process gloo runs through torchrun (``compresskit compress --nproc 2``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch.utils.data import TensorDataset

from compresskit.cli.main import cli
from compresskit.digest import state_dict_sha256
from compresskit.errors import CompressKitError
from compresskit.testing import TinyCNN
from compresskit.training import distributed
from compresskit.training.distributed import World

REPO = Path(__file__).resolve().parents[2]
# Two processes sharing 2 cores on a loaded machine: generous, but a hang still fails.
RUN_TIMEOUT_S = 240

POLICY = {
    "version": 1,
    "name": "tiny-ddp",
    "nodes": [
        {"id": "prune", "pass": "prune_channels", "config": {"ratio": 0.5}},
        {
            "id": "ft",
            "pass": "distill",
            "after": "prune",
            "config": {"train": {"epochs": 2, "batch_size": 32, "lr": 0.01}},
        },
        {"id": "int8", "pass": "quantize", "after": "ft"},
    ],
    "batch_sizes": [1],
}

FAILING_ARCH = """
import os
from compresskit.testing.tiny import TinyCNN

class FailsOnRank1(TinyCNN):
    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":
            raise RuntimeError("injected failure on rank 1")
        return super().forward(x)
"""


def _as_world(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    monkeypatch.setattr(distributed, "current", lambda: World(rank=rank, world_size=size))


@pytest.mark.parametrize("world_size", [2, 4])
def test_global_batches_are_the_single_process_batches(
    monkeypatch: pytest.MonkeyPatch, world_size: int
) -> None:
    """batch_size is global: the ranks' shares of each step are one process's batch."""
    data = TensorDataset(torch.arange(44).float(), torch.arange(44))
    for epoch in (0, 1):
        _as_world(monkeypatch, 0, 1)
        single = distributed.train_loader(data, batch_size=8, seed=3)
        distributed.set_epoch(single, epoch)
        expected = [sorted(y.tolist()) for _, y in single]
        shares = []
        for rank in range(world_size):
            _as_world(monkeypatch, rank, world_size)
            loader = distributed.train_loader(data, batch_size=8, seed=3)
            distributed.set_epoch(loader, epoch)
            assert loader.batch_size == 8 // world_size
            shares.append([y.tolist() for _, y in loader])
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(expected)
        steps = [sorted(sum((s[i] for s in shares), [])) for i in range(len(expected))]
        assert steps[:-1] == expected[:-1]  # every full global batch is the same
        # the last, partial batch: the same samples plus the sampler's padding (repeats)
        assert set(expected[-1]) <= set(steps[-1]) and len(steps[-1]) < len(expected[-1]) + 4
        if epoch == 0:
            first_epoch = expected
    assert expected != first_epoch  # set_epoch reshuffles


def test_global_batch_must_divide_over_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_world(monkeypatch, 0, 3)
    data = TensorDataset(torch.zeros(10), torch.zeros(10))
    with pytest.raises(CompressKitError, match="multiple of 3"):
        distributed.train_loader(data, batch_size=32, seed=0)


def test_single_process_helpers_change_nothing() -> None:
    model = TinyCNN()
    assert distributed.current() == World()
    assert distributed.wrap(model) is model
    assert distributed.all_reduce_sum(torch.tensor([0.25])).tolist() == [0.25]
    assert distributed.main_only(lambda: 5, what="x") == 5


def test_checksum_sees_one_changed_value() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    same = copy.deepcopy(model)
    assert state_dict_sha256(model) == state_dict_sha256(same)
    with torch.no_grad():
        same.features[0].weight[0, 0, 0, 0] += 1e-7
    assert state_dict_sha256(model) != state_dict_sha256(same)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert distributed.choose_backend(None, cpu) == "gloo"
    assert distributed.choose_backend("auto", cuda) == "nccl"
    assert distributed.choose_backend("gloo", cuda) == "gloo"
    with pytest.raises(CompressKitError, match="--backend gloo"):
        distributed.choose_backend("nccl", cpu)
    monkeypatch.setenv(distributed.BACKEND_ENV, "mpi")
    with pytest.raises(CompressKitError, match="not one of auto, gloo, nccl"):
        distributed.choose_backend(None, cpu)


def test_nproc_command_line_is_forwarded_without_nproc(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv: seen.append([str(n), *argv]))
    result = CliRunner().invoke(
        cli,
        ["compress", "w.pt", "--arch", "m:f", "--nproc", "2", "--trust-pickle", "--seed", "3"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    argv = seen[0]
    assert argv[:3] == ["2", "compress", "w.pt"] and "--nproc" not in argv
    assert argv[argv.index("--arch") + 1] == "m:f" and argv[argv.index("--seed") + 1] == "3"
    assert "--trust-pickle" in argv and "--backend" not in argv  # unset stays unset

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["compress", "--nproc", "2"])
    assert result.exit_code == 2 and "under torchrun leave it out" in result.output


def test_collective_helpers_on_two_ranks(tmp_path: Path) -> None:
    """Checksum agreement and disagreement, metric all-reduce, buffer sync, rank-0 work."""
    process = _run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + [f"--log-dir={tmp_path / 'logs'}", str(REPO / "tests" / "training" / "ranks_script.py")],
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "training matches one process" in process.stdout and "ranks ok" in process.stdout


@pytest.fixture
def ddp_inputs(tmp_path: Path, trained_tiny_cnn: torch.nn.Module) -> dict[str, Path]:
    from compresskit.testing import tiny_data

    # the .npz is split again (eval, val, train): 256 training samples, no sampler padding
    x, y = tiny_data(samples=492).train.tensors
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    torch.save(trained_tiny_cnn.state_dict(), tmp_path / "w.pt")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "failing_arch.py").write_text(FAILING_ARCH)
    return {
        "data": tmp_path / "data.npz",
        "w": tmp_path / "w.pt",
        "policy": tmp_path / "policy.yaml",
    }


def _compress_args(inputs: dict[str, Path], out: Path, arch: str) -> list[str]:
    return [
        "compress",
        str(inputs["w"]),
        "--arch",
        arch,
        "--data",
        str(inputs["data"]),
        "--policy",
        str(inputs["policy"]),
        "--out",
        str(out),
        "--latency-seconds",
        "0.05",
        "--exporter",
        "legacy",
    ]


def _run(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(cwd), os.environ.get("PYTHONPATH", "")]),
        distributed.TIMEOUT_ENV: "60",
    }
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
    )


def test_two_processes_match_one_process(ddp_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Same global batch on 1 and 2 processes: same training, within a stated tolerance.

    Not bit-identical: BatchNorm normalises each rank's half-batch with its own
    statistics (without BatchNorm, ranks_script.py shows the weights agree to 1e-6).
    Tolerance: epoch losses within 5%, validation accuracy within 0.1 (a few of its ~30
    samples), the int8 candidate's accuracy on the eval split within 0.05.
    """
    args = _compress_args(ddp_inputs, tmp_path / "two", "compresskit.testing.tiny:TinyCNN")
    process = _run(["-m", "compresskit", *args, "--nproc", "2"], cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.count("run directory:") == 1  # rank 0 alone reports
    two = json.loads((tmp_path / "two" / "report.json").read_text())

    one_out = tmp_path / "one"
    result = CliRunner().invoke(cli, _compress_args(ddp_inputs, one_out, args[3]))
    assert result.exit_code == 0, result.output
    one = json.loads((one_out / "report.json").read_text())

    assert (one["world_size"], one["backend"]) == (1, None)
    assert (two["world_size"], two["backend"]) == (2, "gloo")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    histories = [r["candidates"][0]["steps"][1]["records"]["history"] for r in (one, two)]
    assert [len(h["epochs"]) for h in histories] == [2, 2]
    for a, b in zip(histories[0]["epochs"], histories[1]["epochs"], strict=True):
        assert abs(a["loss"] - b["loss"]) <= 0.05 * a["loss"], (a, b)
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.1, (a, b)
    accuracy = [r["candidates"][0]["metrics"]["accuracy"] for r in (one, two)]
    assert accuracy[0] > 0.5  # the comparison means something: the model works
    assert abs(accuracy[0] - accuracy[1]) <= 0.05, accuracy
    assert one["candidates"][0]["params"] == two["candidates"][0]["params"]


def test_a_failing_rank_ends_the_run_cleanly(ddp_inputs: dict[str, Path], tmp_path: Path) -> None:
    """Rank 1 raises in training: the run stops (no hang), says why, and writes nothing."""
    out = tmp_path / "run"
    args = _compress_args(ddp_inputs, out, "failing_arch:FailsOnRank1")
    process = _run(["-m", "compresskit", *args, "--nproc", "2"], cwd=tmp_path)
    assert process.returncode == 2, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: 2-process run failed;") and "rank 1" in last
    assert "RuntimeError: injected failure on rank 1" in last
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
