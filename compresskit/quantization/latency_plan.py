"""Precision by measured latency: keep a layer (or a block) float where int8 is not faster
on the target.

Measuring: the float model and its all-int8 version are exported and profiled in one
benchmark worker (the context's profile probe), and each unit's kernel time is read per
torch module: a layer with its own quantize / dequantize nodes, or a block with its
residual adds. Deciding (:func:`choose_by_latency`, generic over precisions: int4 vs
int8 vs float weights would use it the same way): a unit runs in the most accurate
precision unless a lower one is measured at least ``min_gain`` faster. Checking: the
mixed model is timed against the all-int8 one, and the plan is kept only when it is
faster end to end (the boundaries between float and int8 cost conversions that no
per-unit time shows). Layers kept float for speed never cost accuracy, so the accuracy
budget (``mixed_precision``) still holds.

Example::

    plan = plan_by_latency(model, batches, exclude=[], config=config, probe=probe,
                           example_inputs=example)
    plan.float_layers
    # -> {'layer1.conv1': 'speed: int8 0.41 ms vs float 0.30 ms on cpu-ort b32'}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compresskit.configs import PassConfig
from compresskit.context import ProfileProbe
from compresskit.errors import CompressKitError
from compresskit.quantization.modules import calibrate_
from compresskit.quantization.prepare import prepare

Batches = Sequence[Sequence[torch.Tensor]]
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class LatencyPrecisionConfig(PassConfig):
    """Keep units float where int8 is not measured faster on ``export_target``."""

    export_target: str = Field(default="cpu-ort", description="export target to measure on")
    batch: int = Field(default=32, ge=1)
    granularity: Literal["layer", "block"] = Field(
        default="layer",
        description="decide per conv/linear layer, or per block (the module holding the "
        "layer; containers such as Sequential count to the module that holds them)",
    )
    min_gain: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="a unit stays int8 only where int8 cuts its measured time by this fraction",
    )
    measure_seconds: float = Field(default=1.0, gt=0, description="timing per model")
    verify: bool = Field(
        default=True,
        description="time the mixed model against all-int8 and keep the plan only if faster",
    )


@dataclass(frozen=True)
class UnitChoice:
    """One unit's measured time per precision (ms per call), and the precision chosen."""

    unit: str
    layers: tuple[str, ...]
    costs_ms: dict[str, float]
    chosen: str


def choose_by_latency(
    costs: Mapping[str, Mapping[str, float]], *, order: Sequence[str], min_gain: float
) -> dict[str, str]:
    """For each unit, its precision: the first of ``order`` (most accurate first, e.g.
    ``["float", "int8", "int4"]``) that was measured, replaced by each later one that is
    measured at least ``min_gain`` faster than the choice so far."""
    chosen = {}
    for unit, measured in costs.items():
        options = [option for option in order if option in measured]
        if not options:
            continue
        best = options[0]
        for option in options[1:]:
            if measured[option] <= measured[best] * (1 - min_gain):
                best = option
        chosen[unit] = best
    return chosen


@dataclass
class LatencyPlan:
    """What was measured and decided."""

    units: list[UnitChoice] = field(default_factory=list)
    float_layers: dict[str, str] = field(default_factory=dict)  # layer -> why
    float_p50_ms: float | None = None
    int8_p50_ms: float | None = None
    mixed_p50_ms: float | None = None
    accepted: bool = True
    note: str | None = None


def block_of(model: nn.Module, layer: str) -> str:
    """The module holding ``layer``, containers skipped (a Sequential's layers count to
    the module that holds it); a layer of the model itself is its own block."""
    parts = layer.split(".")[:-1]
    while parts and isinstance(model.get_submodule(".".join(parts)), _CONTAINERS):
        if len(parts) == 1:
            return parts[0]  # a top-level container (a stem) is the block
        parts = parts[:-1]
    return ".".join(parts) or layer


def plan_by_latency(
    model: nn.Module,
    batches: Batches,
    *,
    exclude: list[str],
    config: LatencyPrecisionConfig,
    probe: ProfileProbe,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_sequence: bool = False,
    configure: Callable[[nn.Module], None] | None = None,
    residuals: bool = True,
) -> LatencyPlan:
    """Measure ``model`` (untouched) float and all-int8, choose the units to keep float,
    and check the mixed model end to end."""
    model.eval()

    def quantized_copy(keep_float: list[str]) -> tuple[nn.Module, list[str]]:
        candidate = copy.deepcopy(model)
        preparation = prepare(candidate, exclude=[*exclude, *keep_float], residuals=residuals)
        if configure is not None:
            configure(candidate)
        calibrate_(candidate, batches[:1])  # ranges do not change the kernels' speed
        return candidate.eval(), preparation.quantized

    def measure(models: list[nn.Module]) -> list:
        return probe(
            models,
            example_inputs,
            target=config.export_target,
            batch=config.batch,
            seconds=config.measure_seconds,
            dynamic_sequence=dynamic_sequence,
        )

    int8_model, layers = quantized_copy([])
    float_cost, int8_cost = measure([model, int8_model])
    if not float_cost.modules or not int8_cost.modules:
        raise CompressKitError(
            f"precision_by_latency: {config.export_target} gave no per-module profile; "
            "measure on an ONNX Runtime target"
        )
    plan = LatencyPlan(float_p50_ms=float_cost.p50_ms, int8_p50_ms=int8_cost.p50_ms)
    units: dict[str, list[str]] = {}
    for layer in layers:
        unit = layer if config.granularity == "layer" else block_of(model, layer)
        units.setdefault(unit, []).append(layer)
    costs = {
        unit: {"float": float_cost.cost_of(unit), "int8": int8_cost.cost_of(unit)} for unit in units
    }
    chosen = choose_by_latency(costs, order=["float", "int8"], min_gain=config.min_gain)
    where = f"on {config.export_target} b{config.batch}"
    for unit, members in units.items():
        plan.units.append(UnitChoice(unit, tuple(members), dict(costs[unit]), chosen[unit]))
        if chosen[unit] == "float":
            shown = "" if members == [unit] else f" (block {unit})"
            for layer in members:
                plan.float_layers[layer] = (
                    f"speed{shown}: int8 {costs[unit]['int8']:.3f} ms vs float "
                    f"{costs[unit]['float']:.3f} ms {where}"
                )
    if plan.float_layers and config.verify:
        mixed, _ = quantized_copy(list(plan.float_layers))
        int8_again, mixed_cost = measure([int8_model, mixed])
        plan.int8_p50_ms, plan.mixed_p50_ms = int8_again.p50_ms, mixed_cost.p50_ms
        if mixed_cost.p50_ms >= int8_again.p50_ms:
            plan.accepted = False
            plan.note = (
                f"the mixed model measured {mixed_cost.p50_ms:.3f} ms against "
                f"{int8_again.p50_ms:.3f} ms all-int8 {where}: kept all-int8"
            )
            plan.float_layers = {}
    return plan
