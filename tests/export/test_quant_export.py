"""A run with int8 candidates of every kind: static QDQ, ORT dynamic, and bitsandbytes
(which is measured in torch and says why it has no ONNX file)."""

from __future__ import annotations

from pathlib import Path

import onnx

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
    # Query, key and value read one tensor: it is quantized once for the three of them.
    graph = onnx.load(str(tmp_path / "run" / "static" / "model.onnx")).graph
    quantized = [n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and len(quantized) == len(set(quantized))
    bnb = entries["bnb"]
    assert bnb.parity is None and bnb.int8_coverage is None and bnb.onnx_bytes == 0
    assert bnb.export_skipped and "bitsandbytes Linear8bitLt" in bnb.export_skipped
    assert {x.target for x in bnb.latency} == {"torch-cpu"}
    assert bnb.steps[0].records["memory_saved_bytes"] > 0
    assert not (tmp_path / "run" / "bnb" / "model.onnx").exists()
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "not exported to ONNX" in markdown and "BELOW" not in markdown


def test_only_quantizers_of_one_tensor_with_equal_parameters_are_shared() -> None:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compresskit.export.qdq import share_quantizers

    def constant(name: str, value: float, dtype: type = np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes, outputs = [], []
    for k, (scale, zero) in enumerate([("s1", "z1"), ("s1b", "z1b"), ("s2", "z1")]):
        nodes.append(helper.make_node("QuantizeLinear", ["x", scale, zero], [f"q{k}"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"q{k}", scale, zero], [f"y{k}"]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [4]))
    initializers = [
        constant("s1", 0.1),
        constant("s1b", 0.1),  # the same value under another name
        constant("s2", 0.2),
        constant("z1", 128, np.uint8),
        constant("z1b", 128, np.uint8),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "three",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            outputs,
            initializers,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    x = np.array([-1.0, 0.05, 0.3, 7.0], np.float32)

    def run() -> list:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"x": x})

    before = run()
    assert share_quantizers(model) == 1  # the second equals the first; the third does not
    assert [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"] == [
        "q0",
        "q0",
        "q2",
    ]
    after = run()
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
