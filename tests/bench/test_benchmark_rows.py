"""benchmarks/common: rows built and scored one at a time, then timed together through the
harness (one worker per target, every row interleaved), results in the measurement schema."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compresskit.export.onnx import export_onnx
from compresskit.testing import TinyCNN

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch):
    # What importing common sets for the benchmark process; undone after the test.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common

        yield common
    finally:
        sys.path.remove(str(BENCHMARKS))


class TinyCase:
    name = "tiny"
    metric = "accuracy"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        self.y = rng.integers(0, 10, 8)

    def evaluate(self, runner) -> dict[str, float]:
        pred = runner({"input": self.x}).argmax(1)
        return {"accuracy": float((pred == self.y).mean())}

    def latency_feeds(self) -> dict[str, list[dict[str, np.ndarray]]]:
        return {
            "b1": [{"input": self.x[i : i + 1]} for i in range(4)],
            "b4": [{"input": self.x[:4]}, {"input": self.x[4:]}],
        }


def test_rows_are_timed_together_and_written_in_the_schema(common, tmp_path: Path) -> None:
    torch.manual_seed(0)
    big, small = TinyCNN(width=16).eval(), TinyCNN(width=4).eval()
    example = (torch.randn(2, 1, 8, 8),)
    export_onnx(big, example, tmp_path / "big.onnx", exporter="legacy")
    export_onnx(small, example, tmp_path / "small.onnx", exporter="legacy")

    @common.producer("fp32-torch", "baseline")
    def eager(case):
        return common.Candidate("fp32-torch", "baseline", module=big)

    @common.producer("fp32-ort", "baseline")
    def fp32(case):
        return common.Candidate("fp32-ort", "baseline", onnx_path=tmp_path / "big.onnx")

    @common.producer("small", "peer")
    def peer(case):
        return common.Candidate("small", "peer", onnx_path=tmp_path / "small.onnx")

    @common.producer("broken", "peer")
    def broken(case):
        raise RuntimeError("cannot build this one")

    budget = common.TimingBudget(max_seconds=0.05, min_repeats=3)
    rows, runs = common.run_rows(TinyCase(), [eager, peer, fp32, broken], budget=budget)
    assert [r.name for r in rows] == ["fp32-torch", "small", "fp32-ort", "broken"]
    assert rows[3].error == "RuntimeError: cannot build this one" and not rows[3].latency
    assert [run.target for run in runs] == ["cpu-ort", "torch-cpu"]
    # The fp32 ORT row is the worker's first model (the baseline) though built later.
    assert [m.name for m in runs[0].models] == ["fp32-ort", "small"]
    for row in rows[:3]:
        assert [(x.workload, x.batch) for x in row.latency] == [("b1", 1), ("b4", 4)]
        assert row.session is not None and row.session.error is None
        assert 0.0 <= row.metrics["accuracy"] <= 1.0
    assert rows[2].at("b4").speedup == 1.0  # type: ignore[union-attr]
    assert rows[1].at("b1").speedup is not None  # type: ignore[union-attr]
    assert rows[0].at("b1").speedup is None  # torch: not interleaved with the ORT baseline
    assert rows[1].onnx_bytes and rows[0].onnx_bytes is None

    table = common.markdown_table(
        rows,
        metric="accuracy",
        latency_labels=["b1", "b4"],
        agreement_key="agreement",
        agreement_title="agree",
    )
    assert "| fp32-ort | baseline |" in table and "1.00x" in table
    assert "error: RuntimeError: cannot build this one" in table
    path = common.write_results(
        "tiny", rows, runs, {"quick": True}, tmp_path, table=table, preface="p"
    )
    assert common.load_rows(path) == rows
    assert "interleaved in one worker per target" in common.timing_note(runs)
