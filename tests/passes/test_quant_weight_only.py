"""bitsandbytes weight-only layers: CPU forward, memory, and the documented export outcome."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from contract import PassContract

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.export.qdq import NotExportableError
from compresskit.passes.weight_only import WeightOnly, WeightOnlyConfig
from compresskit.tasks.classification import evaluate_accuracy


@pytest.mark.parametrize(("dtype", "layer"), [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_weight_only_layers_run_on_cpu_save_memory_and_refuse_export(
    dtype, layer, trained_tiny_transformer, tiny_text, tmp_path: Path
) -> None:
    ctx = Context(data=tiny_text, teacher=None, example_inputs=tiny_text.example_inputs(2))
    model = WeightOnly(WeightOnlyConfig(dtype=dtype, exclude=["head"])).apply(
        copy.deepcopy(trained_tiny_transformer), ctx
    )
    assert type(model.query).__name__ == layer and type(model.head) is torch.nn.Linear
    assert ctx.records["replaced_layers"] == 6
    before, after = ctx.records["linear_weight_bytes"]
    assert after < before / 2.5, (before, after)
    loader = tiny_text.loader("eval", batch_size=128)
    float_accuracy = evaluate_accuracy(trained_tiny_transformer, loader)
    assert evaluate_accuracy(model, loader) >= float_accuracy - 0.05
    with pytest.raises(NotExportableError, match=rf"'query' is a bitsandbytes {layer}") as info:
        export_onnx(model, tiny_text.example_inputs(2), tmp_path / "m.onnx")
    assert "\n" not in str(info.value) and "torch-cpu" in str(info.value)
    assert not list(tmp_path.glob("*.onnx*"))


def test_weight_only_needs_a_linear_layer(trained_tiny_cnn, tiny) -> None:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    with pytest.raises(CompressKitError, match="no nn.Linear layer"):
        WeightOnly(WeightOnlyConfig(exclude=["head"])).apply(copy.deepcopy(trained_tiny_cnn), ctx)


class TestWeightOnlyContract(PassContract):
    pass_name = "weight_only"
    settings = {"dtype": "nf4"}
    exportable = False  # bitsandbytes layers have no ONNX form
