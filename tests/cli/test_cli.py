from __future__ import annotations

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

from compresskit import __version__
from compresskit.cli.main import cli
from compresskit.testing import TinyCNN

TINY_POLICY = {
    "version": 1,
    "name": "tiny",
    "nodes": [
        {"id": "prune", "pass": "prune_channels", "config": {"ratio": 0.5}},
        {"id": "ft", "pass": "distill", "after": "prune", "config": {"train": {"epochs": 1}}},
        {"id": "int8", "pass": "quantize", "after": "ft"},
        {"id": "only-int8", "pass": "quantize"},
    ],
    "batch_sizes": [1, 8],
}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    from compresskit.testing import tiny_data

    bundle = tiny_data()
    x, y = bundle.train.tensors
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(TINY_POLICY))
    return {
        "data": tmp_path / "data.npz",
        "weights": tmp_path / "w.pt",
        "policy": tmp_path / "policy.yaml",
    }


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help() -> None:
    assert __version__ in invoke("--version").output
    for command in (
        [],
        ["compress"],
        ["export"],
        ["bench"],
        ["policies"],
        ["policies", "schema"],
        ["targets", "list"],
    ):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_policies_commands(tmp_path: Path) -> None:
    assert "default" in invoke("policies", "list").output
    assert "prune_channels" in invoke("policies", "show", "default").output
    assert json.loads(invoke("policies", "schema").output)["title"] == "compresskit policy"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nnodes:\n  - {id: p, pass: prune_channels, config: {ratio: 2}}\n"
    )
    result = invoke("policies", "validate", str(bad))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "config.ratio" in result.output


def test_targets_list() -> None:
    output = invoke("targets", "list").output
    assert "cpu-ort" in output and "available" in output


def test_compress_writes_a_complete_run_directory(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "compress",
        str(inputs["weights"]),
        "--arch",
        "compresskit.testing.tiny:TinyCNN",
        "--data",
        str(inputs["data"]),
        "--policy",
        str(inputs["policy"]),
        "--out",
        str(out),
        "--latency-seconds",
        "0.05",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert json.loads(result.stdout) == report  # --json: the report alone on stdout
    assert report["schema_version"] == 3
    assert [c["name"] for c in report["candidates"]] == ["int8", "only-int8"]
    # the machine-readable verdict, per candidate and for the run
    assert report["verdict"]["measured"] is True and report["verdict"]["parity_ok"] is True
    for candidate in report["candidates"]:
        assert set(candidate["verdict"]) >= {"budget_met", "faster", "low_bit", "reasons"}
        assert all(
            isinstance(code, str) and " " not in code for code in candidate["verdict"]["reasons"]
        )
    steps = report["candidates"][0]["steps"]
    assert steps[0]["records"]["widths"] and steps[1]["records"]["history"]["epochs"]
    assert report["candidates"][0]["nodes"] == ["prune_channels", "distill", "quantize"]
    for entry in [report["baseline"], *report["candidates"]]:
        assert {"params", "macs", "onnx_bytes", "metrics", "latency"} <= set(entry)
        assert {"accuracy", "agreement"} <= set(entry["metrics"])
        assert {(x["target"], x["batch"]) for x in entry["latency"]} == {
            ("cpu-ort", 1),
            ("cpu-ort", 8),
        }
        assert all(x["p50_ms"] > 0 and x["speedup"] > 0 for x in entry["latency"])
        assert entry["parity"]["ok"]
    assert report["candidates"][0]["params"] < report["baseline"]["params"]
    assert report["candidates"][1]["int8_coverage"] >= 0.9
    assert (out / "report.md").read_text().startswith("# compresskit run")
    assert (out / "int8" / "model.onnx").is_file() and (out / "int8" / "model.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no temp dir left
    # the saved candidate reloads and exports on its own
    exported = invoke(
        "export",
        str(out / "int8" / "model.pt"),
        "--data",
        str(inputs["data"]),
        "--out",
        str(tmp_path / "again.onnx"),
    )
    assert exported.exit_code == 0, exported.output
    assert "agreement 1.0000" in exported.output or "agreement 0.9" in exported.output
    bench = invoke(
        "bench",
        str(tmp_path / "again.onnx"),
        "--batch",
        "1,4",
        "--seconds",
        "0.05",
        "--json",
        str(tmp_path / "b.json"),
    )
    assert bench.exit_code == 0
    (run,) = json.loads((tmp_path / "b.json").read_text())["targets"]
    assert [x["batch"] for x in run["models"][0]["latency"]] == [1, 4]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "nope.pt"], "no such file"),
        (["compress", "{weights}", "--data", "{data}"], "--arch MODULE:FACTORY"),
        (
            [
                "compress",
                "{weights}",
                "--arch",
                "compresskit.testing.tiny:TinyResidualCNN",
                "--data",
                "{data}",
            ],
            "does not match --arch",
        ),
        (["compress", "--policy", "nope"], "not a built-in policy"),
        (
            [
                "compress",
                "{weights}",
                "--arch",
                "compresskit.testing.tiny:TinyCNN",
                "--data",
                "digits",
            ],
            "classes",
        ),
        (["bench", "{weights}"], "--arch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    inputs: dict[str, Path], args: list[str], message: str
) -> None:
    formatted = [a.format(**inputs) for a in args]
    result = CliRunner().invoke(cli, formatted)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output


def test_out_directory_in_use_is_refused_and_kept(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        cli,
        [
            "compress",
            str(inputs["weights"]),
            "--arch",
            "compresskit.testing.tiny:TinyCNN",
            "--data",
            str(inputs["data"]),
            "--policy",
            str(inputs["policy"]),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2 and "not empty" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_default_command_end_to_end_as_a_subprocess(tmp_path: Path) -> None:
    """`compresskit compress` with no arguments: the README's first command."""
    env = {**os.environ, "COMPRESSKIT_QUIET": "0"}
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "compresskit",
            "compress",
            "--out",
            str(tmp_path / "run"),
            "--latency-seconds",
            "0.2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr[-2000:] + process.stdout[-2000:]
    assert "pruned-int8" in process.stdout and "speedup" in process.stdout
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    pruned = report["candidates"][0]
    assert pruned["macs"] < report["baseline"]["macs"] / 2
    assert pruned["int8_coverage"] >= 0.9
    assert pruned["metrics"]["accuracy"] >= report["baseline"]["metrics"]["accuracy"] - 0.05
