"""`compresskit bench` on any ONNX files: inputs made from each model's own signature, a
fixed batch size honoured (the others skipped with a line each), a model that fails listed
with a one-line reason and a non-zero exit, models with different inputs in one call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from compresskit.bench.files import onnx_inputs
from compresskit.bench.measurement import BenchDocument
from compresskit.cli.main import cli


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def fixed_batch_model(path: Path) -> Path:
    """x: float [1, 4] -> y = x @ W: a graph exported with its batch fixed at 1."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    return _save(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["y"])],
            "fixed",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
            [weight],
        ),
        path,
    )


def token_model(path: Path) -> Path:
    """ids: int64 [N, seq], mask: float [N, seq] -> sum(ids * mask) per row."""
    return _save(
        helper.make_graph(
            [
                helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["f", "mask"], ["m"]),
                helper.make_node("ReduceSum", ["m", "axes"], ["y"], keepdims=1),
            ],
            "tokens",
            [
                helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"]),
                helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "seq"]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
            [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        ),
        path,
    )


def broken_model(path: Path) -> Path:
    """Loads, but fails on every run: 4 values cannot be reshaped to [5, -1]."""
    return _save(
        helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            "broken",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, "M"])],
            [numpy_helper.from_array(np.array([5, -1], np.int64), "shape")],
        ),
        path,
    )


def test_inputs_come_from_each_models_signature(tmp_path: Path) -> None:
    fixed = onnx_inputs(fixed_batch_model(tmp_path / "fixed.onnx"))
    assert fixed.fixed_batch == 1 and not fixed.dynamic_sequence
    assert [(x.dtype, x.shape) for x in fixed.sample] == [(np.float32, (1, 4))]
    tokens = onnx_inputs(token_model(tmp_path / "tokens.onnx"))
    assert tokens.fixed_batch is None and tokens.dynamic_sequence
    assert [x.dtype for x in tokens.sample] == [np.int64, np.float32]
    assert tokens.sample[0].shape == tokens.sample[1].shape == (1, 16)


def test_models_with_different_inputs_and_a_fixed_batch(tmp_path: Path) -> None:
    fixed = fixed_batch_model(tmp_path / "fixed.onnx")
    tokens = token_model(tmp_path / "tokens.onnx")
    result = CliRunner().invoke(
        cli,
        ["bench", str(fixed), str(tokens), "--batch", "1,8", "--seconds", "0.05", "--json", "-"],
    )
    assert result.exit_code == 0, result.output
    document = BenchDocument.model_validate(json.loads(result.stdout))
    (run,) = document.targets
    by_name = {m.name: m for m in run.models}
    assert [x.batch for x in by_name["fixed"].latency] == [1]
    assert by_name["fixed"].skipped == ["batch 8: the model's graph fixes the batch size at 1"]
    assert [x.batch for x in by_name["tokens"].latency] == [1, 8]
    assert "fixed: not timed: batch 8" in result.stderr  # one line for the skipped batch
    assert "Traceback" not in result.output


def test_a_model_that_fails_is_listed_and_the_exit_code_says_so(tmp_path: Path) -> None:
    fixed = fixed_batch_model(tmp_path / "fixed.onnx")
    broken = broken_model(tmp_path / "broken.onnx")
    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        cli,
        ["bench", str(fixed), str(broken), "--batch", "1", "--seconds", "0.05", "--json", str(out)],
    )
    assert result.exit_code == 4, result.output
    document = BenchDocument.model_validate_json(out.read_text())
    broken_run = document.targets[0].model("broken")
    assert broken_run is not None and broken_run.error and "\n" not in broken_run.error
    assert document.targets[0].latency("fixed", 1) is not None  # the other one measured
    lines = [line for line in result.stdout.splitlines() if "broken: not measured" in line]
    assert len(lines) == 1 and "Reshape" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "fixed.onnx", out.name]
