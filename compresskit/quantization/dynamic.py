"""Dynamic int8 for Linear-heavy models (transformers): int8 per-channel weights, and
activations quantized at run time per tensor to uint8 from their own min/max.

ONNX has no fake-quant form of this that ORT fuses, so the torch model and the ONNX
file are made to agree differently from static QDQ: the torch module fake-quantizes the
way ORT's ``DynamicQuantizeLinear`` + ``MatMulInteger`` compute; the exporter writes the
*float* graph (its kind's ``prepare_export`` hook) and then runs its ``post_export`` hook,
ORT's ``quantize_dynamic`` (per channel, int8 weights) on exactly the MatMul nodes of the
converted layers, found by their weights (``compresskit.quantization.dynamic_onnx``).
``ExportResult.post_quantization`` says so.

>>> layer = DynamicQuantLinear.convert_(nn.Linear(16, 8))       # in place; returns the layer
>>> layer.w_scale.shape
torch.Size([8])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.kinds import module_kind
from compresskit.quantization.dynamic_onnx import ort_dynamic_quantization
from compresskit.quantization.qparams import (
    dynamic_fake_quant,
    fake_quant_weight,
    int8_weight_bytes,
    symmetric_scale,
)


def _restore(cls: type[nn.Module], module: nn.Module, attrs: Mapping[str, Any]) -> nn.Module:
    module.__class__ = cls
    module._init_quant()  # type: ignore[operator]
    return module


def _set_export_mode(module: nn.Module, flag: bool) -> None:
    module.set_export_mode(flag)  # type: ignore[operator]


def _weight_bytes(module: nn.Module) -> int:
    layer: Any = module
    return int8_weight_bytes(layer.weight, layer.w_scale, layer.bias)


@module_kind(
    precision="int8",
    export="ort-dynamic",
    prepare_export=_set_export_mode,
    post_export=ort_dynamic_quantization,
    weight_bytes=_weight_bytes,
    restore=_restore,
)
class DynamicQuantLinear(nn.Linear):
    """A Linear that fake-quantizes as ORT dynamic int8 runs it; exports as float MatMul
    for ``quantize_dynamic`` to rewrite. Class swapped in place (names stay)."""

    w_scale: torch.Tensor
    w_zero_point: torch.Tensor

    @classmethod
    def convert_(cls, module: nn.Linear) -> DynamicQuantLinear:
        module.__class__ = cls
        quant: DynamicQuantLinear = module  # type: ignore[assignment]
        quant._init_quant()
        return quant

    def _init_quant(self) -> None:
        self.register_buffer("w_scale", symmetric_scale(self.weight))
        self.register_buffer("w_zero_point", torch.zeros(self.weight.shape[0], dtype=torch.int32))
        object.__setattr__(self, "export_mode", False)

    def set_export_mode(self, flag: bool) -> None:
        """Float MatMul forward while the exporter traces (see module docstring)."""
        object.__setattr__(self, "export_mode", flag)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "export_mode", False):
            # Float, and MatMul + Add rather than Gemm: quantize_dynamic rewrites MatMul only.
            y = torch.matmul(x, self.weight.t())
            return y if self.bias is None else y + self.bias
        if self.training:
            with torch.no_grad():
                self.w_scale.copy_(symmetric_scale(self.weight))
        weight = fake_quant_weight(self.weight, self.w_scale, self.w_zero_point)
        return F.linear(dynamic_fake_quant(x), weight, self.bias)


def dynamic_layers(model: nn.Module) -> list[DynamicQuantLinear]:
    return [m for m in model.modules() if isinstance(m, DynamicQuantLinear)]
