"""Scale and zero-point arithmetic, written once for every quantizer and observer.

* activations: per tensor, unsigned, affine (``0..255``), over a range widened to hold 0
  so that zero (padding, ReLU output) is exact;
* weights and embedding rows: symmetric, scale ``max |w| / 127`` per output channel (row).
"""

from __future__ import annotations

import torch

UINT8_MIN, UINT8_MAX = 0, 255


def affine_qparams(
    low: torch.Tensor,
    high: torch.Tensor,
    *,
    qmin: int = UINT8_MIN,
    qmax: int = UINT8_MAX,
    zero_point_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, int32 zero point) of the affine grid over ``[min(low, 0), max(high, 0)]``.

    ``zero_point_zero`` starts the grid at 0 (the output of a fused ReLU)."""
    low = torch.clamp(low, max=0.0)
    high = torch.clamp(high, min=0.0)
    if zero_point_zero:
        low = torch.zeros_like(low)
    scale = torch.clamp((high - low) / (qmax - qmin), min=1e-8)
    zero_point = torch.clamp(torch.round(qmin - low / scale), qmin, qmax)
    return scale, zero_point.to(torch.int32)


def affine_fake_quant_error(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> float:
    """Mean squared error of fake-quantizing ``values`` to uint8 over ``[low, high]``."""
    scale, zero_point = affine_qparams(low, high)
    quantized = (
        torch.clamp(torch.round(values / scale) + zero_point, UINT8_MIN, UINT8_MAX) - zero_point
    ) * scale
    return float(((quantized - values) ** 2).mean())


def symmetric_scale(weight: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Symmetric int8 scale per output channel (first axis): ``max |w| / 127``."""
    return torch.clamp(weight.detach().abs().flatten(1).amax(dim=1) / 127.0, min=eps)


def quantize_symmetric(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 values of ``weight`` on the per-channel grid ``scale`` (in ``-127..127``)."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.clamp(torch.round(weight / scale.reshape(shape)), -127, 127).to(torch.int8)


# The ONNX fake-quant symbolic only takes (-128, 127); with scale max|w|/127 the value -128
# never occurs, so numerics equal a symmetric -127..127 range.
INT8_WEIGHT_MIN, INT8_WEIGHT_MAX = -128, 127


def fake_quant_weight(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """Per-output-channel int8 fake quant of ``weight`` (straight-through gradients)."""
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zero_point, 0, INT8_WEIGHT_MIN, INT8_WEIGHT_MAX
    )


def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """What ORT's DynamicQuantizeLinear does to ``x``: uint8 over [min(x, 0), max(x, 0)]."""
    scale, zero_point = affine_qparams(x.detach().min(), x.detach().max())
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, UINT8_MIN, UINT8_MAX)


def int8_weight_bytes(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> int:
    """Bytes a per-channel int8 layer's weights take once exported: int8 values, float32
    scales and a 32-bit bias (int32 in QDQ, float32 after ORT dynamic quantization)."""
    return weight.numel() + 4 * scale.numel() + (4 * bias.numel() if bias is not None else 0)
