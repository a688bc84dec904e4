"""Dynamic int8 for Linear-heavy models (transformers): int8 per-channel weights, and
activations quantized at run time per tensor to uint8 from their own min/max.

ONNX has no fake-quant form of this that ORT fuses, so the torch model and the ONNX
file are made to agree differently from static QDQ: the torch module fake-quantizes the
way ORT's ``DynamicQuantizeLinear`` + ``MatMulInteger`` compute; the exporter writes the
*float* graph (``export_mode``) and then applies ORT's ``quantize_dynamic`` (per channel,
int8 weights) to exactly the MatMul nodes of the converted layers, found by their weights
(see ``compresskit.export.qdq.ort_dynamic_quantization``). ``ExportResult.post_quantization``
says so.

>>> DynamicQuantLinear.convert_(model.encoder.layer[0].attention.self.query)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.models.checkpoint import restorable
from compresskit.quantization.modules import weight_scale


def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """What ORT's DynamicQuantizeLinear does to ``x``: uint8 over [min(x, 0), max(x, 0)]."""
    low = torch.clamp(x.detach().min(), max=0.0)
    high = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.clamp((high - low) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


@restorable
class DynamicQuantLinear(nn.Linear):
    """A Linear that fake-quantizes as ORT dynamic int8 runs it; exports as float MatMul
    for ``quantize_dynamic`` to rewrite. Class swapped in place (names stay)."""

    onnx_export_hint = "ort-dynamic"
    is_quantized = True
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor

    @classmethod
    def convert_(cls, module: nn.Linear) -> DynamicQuantLinear:
        module.__class__ = cls
        quant: DynamicQuantLinear = module  # type: ignore[assignment]
        quant._init_quant()
        return quant

    def _init_quant(self) -> None:
        self.register_buffer("w_scale", weight_scale(self.weight))
        self.register_buffer("w_zero_point", torch.zeros(self.weight.shape[0], dtype=torch.int32))
        object.__setattr__(self, "export_mode", False)

    @classmethod
    def restore_structure(cls, module: nn.Module, attrs: dict[str, Any]) -> None:
        module.__class__ = cls
        module._init_quant()  # type: ignore[operator]

    def set_export_mode(self, flag: bool) -> None:
        """Float MatMul forward while the exporter traces (see module docstring)."""
        object.__setattr__(self, "export_mode", flag)

    def structure_attributes(self) -> dict[str, Any]:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "export_mode", False):
            # Float, and MatMul + Add rather than Gemm: quantize_dynamic rewrites MatMul only.
            y = torch.matmul(x, self.weight.t())
            return y if self.bias is None else y + self.bias
        if self.training:
            with torch.no_grad():
                self.w_scale.copy_(weight_scale(self.weight))
        weight = torch.fake_quantize_per_channel_affine(
            self.weight, self.w_scale, self.w_zero_point, 0, -128, 127
        )
        return F.linear(dynamic_fake_quant(x), weight, self.bias)


def dynamic_layers(model: nn.Module) -> list[DynamicQuantLinear]:
    return [m for m in model.modules() if isinstance(m, DynamicQuantLinear)]
