"""How calibration turns observed activations into a quantization range.

* ``minmax``: the whole observed range; nothing clips, but one outlier widens every step.
* ``percentile``: the ``percentile`` / ``100 - percentile`` quantiles of a fixed-seed
  sample of the values; outliers clip.
* ``mse``: the clipping of the observed range (a grid of 50 ratios) that minimises the
  mean squared quantization error on the sample (as in NNCF and TensorRT's MSE
  calibrators).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from compresskit.quantization.modules import ActQuant


def _fake_quant_error(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> float:
    scale = torch.clamp((high - low) / 255.0, min=1e-8)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    quantized = (torch.clamp(torch.round(values / scale) + zero_point, 0, 255) - zero_point) * scale
    return float(((quantized - values) ** 2).mean())


@torch.no_grad()
def choose_range(
    quantizer: ActQuant, samples: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) for ``quantizer`` by its method; min/max when it kept no samples."""
    low, high = quantizer.min_val.clone(), quantizer.max_val.clone()
    if quantizer.method == "minmax" or not samples:
        return low, high
    values = torch.cat(samples)
    if quantizer.method == "percentile":
        q = quantizer.percentile / 100.0
        return (
            torch.quantile(values, 1.0 - q).reshape(()),
            torch.quantile(values, q).reshape(()),
        )
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    if quantizer.force_zero_point_zero:
        low = torch.zeros_like(low)
    best = (_fake_quant_error(values, low, high), low, high)
    for ratio in torch.linspace(0.02, 1.0, 50).tolist():
        error = _fake_quant_error(values, low * ratio, high * ratio)
        if error < best[0]:
            best = (error, low * ratio, high * ratio)
    return best[1], best[2]
