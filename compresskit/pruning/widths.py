"""Kernel-friendly widths: the channel rounding chosen by measuring it on the target.

Kernels run fastest at some widths (ONNX Runtime's NCHWc convolutions work in blocks of
8 or 16 channels on AVX2 / AVX-512; int8 GEMMs pack 4 or 16): which rounding of the
pruned widths is fastest is measured, not assumed. Each candidate rounding prunes the
model, every candidate is timed interleaved in one benchmark worker (the context's
profile probe), and the fastest whose MACs stay within ``max_mac_change`` of the least
rounded one wins (rounding keeps fewer channels, so it trades capacity for speed).

Example::

    round_to, record = sweep_round_to(prune_at, config=WidthSweepConfig(), probe=probe,
                                      example_inputs=example, what="prune")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from compresskit.context import ProfileProbe
from compresskit.errors import CompressKitError
from compresskit.models.size import count_macs
from compresskit.pruning.scope import prunable_widths
from compresskit.pruning.sizing import LayerEmptiedError


class WidthSweepConfig(BaseModel):
    """How ``round_to: auto`` measures: the roundings tried, where, and the MAC budget."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    candidates: list[int] = Field(
        default_factory=lambda: [1, 4, 8, 16], description="roundings tried (1: none)"
    )
    export_target: str = Field(default="cpu-ort", description="export target to measure on")
    batch: int = Field(default=32, ge=1)
    max_mac_change: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="a rounding may remove at most this fraction of the least rounded "
        "candidate's MACs",
    )
    measure_seconds: float = Field(default=0.5, gt=0, description="timing per candidate")

    @field_validator("candidates")
    @classmethod
    def _positive_and_distinct(cls, candidates: list[int]) -> list[int]:
        if not candidates or any(c < 1 for c in candidates):
            raise ValueError(f"candidates {candidates}: give roundings of at least 1")
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates {candidates}: each rounding once")
        return sorted(candidates)


def sweep_round_to(
    prune: Callable[[int | None], nn.Module],
    *,
    config: WidthSweepConfig,
    probe: ProfileProbe | None,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_sequence: bool = False,
    what: str,
) -> tuple[int | None, dict[str, Any]]:
    """The rounding to prune with (None: none) and the sweep's record. ``prune(r)``
    prunes a copy of the model with widths rounded to multiples of ``r``."""
    if probe is None:
        raise CompressKitError(
            f"{what}: round_to auto needs a profile probe: run the pass through "
            "compresskit.run, or give its Context profile_probe=compresskit.bench.probe."
            "measure_costs"
        )
    pruned: dict[int, nn.Module] = {}
    skipped: dict[int, str] = {}
    for rounding in config.candidates:
        try:
            pruned[rounding] = prune(None if rounding == 1 else rounding)
        except LayerEmptiedError:
            skipped[rounding] = "would remove every channel of a layer"
    if not pruned:
        raise CompressKitError(
            f"{what}: every round_to candidate ({config.candidates}) would remove every "
            "channel of a layer; lower the ratio or give smaller candidates"
        )
    macs = {r: count_macs(model, example_inputs) for r, model in pruned.items()}
    costs = probe(
        list(pruned.values()),
        example_inputs,
        target=config.export_target,
        batch=config.batch,
        seconds=config.measure_seconds,
        dynamic_sequence=dynamic_sequence,
    )
    p50 = {r: cost.p50_ms for r, cost in zip(pruned, costs, strict=True)}
    floor = (1 - config.max_mac_change) * max(macs.values())
    eligible = [r for r in pruned if macs[r] >= floor]
    chosen = min(eligible, key=lambda r: (p50[r], -macs[r]))
    rows: list[dict[str, Any]] = [
        {
            "round_to": r,
            "macs": macs[r],
            "p50_ms": p50[r],
            "eligible": r in eligible,
            "widths": sorted(set(prunable_widths(pruned[r]).values())),
        }
        for r in pruned
    ]
    rows += [{"round_to": r, "note": why} for r, why in skipped.items()]
    record = {
        "target": config.export_target,
        "batch": config.batch,
        "max_mac_change": config.max_mac_change,
        "candidates": sorted(rows, key=lambda row: int(row["round_to"])),
        "chosen": chosen,
    }
    return (None if chosen == 1 else chosen), record
