"""How much to prune: a target on remaining MACs, params, or measured latency of the
exported model, and the searches that reach it.

A latency target is met by measuring the real thing: each candidate is exported to ONNX
and timed on the named export target, never estimated from MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compresskit.context import LatencyProbe
from compresskit.errors import CompressKitError
from compresskit.models.size import count_macs, count_params

# The largest fraction of any layer a search may remove.
MAX_RATIO = 0.95


class LayerEmptiedError(CompressKitError):
    """A ratio (or rounding) would remove every channel of a layer."""


class SizeTarget(BaseModel):
    """Exactly one of: remaining ``macs`` or ``params`` fraction, or a ``latency_ms`` p50 at
    ``batch`` on ``export_target``.

    >>> half = SizeTarget(macs=0.5)                   # half the MACs remain
    >>> fast = SizeTarget(latency_ms=2.0, export_target="cpu-ort", batch=1)
    >>> half.macs, fast.latency_ms
    (0.5, 2.0)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    macs: float | None = Field(default=None, gt=0, lt=1, description="remaining MACs fraction")
    params: float | None = Field(default=None, gt=0, lt=1, description="remaining params fraction")
    latency_ms: float | None = Field(default=None, gt=0, description="p50 latency to reach")
    export_target: str = Field(
        default="cpu-ort", description="export target (export/*.yaml) the latency is measured on"
    )
    batch: int = Field(default=1, ge=1)
    measure_seconds: float = Field(default=0.5, gt=0, description="timing per candidate")
    step: float = Field(
        default=0.1, gt=0, lt=1, description="latency search: ratio added per candidate"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SizeTarget:
        given = [k for k in ("macs", "params", "latency_ms") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of macs, params, latency_ms (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> Literal["macs", "params", "latency"]:
        if self.macs is not None:
            return "macs"
        return "params" if self.params is not None else "latency"

    def describe(self) -> str:
        if self.kind == "latency":
            return f"p50 <= {self.latency_ms} ms at batch {self.batch} on {self.export_target}"
        return f"{self.kind} <= {getattr(self, self.kind):.0%} of the original"


@dataclass
class Meter:
    """Measures the quantity a target is about (MACs, params or p50 ms) on a model; latency
    through the context's probe (export and time on the target)."""

    target: SizeTarget
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_sequence: bool = False
    probe: LatencyProbe | None = None

    def __post_init__(self) -> None:
        if self.target.kind == "latency" and self.probe is None:
            raise CompressKitError(
                "a latency target needs a latency probe: run the pass through compresskit.run, "
                "or give its Context latency_probe=compresskit.bench.probe.measure_p50"
            )

    def __call__(self, model: nn.Module) -> float:
        if self.target.kind == "macs":
            return float(count_macs(model, self.example_inputs))
        if self.target.kind == "params":
            return float(count_params(model))
        return self.latency(model)

    def latency(self, model: nn.Module) -> float:
        """p50 ms of ``model`` on the target (exported to ONNX for an ORT target)."""
        assert self.probe is not None
        return self.probe(
            model,
            self.example_inputs,
            target=self.target.export_target,
            batch=self.target.batch,
            seconds=self.target.measure_seconds,
            dynamic_sequence=self.dynamic_sequence,
        )

    def goal(self, original: float) -> float:
        """The final value to reach, given the value at the start of the pass."""
        if self.target.kind == "latency":
            assert self.target.latency_ms is not None
            return self.target.latency_ms
        return original * float(getattr(self.target, self.target.kind))


def step_goals(start: float, goal: float, steps: int) -> list[float]:
    """Geometric interpolation from ``start`` to ``goal`` in ``steps`` steps."""
    if goal >= start:
        return [goal] * steps
    return [start * (goal / start) ** ((i + 1) / steps) for i in range(steps)]


def bisect_ratio(
    prune: Callable[[float], nn.Module],
    metric: Callable[[nn.Module], float],
    goal: float,
    *,
    what: str,
    iterations: int = 6,
) -> tuple[float, nn.Module, float]:
    """The smallest ratio in (0, MAX_RATIO] whose pruned model has ``metric <= goal``.

    A coarse grid first (a ratio that would empty a layer counts as not reaching the goal,
    and torch-pruning may skip groups near the extremes, so the metric is only roughly
    monotone), then bisection between the last grid point that misses and the first that
    meets the goal. Returns ratio, model, metric."""
    grid = [round(0.1 * k, 2) for k in range(1, 10)] + [MAX_RATIO]
    lo, best = 0.0, None
    smallest = math.inf
    for ratio in grid:
        evaluated = _evaluate(prune, metric, ratio)
        if evaluated is not None:
            smallest = min(smallest, evaluated[1])
            if evaluated[1] <= goal:
                best = (ratio, *evaluated)
                break
        lo = ratio
    if best is None:
        raise CompressKitError(
            f"{what}: no ratio up to {MAX_RATIO:.0%} gets below {goal:,.0f} (smallest reached "
            f"{smallest:,.0f}); relax the target or stop ignoring so many layers"
        )
    hi = best[0]
    for _ in range(iterations):
        mid = (lo + hi) / 2
        evaluated = _evaluate(prune, metric, mid)
        if evaluated is not None and evaluated[1] <= goal:
            hi, best = mid, (mid, *evaluated)
        else:
            lo = mid
    return best


def _evaluate(
    prune: Callable[[float], nn.Module], metric: Callable[[nn.Module], float], ratio: float
) -> tuple[nn.Module, float] | None:
    try:
        model = prune(ratio)
    except LayerEmptiedError:
        return None
    return model, metric(model)


def scan_ratio(
    prune: Callable[[float], nn.Module],
    metric: Callable[[nn.Module], float],
    goal: float,
    *,
    step: float,
    what: str,
    log: Callable[[float, float], None],
) -> tuple[float, nn.Module, float]:
    """Try ratios ``step, 2*step, ...`` (each one measured, e.g. exported and timed) until
    ``metric <= goal``. Used where each evaluation is expensive and noisy."""
    ratios = [round(step * k, 6) for k in range(1, math.ceil(MAX_RATIO / step) + 1)]
    ratios = [min(r, MAX_RATIO) for r in ratios]
    value = math.inf
    for ratio in ratios:
        evaluated = _evaluate(prune, metric, ratio)
        if evaluated is None:
            break  # a layer would be emptied: larger ratios only empty more
        model, value = evaluated
        log(ratio, value)
        if value <= goal:
            return ratio, model, value
    raise CompressKitError(
        f"{what}: the most pruned candidate still measures {value:.3f} (goal {goal:.3f}); "
        "relax the target, prune other granularities too, or use another export target"
    )
