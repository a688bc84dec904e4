from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compresskit.context import Context
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import export_onnx, onnx_metadata
from compresskit.export.verify import compare, onnx_outputs, torch_outputs
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.testing import TinyCNN, TinyResidualCNN


def quantized(model: torch.nn.Module, tiny) -> torch.nn.Module:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    return Quantize(QuantizeConfig()).apply(copy.deepcopy(model), ctx)


def test_float_export_has_dynamic_batch_and_matches(tiny, tmp_path: Path) -> None:
    model = TinyCNN().eval()
    result = export_onnx(model, tiny.example_inputs(1), tmp_path / "f.onnx")
    assert result.exporter == "dynamo" and result.fallback_reason is None
    loader = tiny.loader("eval", batch_size=37)  # a batch size never seen at export
    parity = compare(
        torch_outputs(model, loader),
        onnx_outputs(result.path, loader),
        tolerance=1e-4,
        min_agreement=1.0,
    )
    assert parity.ok
    assert kernel_report(result.path).fraction == 0.0


@pytest.mark.parametrize("model_cls", [TinyCNN, TinyResidualCNN])
def test_quantized_export_runs_in_integer_kernels(model_cls, tiny, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quantized(model_cls().eval(), tiny)
    result = export_onnx(model, tiny.example_inputs(2), tmp_path / "q.onnx")
    assert result.exporter == "legacy"
    report = kernel_report(result.path)
    assert report.fraction >= 0.9, report.nodes
    assert report.ops.get("com.microsoft:QLinearConv", 0) >= 2
    weights = [
        i
        for i in onnx.load(str(result.path)).graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights, "weights should be stored as int8 initializers"


def test_parity_catches_a_wrong_model(tiny, tmp_path: Path) -> None:
    model = TinyCNN().eval()
    result = export_onnx(model, tiny.example_inputs(2), tmp_path / "f.onnx")
    wrong = TinyCNN().eval()  # different weights
    loader = tiny.loader("eval", batch_size=64)
    parity = compare(
        torch_outputs(wrong, loader),
        onnx_outputs(result.path, loader),
        tolerance=1e-4,
        min_agreement=0.999,
    )
    assert not parity.ok


def test_export_falls_back_to_legacy_and_says_why(tiny, tmp_path: Path) -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return x.flatten(1)[:, :4]
            return -x.flatten(1)[:, :4]

    result = export_onnx(DataDependent(), (torch.ones(2, 1, 8, 8),), tmp_path / "d.onnx")
    assert result.exporter == "legacy"
    assert result.fallback_reason and "dynamo" in result.fallback_reason
    assert onnx_metadata(result.path)["exporter_fallback_reason"] == result.fallback_reason
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]  # no temp files left
    assert np.isfinite(onnx_outputs(result.path, tiny.loader("eval", batch_size=16))).all()


def test_an_interrupt_the_exporter_rewords_still_stops_the_export(tmp_path: Path) -> None:
    """torch's exporter can turn a Ctrl-C into another error (it evaluates an ``except``
    clause while torch._dynamo is half imported): export must not fall back and carry on."""

    class InterruptedWhileTraced(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise AttributeError("module 'torch' has no attribute '_dynamo'") from None

    with pytest.raises(KeyboardInterrupt):
        export_onnx(InterruptedWhileTraced(), (torch.ones(2, 4),), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # the private export directory is gone too
