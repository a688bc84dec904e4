"""How calibration turns observed activations into a quantization range.

* ``minmax``: the whole observed range; nothing clips, but one outlier widens every step.
* ``percentile``: the ``percentile`` / ``100 - percentile`` quantiles of a fixed-seed
  sample of the values; outliers clip.
* ``mse``: the clipping of the observed range (a grid of 50 ratios) that minimises the
  mean squared quantization error on the sample (as in NNCF and TensorRT's MSE
  calibrators).
* ``entropy``: the clipping (same grid) that minimises the KL divergence between the
  sample's histogram (2048 bins, clipped mass folded into the edge bins) and its
  255-level quantized version (TensorRT's entropy calibrator, over an affine range).
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


BINS = 2048


def _entropy_ranges(
    values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, ratios: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """TensorRT's entropy calibration over an affine range: one 2048-bin histogram of the
    observed range; for each clipping ``ratio`` the reference P is the bins inside (the
    clipped mass folded into the edge bins) and Q is the same bins without the clipped
    mass, merged into 255 levels and spread evenly over each level's non-empty bins. The
    range with the least KL(P || Q) wins; clipping much mass costs, as it should."""
    span = float(high - low)
    if span <= 1e-12:
        return low, high
    hist = torch.histc(values, bins=BINS, min=float(low), max=float(high)).double()
    width = span / BINS
    best = (float("inf"), low, high)
    for ratio in ratios:
        first = round(float(low) * (ratio - 1) / width)  # low * ratio, in bins from low
        last = BINS - round(float(high) * (1 - ratio) / width)
        if last - first < 255:
            continue
        inside = hist[first:last]
        p = inside.clone()
        p[0] += hist[:first].sum()
        p[-1] += hist[last:].sum()
        level = torch.arange(len(inside)) * 255 // len(inside)
        level_sum = torch.zeros(255, dtype=torch.float64).index_add_(0, level, inside)
        level_count = torch.zeros(255, dtype=torch.float64).index_add_(
            0, level, (inside > 0).double()
        )
        q = torch.where(
            inside > 0, level_sum[level] / level_count[level].clamp(min=1.0), torch.zeros(1)
        )
        p, q = p / p.sum(), q / max(float(q.sum()), 1e-12)
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
        if kl < best[0]:
            best = (kl, low + first * width, low + last * width)
    return (
        torch.as_tensor(best[1], dtype=low.dtype).reshape(()),
        torch.as_tensor(best[2], dtype=high.dtype).reshape(()),
    )


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
    ratios = torch.linspace(0.02, 1.0, 50).tolist()
    if quantizer.method == "entropy":
        return _entropy_ranges(values, low, high, ratios)
    best = (_fake_quant_error(values, low, high), low, high)
    for ratio in ratios:
        error = _fake_quant_error(values, low * ratio, high * ratio)
        if error < best[0]:
            best = (error, low * ratio, high * ratio)
    return best[1], best[2]
