"""Observers: how the activations a quantizer saw become the range it quantizes.

They are apart from the fake-quant layers (which keep the running min/max as buffers and,
for the methods that need it, a fixed-seed sample of values) and hold no state of their
own, so one observer serves any quantizer.

* ``minmax``: the whole observed range; nothing clips, but one outlier widens every step.
* ``percentile``: the ``percentile`` / ``100 - percentile`` quantiles of the sample;
  outliers clip.
* ``mse``: the clipping of the observed range (a grid of 50 ratios) that minimises the
  mean squared quantization error on the sample (as in NNCF and TensorRT's MSE
  calibrators).
* ``entropy``: the clipping (same grid) that minimises the KL divergence between the
  sample's histogram (2048 bins, clipped mass folded into the edge bins) and its
  255-level quantized version (TensorRT's entropy calibrator, over an affine range).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

import torch

from compresskit.quantization.qparams import affine_fake_quant_error

CalibrationMethod = Literal["minmax", "percentile", "mse", "entropy"]
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = get_args(CalibrationMethod)
BINS = 2048
# Clipping ratios of the observed range tried by the mse and entropy observers.
_RATIOS = torch.linspace(0.02, 1.0, 50).tolist()


def sample_values(x: torch.Tensor, *, seed: int, size: int = 4096) -> torch.Tensor:
    """Up to ``size`` values of ``x``, picked with a fixed seed (calibration is repeatable)."""
    flat = x.detach().flatten().float()
    if flat.numel() <= size:
        return flat.clone()
    generator = torch.Generator().manual_seed(seed)
    return flat[torch.randint(0, flat.numel(), (size,), generator=generator)]


class Observer(ABC):
    """Chooses ``(low, high)`` from the observed min/max and a sample of the values.

    >>> values = torch.linspace(-1.0, 3.0, 1000)
    >>> low, high = values.min(), values.max()
    >>> observer_for("minmax").choose(low, high, values, zero_point_zero=False)
    (tensor(-1.), tensor(3.))
    >>> low_mse, high_mse = observer_for("mse").choose(low, high, values, zero_point_zero=False)
    """

    keeps_samples: ClassVar[bool] = True

    @abstractmethod
    def choose(
        self, low: torch.Tensor, high: torch.Tensor, values: torch.Tensor, *, zero_point_zero: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class MinMaxObserver(Observer):
    """The whole observed range."""

    keeps_samples = False

    def choose(
        self, low: torch.Tensor, high: torch.Tensor, values: torch.Tensor, *, zero_point_zero: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return low, high


class PercentileObserver(Observer):
    """The ``percentile`` and ``100 - percentile`` quantiles of the values."""

    def __init__(self, percentile: float = 99.99) -> None:
        self.percentile = percentile

    def choose(
        self, low: torch.Tensor, high: torch.Tensor, values: torch.Tensor, *, zero_point_zero: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.percentile / 100.0
        return (
            torch.quantile(values, 1.0 - q).reshape(()),
            torch.quantile(values, q).reshape(()),
        )


def _affine_range(
    low: torch.Tensor, high: torch.Tensor, zero_point_zero: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    return (torch.zeros_like(low) if zero_point_zero else low), high


class MSEObserver(Observer):
    """The clipping of the observed range with the least squared quantization error."""

    def choose(
        self, low: torch.Tensor, high: torch.Tensor, values: torch.Tensor, *, zero_point_zero: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = _affine_range(low, high, zero_point_zero)
        best = (affine_fake_quant_error(values, low, high), low, high)
        for ratio in _RATIOS:
            error = affine_fake_quant_error(values, low * ratio, high * ratio)
            if error < best[0]:
                best = (error, low * ratio, high * ratio)
        return best[1], best[2]


class EntropyObserver(Observer):
    """TensorRT's entropy calibration over an affine range: one 2048-bin histogram of the
    observed range; for each clipping ratio the reference P is the bins inside (the
    clipped mass folded into the edge bins) and Q is the same bins without the clipped
    mass, merged into 255 levels and spread evenly over each level's non-empty bins. The
    range with the least KL(P || Q) wins; clipping much mass costs, as it should."""

    def choose(
        self, low: torch.Tensor, high: torch.Tensor, values: torch.Tensor, *, zero_point_zero: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = _affine_range(low, high, zero_point_zero)
        span = float(high - low)
        if span <= 1e-12:
            return low, high
        hist = torch.histc(values, bins=BINS, min=float(low), max=float(high)).double()
        width = span / BINS
        best = (float("inf"), low, high)
        for ratio in _RATIOS:
            first = round(float(low) * (ratio - 1) / width)  # low * ratio, in bins from low
            last = BINS - round(float(high) * (1 - ratio) / width)
            if last - first < 255:
                continue
            kl = _clipped_kl(hist, first, last)
            if kl < best[0]:
                best = (kl, low + first * width, low + last * width)
        return (
            torch.as_tensor(best[1], dtype=low.dtype).reshape(()),
            torch.as_tensor(best[2], dtype=high.dtype).reshape(()),
        )


def _clipped_kl(hist: torch.Tensor, first: int, last: int) -> float:
    inside = hist[first:last]
    p = inside.clone()
    p[0] += hist[:first].sum()
    p[-1] += hist[last:].sum()
    level = torch.arange(len(inside)) * 255 // len(inside)
    level_sum = torch.zeros(255, dtype=torch.float64).index_add_(0, level, inside)
    level_count = torch.zeros(255, dtype=torch.float64).index_add_(0, level, (inside > 0).double())
    q = torch.where(
        inside > 0, level_sum[level] / level_count[level].clamp(min=1.0), torch.zeros(1)
    )
    p, q = p / p.sum(), q / max(float(q.sum()), 1e-12)
    mask = p > 0
    return float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())


def observer_for(method: CalibrationMethod, *, percentile: float = 99.99) -> Observer:
    """The observer that implements calibration ``method``."""
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile)
    if method == "mse":
        return MSEObserver()
    if method == "entropy":
        return EntropyObserver()
    raise ValueError(f"calibration method {method!r}: expected minmax, percentile, mse or entropy")
