"""A run with int8 candidates of every kind: static QDQ, ORT dynamic, and bitsandbytes
(which is measured in torch and says why it has no ONNX file)."""

from __future__ import annotations

from pathlib import Path

import compresskit
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.passes.weight_only import WeightOnly, WeightOnlyConfig
from compresskit.policies import policy_of


def test_run_reports_each_int8_kind_honestly(
    trained_tiny_transformer, tiny_text, tmp_path: Path
) -> None:
    pipeline = (
        compresskit.Pipeline()
        .add("static", Quantize(QuantizeConfig(calibration_batches=2)))
        .add("dynamic", QuantizeDynamic(QuantizeDynamicConfig()))
        .add("bnb", WeightOnly(WeightOnlyConfig(dtype="int8")))
    )
    policy = policy_of(
        pipeline,
        "quant-kinds",
        targets=["cpu-ort", "torch-cpu"],
        batch_sizes=[2],
        sequence_length=16,  # the tiny model has 64 positions; the targets say 128
        budget={"min_int8_coverage": 0.9},
    )
    result = compresskit.run(
        policy,
        model=trained_tiny_transformer,
        data=tiny_text,
        out=tmp_path / "run",
        latency_seconds=0.05,
    )
    entries = {e.name: e for e in result.report.candidates}
    for name in ("static", "dynamic"):
        entry = entries[name]
        assert entry.parity is not None and entry.parity.ok, entry.parity
        assert entry.int8_coverage is not None and entry.int8_coverage >= 0.9
        assert {x.target for x in entry.latency} == {"cpu-ort", "torch-cpu"}
    bnb = entries["bnb"]
    assert bnb.parity is None and bnb.int8_coverage is None and bnb.onnx_bytes == 0
    assert bnb.export_skipped and "bitsandbytes Linear8bitLt" in bnb.export_skipped
    assert {x.target for x in bnb.latency} == {"torch-cpu"}
    assert bnb.steps[0].records["memory_saved_bytes"] > 0
    assert not (tmp_path / "run" / "bnb" / "model.onnx").exists()
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "not exported to ONNX" in markdown and "BELOW" not in markdown
