"""Kernel-friendly widths: the channel rounding chosen by measuring it on the target.

Kernels run fastest at some widths (ONNX Runtime's NCHWc convolutions work in blocks of
8 or 16 channels on AVX2 / AVX-512; int8 GEMMs pack 4 or 16): which rounding of the
pruned widths is fastest is measured, not assumed. Each candidate rounding prunes the
model, down (fewer channels than the ratio asks) and up (a few more, to the next
multiple), every candidate is timed interleaved in one benchmark worker (the context's
profile probe), and the fastest whose MACs stay within ``max_mac_change`` of the least
rounded one wins (rounding down trades capacity for speed; rounding up costs MACs,
which the timing weighs).

Example::

    rounding, record = sweep_round_to(prune_at, config=WidthSweepConfig(), probe=probe,
                                      example_inputs=example, what="prune")
    rounding.round_to, rounding.up
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
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
    round_up: bool = Field(
        default=True,
        description="also try each rounding up: keep up to round_to - 1 more channels per "
        "layer than the ratio asks (per-layer ratios only: not with global_ranking or a "
        "size target)",
    )

    @field_validator("candidates")
    @classmethod
    def _positive_and_distinct(cls, candidates: list[int]) -> list[int]:
        if not candidates or any(c < 1 for c in candidates):
            raise ValueError(f"candidates {candidates}: give roundings of at least 1")
        if len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates {candidates}: each rounding once")
        return sorted(candidates)


@dataclass(frozen=True)
class Rounding:
    """Widths kept a multiple of ``round_to`` (None: as the ratio gives them), rounded
    down (fewer channels) or ``up`` (more)."""

    round_to: int | None = None
    up: bool = False


def kept_channels(width: int, ratio: float, rounding: Rounding) -> int:
    """The channels of a ``width``-wide layer that pruning at ``ratio`` keeps, rounded as
    ``rounding`` says (torch-pruning's count, ``int(width * (1 - ratio))``, rounds down).

    >>> kept_channels(64, 0.7, Rounding(8)), kept_channels(64, 0.7, Rounding(8, up=True))
    (16, 24)
    """
    kept = int(width * (1 - ratio))
    step = rounding.round_to
    if not step:
        return kept
    return min(width, math.ceil(kept / step) * step) if rounding.up else kept - kept % step


def rounded_ratio(width: int, ratio: float, rounding: Rounding) -> float:
    """The ratio at which torch-pruning (which rounds the kept channels down) keeps
    ``width * (1 - ratio)`` channels rounded the ``rounding`` way.

    >>> rounded_ratio(64, 0.7, Rounding(8, up=True)) == 1 - 24.5 / 64
    True
    """
    if not (rounding.up and rounding.round_to):
        return ratio
    kept = kept_channels(width, ratio, rounding)
    # Half a channel of slack: int(width * (1 - r)) must land on `kept`, not just below it.
    return 0.0 if kept >= width else 1 - (kept + 0.5) / width


def sweep_round_to(
    prune: Callable[[Rounding], nn.Module | None],
    *,
    config: WidthSweepConfig,
    probe: ProfileProbe | None,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_sequence: bool = False,
    what: str,
) -> tuple[Rounding, dict[str, Any]]:
    """The rounding to prune with and the sweep's record. ``prune(rounding)`` prunes a
    copy of the model with its widths rounded so, or returns None where it cannot."""
    if probe is None:
        raise CompressKitError(
            f"{what}: round_to auto needs a profile probe: run the pass through "
            "compresskit.run, or give its Context profile_probe=compresskit.bench.probe."
            "measure_costs"
        )
    pruned: dict[Rounding, nn.Module] = {}
    skipped: dict[Rounding, str] = {}
    for step in config.candidates:
        for up in (False, True) if config.round_up and step > 1 else (False,):
            rounding = Rounding(None if step == 1 else step, up)
            try:
                model = prune(rounding)
            except LayerEmptiedError:
                skipped[rounding] = "would remove every channel of a layer"
                continue
            if model is None:
                skipped[rounding] = "needs per-layer ratios (no global ranking or size target)"
            else:
                pruned[rounding] = model
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
    # The least rounded candidate measures what the ratio asked for.
    least = min((r for r in pruned if not r.up), key=lambda r: r.round_to or 1, default=None)
    floor = (1 - config.max_mac_change) * macs[least] if least else 0.0
    eligible = [r for r in pruned if macs[r] >= floor]
    chosen = min(eligible, key=lambda r: (p50[r], -macs[r]))
    rows: list[dict[str, Any]] = [
        {
            "round_to": r.round_to or 1,
            "up": r.up,
            "macs": macs[r],
            "p50_ms": p50[r],
            "eligible": r in eligible,
            "widths": sorted(set(prunable_widths(pruned[r]).values())),
        }
        for r in pruned
    ]
    rows += [{"round_to": r.round_to or 1, "up": r.up, "note": why} for r, why in skipped.items()]
    record = {
        "target": config.export_target,
        "batch": config.batch,
        "max_mac_change": config.max_mac_change,
        "candidates": sorted(rows, key=lambda row: (int(row["round_to"]), row["up"])),
        "chosen": chosen.round_to or 1,
        "chosen_up": chosen.up,
    }
    return chosen, record
