"""Mixed precision by sensitivity: measure, then decide which layers stay float.

Measuring: on a quantized copy of the model, each layer alone is switched to fake
quant (every other layer float) and its effect on the output is measured as the relative
squared error of the output against the float model. Deciding: the most sensitive layers
are kept float, one by one, while the fully quantized model (with those layers float)
loses more than its budget on the calibration split and the float layers stay within
``max_float_macs`` (a fraction of the model's conv/linear MACs). The budget is the task's:
``max_accuracy_drop`` (top-1 accuracy on the labels) for classifiers, ``max_cosine_drop``
(mean cosine to the float model's output, from 1) for embedders, which have no labels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compresskit.configs import PassConfig
from compresskit.errors import CompressKitError
from compresskit.quantization.modules import calibrate_, quant_layers, set_mode
from compresskit.quantization.prepare import prepare
from compresskit.tasks.embedding import sample_cosines

Batches = Sequence[Sequence[torch.Tensor]]


class MixedPrecisionConfig(PassConfig):
    """Budget for keeping the most quantization-sensitive layers in float."""

    max_accuracy_drop: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="stop keeping layers float once the calibration accuracy drop is within this",
    )
    max_float_macs: float = Field(
        default=0.25, gt=0, le=1, description="fraction of conv/linear MACs allowed in float"
    )
    max_cosine_drop: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="embedding tasks: stop keeping layers float once the mean cosine to the "
        "float model's output on calibration data is within this of 1",
    )
    max_float_layers: int | None = Field(default=None, ge=1)

    def budget(self, metric: Metric) -> float:
        """The drop allowed in ``metric``; one-line errors for a budget of the other task."""
        if metric == "cosine":
            if self.max_cosine_drop is None or "max_accuracy_drop" in self.model_fields_set:
                raise CompressKitError(
                    "mixed_precision: an embedder has no labels to measure accuracy on; "
                    "budget the cosine to the float model with max_cosine_drop (e.g. 0.003)"
                )
            return self.max_cosine_drop
        if self.max_cosine_drop is not None:
            raise CompressKitError(
                "mixed_precision: max_cosine_drop is for embedding tasks; budget a "
                "classifier with max_accuracy_drop"
            )
        return self.max_accuracy_drop


# What the plan's budget is measured in: top-1 accuracy on labels, or mean cosine to the
# float model's output.
Metric = Literal["accuracy", "cosine"]


@dataclass
class MixedPrecisionPlan:
    """What was measured and decided."""

    sensitivity: dict[str, float] = field(default_factory=dict)
    float_layers: dict[str, str] = field(default_factory=dict)  # name -> why
    metric: Metric = "accuracy"
    drop: float = 0.0  # of ``metric`` on calibration data, with the plan applied
    float_macs: float = 0.0


def layer_macs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """MACs of each Conv2d and Linear on ``example`` (by forward hooks)."""
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):

            def hook(mod: nn.Module, _: object, out: torch.Tensor, name: str = name) -> None:
                weight = mod.weight
                assert isinstance(weight, torch.Tensor)
                per_output = weight[0].numel()
                macs[name] = macs.get(name, 0) + out.numel() // len(out) * per_output

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    return macs


@torch.no_grad()
def batch_outputs(model: nn.Module, batches: Batches) -> list[torch.Tensor]:
    """The model's outputs on each ``(*inputs, label)`` batch."""
    return [model(*inputs) for *inputs, _ in batches]


def relative_error(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Squared error of ``outputs`` against ``reference``, relative to the reference's."""
    num = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, reference, strict=True))
    den = sum(float((r**2).sum()) for r in reference) or 1.0
    return num / den


def _accuracy(outputs: list[torch.Tensor], batches: Batches) -> float:
    correct = sum(int((o.argmax(-1) == b[-1]).sum()) for o, b in zip(outputs, batches, strict=True))
    return correct / max(1, sum(len(b[-1]) for b in batches))


def _cosine(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    rows = [sample_cosines(o, r) for o, r in zip(outputs, reference, strict=True)]
    return float(torch.cat(rows).mean())


def plan_mixed_precision(
    model: nn.Module,
    batches: Batches,
    *,
    exclude: list[str],
    config: MixedPrecisionConfig,
    configure: Callable[[nn.Module], None] | None = None,
    residuals: bool = True,
    metric: Metric = "accuracy",
) -> MixedPrecisionPlan:
    """Measure each layer's sensitivity on a quantized copy of ``model`` (untouched) and
    choose the layers to keep float. ``configure(model)`` sets calibration options;
    ``residuals``: int8 residual adds, as the final model will have them; ``metric``: what
    the budget is measured in (the task's)."""
    model.eval()
    budget = config.budget(metric)
    reference = batch_outputs(model, batches)

    def quality(outputs: list[torch.Tensor]) -> float:
        return _accuracy(outputs, batches) if metric == "accuracy" else _cosine(outputs, reference)

    float_quality = quality(reference)
    macs = layer_macs(model, tuple(batches[0][:-1]))
    total_macs = sum(macs.values()) or 1

    def quantized_copy(keep_float: list[str]) -> nn.Module:
        candidate = copy.deepcopy(model)
        prepare(candidate, exclude=[*exclude, *keep_float], residuals=residuals)
        if configure is not None:
            configure(candidate)
        calibrate_(candidate, batches)
        return candidate.eval()

    probe = quantized_copy([])
    names = {id(m): n for n, m in probe.named_modules()}
    plan = MixedPrecisionPlan(metric=metric)
    for layer in quant_layers(probe):
        set_mode(probe, "float")
        set_mode(layer, "quant")
        plan.sensitivity[names[id(layer)]] = relative_error(
            batch_outputs(probe, batches), reference
        )
    set_mode(probe, "quant")
    drop = float_quality - quality(batch_outputs(probe, batches))
    ranked = sorted(plan.sensitivity, key=plan.sensitivity.__getitem__, reverse=True)
    kept: list[str] = []
    for rank, name in enumerate(ranked, start=1):
        if drop <= budget:
            break
        if config.max_float_layers is not None and len(kept) >= config.max_float_layers:
            break
        share = sum(macs.get(n, 0) for n in [*kept, name]) / total_macs
        if share > config.max_float_macs:
            continue  # too big to keep float; a smaller, less sensitive layer may still fit
        before = drop
        kept.append(name)
        drop = float_quality - quality(batch_outputs(quantized_copy(kept), batches))
        plan.float_layers[name] = (
            f"sensitivity {plan.sensitivity[name]:.3g} (rank {rank} of {len(ranked)}); "
            f"calibration {metric} drop {_drop(metric, before)} -> {_drop(metric, drop)} "
            "when kept float"
        )
    plan.drop = drop
    plan.float_macs = sum(macs.get(n, 0) for n in kept) / total_macs
    return plan


def _drop(metric: Metric, value: float) -> str:
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.4f}"
