"""Iterative pruning: N steps, each pruned to an interpolated goal, with optional
fine-tuning (or distillation from the unpruned teacher) after each step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compresskit.context import Context
from compresskit.distill.losses import label_kd_loss
from compresskit.errors import CompressKitError
from compresskit.pruning.sizing import Meter, SizeTarget, bisect_ratio, scan_ratio, step_goals
from compresskit.training.loop import TrainConfig, train


class FinetuneConfig(BaseModel):
    """Training after each pruning step. ``alpha`` weighs the label loss; below 1 the rest
    is distillation from the context's teacher (the unpruned model by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1))
    alpha: float = Field(default=1.0, ge=0, le=1, description="weight of the label loss")
    temperature: float = Field(default=4.0, gt=0)


def step_ratio(ratio: float, steps: int) -> float:
    """The ratio each of ``steps`` steps removes so that ``ratio`` is removed in all."""
    return 1 - (1 - ratio) ** (1 / steps)


def scaled_ratio(configured: float, base: float, amount: float) -> float:
    """``configured`` moved the way ``amount`` moves ``base``, in keep-fraction log space:
    ``scaled_ratio(r, b, b) == r``; every layer keeps its share of the pruning."""
    if math.isclose(amount, base):
        return configured
    exponent = math.log(1 - amount) / math.log(1 - base)
    return 1 - (1 - configured) ** exponent


def finetune(model: nn.Module, ctx: Context, config: FinetuneConfig, *, what: str) -> dict:
    """Train ``model`` in place with labels and, when ``alpha < 1``, the teacher's logits."""
    if len(ctx.data.train) == 0:  # type: ignore[arg-type]
        raise CompressKitError(f"{what}: fine-tuning needs training data but the split is empty")
    ctx.task.require_labels(f"{what}: finetune")
    teacher = ctx.teacher
    if config.alpha < 1 and teacher is None:
        raise CompressKitError(
            f"{what}: finetune.alpha < 1 distils from a teacher but the context has none; "
            "set finetune.alpha: 1"
        )

    loss_fn = label_kd_loss(ctx.task, teacher, alpha=config.alpha, temperature=config.temperature)
    torch.manual_seed(ctx.seed)
    history = train(model, ctx.data, config.train, loss_fn=loss_fn, description=f"{what} finetune")
    return history.as_dict()


# Collects the statistics of one step on the model it is given, and returns a function
# that prunes a copy of that model at a base ratio.
MakePruner = Callable[[nn.Module], Callable[[float], nn.Module]]


def prune_in_steps(
    model: nn.Module,
    ctx: Context,
    *,
    what: str,
    ratio: float,
    steps: int,
    target: SizeTarget | None,
    finetune_config: FinetuneConfig | None,
    make_pruner: MakePruner,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Prune ``model`` in ``steps`` steps, to ``ratio`` or to ``target``; fine-tune after each
    step when configured. Returns the pruned model and what each step did."""
    records: list[dict[str, Any]] = []
    meter = goals = None
    if target is not None:
        meter = Meter(target, ctx.example_inputs, ctx.data.dynamic_sequence, ctx.latency_probe)
        start = meter(model)
        goals = step_goals(start, meter.goal(start), steps)
        records.append({"step": 0, target.kind: start})
        if start <= meter.goal(start):
            records[0]["note"] = f"already meets {target.describe()}: nothing pruned"
            return model, records
    for step in range(steps):
        prune = make_pruner(model)
        if meter is None or goals is None:
            amount = step_ratio(ratio, steps)
            model = prune(amount)
            records.append({"step": step + 1, "ratio": round(amount, 4)})
        else:
            assert target is not None
            label = f"{what} step {step + 1}/{steps} ({target.describe()})"
            tried: list[list[float]] = []
            if target.kind == "latency":
                amount, model, value = scan_ratio(
                    prune,
                    meter,
                    goals[step],
                    step=target.step,
                    what=label,
                    log=_logger(tried),
                )
            else:
                amount, model, value = bisect_ratio(prune, meter, goals[step], what=label)
            entry: dict[str, Any] = {"step": step + 1, "ratio": round(amount, 4)}
            entry[target.kind] = value
            entry["goal"] = goals[step]
            if tried:
                entry["tried"] = tried
            records.append(entry)
        if finetune_config is not None:
            records[-1]["finetune"] = finetune(model, ctx, finetune_config, what=what)
    return model, records


def _logger(tried: list[list[float]]) -> Callable[[float, float], None]:
    def log(ratio: float, value: float) -> None:
        tried.append([round(ratio, 4), round(value, 4)])

    return log
