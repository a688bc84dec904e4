"""From what an activation quantizer observed to its range, by its calibration method.

The methods themselves are the observers of :mod:`compresskit.quantization.observers`;
this module reads a quantizer's settings and hands its observations to the right one.
"""

from __future__ import annotations

from typing import Protocol

import torch

from compresskit.quantization.observers import CalibrationMethod, observer_for


class ObservedQuantizer(Protocol):
    """What :func:`choose_range` reads of a quantizer (``ActQuant`` is one)."""

    min_val: torch.Tensor
    max_val: torch.Tensor
    method: CalibrationMethod
    percentile: float
    force_zero_point_zero: bool


@torch.no_grad()
def choose_range(
    quantizer: ObservedQuantizer, samples: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) for ``quantizer`` by its method; min/max when it kept no samples."""
    low, high = quantizer.min_val.clone(), quantizer.max_val.clone()
    observer = observer_for(quantizer.method, percentile=quantizer.percentile)
    if not observer.keeps_samples or not samples:
        return low, high
    return observer.choose(
        low, high, torch.cat(samples), zero_point_zero=quantizer.force_zero_point_zero
    )
