"""Static int8 quantization shared by the ``quantize`` (PTQ) and ``qat`` passes: choose
the float layers (exclusions, mixed precision), prepare, calibrate, record."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from compresskit.configs import PassConfig
from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.quantization.latency_plan import LatencyPrecisionConfig, plan_by_latency
from compresskit.quantization.modules import (
    CalibrationMethod,
    activation_quantizers,
    calibrate_,
    quant_layers,
)
from compresskit.quantization.observers import CALIBRATION_METHODS
from compresskit.quantization.prepare import prepare
from compresskit.quantization.sensitivity import (
    Metric,
    MixedPrecisionConfig,
    batch_outputs,
    plan_mixed_precision,
    relative_error,
)

SUPPORTED_BITS = 8


class StaticQuantConfig(PassConfig):
    """Settings every static int8 pass shares."""

    calibration: CalibrationMethod | Literal["auto"] = Field(
        default="minmax",
        description="how observed activations become ranges; auto: each method is tried on "
        "the calibration data and the one whose int8 outputs stay closest to the float "
        "model's is used (outlier-heavy activations, as in BERT, can lose to clipping)",
    )
    percentile: float = Field(
        default=99.99, gt=50, lt=100, description="for calibration: percentile"
    )
    calibration_batches: int = Field(default=8, ge=1, description="batches of 32 samples")
    exclude: list[str] = Field(
        default_factory=list, description="module-name patterns (fnmatch) kept in float"
    )
    bits: int = Field(default=8, description="weight and activation bits; int8 kernels take 8")
    scheme: Literal["u8s8-per-channel"] = Field(
        default="u8s8-per-channel",
        description="uint8 per-tensor activations, int8 symmetric per-channel weights: the "
        "scheme ONNX Runtime fuses into QLinearConv / QGemm on x86",
    )
    mixed_precision: MixedPrecisionConfig | None = Field(
        default=None, description="keep the most sensitive layers float under a budget"
    )
    precision_by_latency: LatencyPrecisionConfig | None = Field(
        default=None,
        description="keep layers (or blocks) float where int8 is not measured faster on the "
        "target; each float layer's cause is recorded",
    )
    integer_residuals: bool = Field(
        default=True,
        description="residual adds and concatenations between int8 layers take int8 inputs "
        "(ONNX Runtime's QLinearAdd / QLinearConcat); needs a model torch.fx traces",
    )

    @field_validator("bits")
    @classmethod
    def _int8_only(cls, bits: int) -> int:
        if bits != SUPPORTED_BITS:
            raise ValueError(
                f"bits {bits} is not supported: ONNX Runtime's integer kernels take 8 bits; "
                "use bits: 8, or the weight_only pass (nf4/fp4) for 4-bit weights"
            )
        return bits


def calibration_batches(ctx: Context, count: int, what: str) -> list[list[torch.Tensor]]:
    """Up to ``count`` calibration batches of 32, or a one-line error when there are none."""
    try:
        loader = ctx.data.loader("calibration", batch_size=32)
        batches = [list(b) for b in itertools.islice(loader, count)]
    except (TypeError, ValueError) as error:
        raise CompressKitError(
            f"{what}: cannot read the calibration split ({error}); give calibration data"
        ) from None
    if not batches or len(batches[0][0]) == 0:
        raise CompressKitError(f"{what}: the calibration split is empty; give more data")
    return batches


def configure_calibration(model: nn.Module, config: StaticQuantConfig) -> None:
    if config.calibration == "auto":
        raise ValueError("resolve calibration 'auto' with choose_calibration first")
    for quantizer in activation_quantizers(model):
        quantizer.method = config.calibration
        quantizer.percentile = config.percentile


def choose_calibration(
    model: nn.Module,
    batches: list[list[torch.Tensor]],
    config: StaticQuantConfig,
    *,
    exclude: list[str],
) -> tuple[CalibrationMethod, dict[str, float]]:
    """The calibration method whose int8 copy of ``model`` (``model`` is untouched) has the
    least relative squared output error against the float model on ``batches``, and each
    method's error. Ties go to the earlier method of ``CALIBRATION_METHODS``."""
    reference = batch_outputs(model.eval(), batches)
    errors: dict[str, float] = {}
    for method in CALIBRATION_METHODS:
        candidate = copy.deepcopy(model)
        prepare(candidate, exclude=exclude, residuals=config.integer_residuals)
        configure_calibration(candidate, config.model_copy(update={"calibration": method}))
        calibrate_(candidate, batches)
        errors[method] = relative_error(batch_outputs(candidate, batches), reference)
    best = min(CALIBRATION_METHODS, key=errors.__getitem__)
    return best, errors


def precision_metric(ctx: Context, *, what: str) -> Metric:
    """What ``mixed_precision`` budgets on this task: cosine to the float model for an
    embedder, top-1 accuracy on the labels for a labelled task; other unlabelled tasks
    (fidelity) are refused."""
    if ctx.task.monitors[0] == "cosine":
        return "cosine"
    ctx.task.require_labels(
        f"{what}: mixed_precision (it budgets a calibration accuracy drop)",
        "remove mixed_precision and keep sensitive layers float with exclude",
    )
    return "accuracy"


def check_mixed_precision(config: StaticQuantConfig, ctx: Context, *, what: str) -> None:
    """Refuse, before anything runs, a ``mixed_precision`` budget the task cannot measure."""
    if config.mixed_precision is not None:
        config.mixed_precision.budget(precision_metric(ctx, what=what))


def quantize_static(
    model: nn.Module, ctx: Context, config: StaticQuantConfig, *, what: str
) -> dict[str, Any]:
    """Prepare and calibrate ``model`` in place; returns the facts to record."""
    batches = calibration_batches(ctx, config.calibration_batches, what)
    exclude = list(config.exclude)
    records: dict[str, Any] = {}
    torch.manual_seed(ctx.seed)
    if config.calibration == "auto":
        method, errors = choose_calibration(model, batches, config, exclude=exclude)
        records["calibration_errors"] = {k: round(v, 6) for k, v in errors.items()}
        config = config.model_copy(update={"calibration": method})
    if config.mixed_precision is not None:
        plan = plan_mixed_precision(
            model,
            batches,
            exclude=exclude,
            config=config.mixed_precision,
            configure=lambda m: configure_calibration(m, config),
            residuals=config.integer_residuals,
            metric=precision_metric(ctx, what=what),
        )
        exclude += list(plan.float_layers)
        records["sensitivity"] = {k: round(v, 6) for k, v in plan.sensitivity.items()}
        records["float_layer_reasons"] = plan.float_layers
        records[f"calibration_{plan.metric}_drop"] = round(plan.drop, 4)
        records["float_mac_fraction"] = round(plan.float_macs, 4)
    causes = {name: "sensitivity" for name in records.get("float_layer_reasons", {})}
    if config.precision_by_latency is not None:
        speed, records["latency_plan"] = _latency_plan(
            model, ctx, config, config.precision_by_latency, batches, exclude
        )
        exclude += list(speed)
        causes |= {name: "speed" for name in speed}
        records["float_layer_reasons"] = {**records.get("float_layer_reasons", {}), **speed}
    preparation = prepare(model, exclude=exclude, residuals=config.integer_residuals)
    if not preparation.quantized:
        raise CompressKitError(
            f"{what}: no Conv2d or Linear layer to quantize"
            + (f" (all excluded by {exclude})" if preparation.excluded else "")
        )
    configure_calibration(model, config)
    unused: list[str] = []
    seen = calibrate_(model, batches, unused=unused)
    if unused:
        records["unused_layers"] = unused  # never called by forward: left float
    if not quant_layers(model):
        raise CompressKitError(f"{what}: the forward calls none of the layers it could quantize")
    records.update(
        quantized_layers=len(preparation.quantized) - len(unused),
        float_layers=preparation.excluded,
        calibration=config.calibration,
        calibration_samples=seen,
        notes=preparation.notes,
    )
    if preparation.excluded:
        records["float_causes"] = {
            name: causes.get(name, "excluded") for name in preparation.excluded
        }
    residuals = preparation.residuals
    if residuals is not None:
        records["integer_residuals"] = residuals.integer
        records["float_residuals"] = residuals.floating
        records["notes"] = [*preparation.notes, *residuals.notes]
    return records


def _latency_plan(
    model: nn.Module,
    ctx: Context,
    config: StaticQuantConfig,
    latency: LatencyPrecisionConfig,
    batches: list[list[torch.Tensor]],
    exclude: list[str],
) -> tuple[dict[str, str], dict[str, Any]]:
    """The layers to keep float for speed (and why), and the plan's record."""
    if ctx.profile_probe is None:
        raise CompressKitError(
            "precision_by_latency needs a profile probe: run the pass through compresskit.run, "
            "or give its Context profile_probe=compresskit.bench.probe.measure_costs"
        )
    plan = plan_by_latency(
        model,
        batches,
        exclude=exclude,
        config=latency,
        probe=ctx.profile_probe,
        example_inputs=ctx.example_inputs,
        dynamic_sequence=ctx.data.dynamic_sequence,
        configure=lambda m: configure_calibration(m, config),
        residuals=config.integer_residuals,
    )
    layers = {layer for unit in plan.units for layer in unit.layers}
    if layers and set(plan.float_layers) >= layers:
        raise CompressKitError(
            f"precision_by_latency: no layer runs faster in int8 than in float on "
            f"{latency.export_target} at batch {latency.batch} (measured), so nothing is left "
            "to quantize; keep the float model, or measure at another batch or target"
        )
    record = {
        "target": latency.export_target,
        "batch": latency.batch,
        "granularity": latency.granularity,
        "min_gain": latency.min_gain,
        "units": [
            {"unit": u.unit, "layers": list(u.layers), "costs_ms": u.costs_ms, "chosen": u.chosen}
            for u in plan.units
        ],
        "float_p50_ms": plan.float_p50_ms,
        "int8_p50_ms": plan.int8_p50_ms,
        "mixed_p50_ms": plan.mixed_p50_ms,
        "accepted": plan.accepted,
        "note": plan.note,
    }
    return plan.float_layers, record
