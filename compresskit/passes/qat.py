"""Quantization-aware training: static int8 fake quant, then fine-tuning through it.

The model is prepared and calibrated exactly as by ``quantize`` (BatchNorm folded, ReLU
fused, ranges from calibration; ``mixed_precision`` works too), then trained with
straight-through gradients on the shared loop. Activation ranges follow a moving average
or are learned (LSQ); at ``freeze_at`` of training they freeze, with any unfolded
BatchNorm statistics. With ``alpha < 1`` the loss mixes in distillation from the teacher
(quantized distillation). With ``losses`` (the terms of ``distill``: output, hidden, ...)
the model trains against the teacher alone, so a task without labels (an embedder) can
train through its quantizers too. The result exports to the same int8 QDQ graph as PTQ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from compresskit.context import Context
from compresskit.distill.losses import LossSpec, label_kd_loss
from compresskit.distill.objective import DistillObjective
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Effects, Pass, register_pass
from compresskit.passes.distill import check_losses, training_on
from compresskit.passes.records import QATRecord
from compresskit.quantization.modules import is_quantized
from compresskit.quantization.qat import convert_qat, freeze_qat, prepare_qat
from compresskit.quantization.static import (
    StaticQuantConfig,
    check_mixed_precision,
    quantize_static,
)
from compresskit.training.loop import Inputs, Objective, Runtime, TrainConfig, train


class QATConfig(StaticQuantConfig):
    """Static int8 settings plus how to train through the quantizers."""

    learn_scales: bool = Field(
        default=False, description="learn activation scales (LSQ) instead of tracking ranges"
    )
    freeze_at: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="fraction of training after which ranges, scales and BN statistics freeze",
    )
    alpha: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="weight of the label loss; < 1 distils from the teacher",
    )
    temperature: float = Field(default=4.0, gt=0)
    losses: list[LossSpec] = Field(
        default_factory=list,
        description="distill's weighted loss terms (output, hidden, ...) against the teacher; "
        "replace alpha/temperature and need no labels",
    )
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-4))

    @model_validator(mode="after")
    def _one_form(self) -> QATConfig:
        # Given at all, not "differs from its default": alpha: 1 beside losses is as
        # ambiguous as alpha: 0.5 (distill refuses both the same way).
        if self.losses and {"alpha", "temperature"} & self.model_fields_set:
            raise ValueError(
                "alpha/temperature are the short form; with losses, give the weights and "
                "temperature in the losses (kind: task / kind: kd)"
            )
        return self

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION, DataNeed.TRAIN})


@register_pass("qat")
class QAT(Pass[QATConfig]):
    """int8 quantization-aware training, optionally distilled from the teacher.

    Example::

        QAT(QATConfig(alpha=0.5, learn_scales=True)).apply(model, ctx)
    """

    config_cls = QATConfig
    effects = Effects(quantizes=frozenset({"layers"}), refines=frozenset({"layers"}), trains=True)
    record_cls = QATRecord

    def check(self, model: nn.Module, ctx: Context) -> None:
        check_mixed_precision(self.config, ctx, what="qat")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        teacher = ctx.teacher
        task = ctx.task
        if config.losses:
            check_losses(config.losses, task, short_form=False, what="qat")
            if teacher is None and any(spec.kind != "task" for spec in config.losses):
                raise CompressKitError(
                    "qat: its losses distil from the teacher but the context has none; set "
                    "the policy's teacher, or keep only the task loss"
                )
        else:
            task.require_labels(
                "qat", "give qat losses (as distill's, e.g. [{kind: output, metric: cosine}])"
            )
            if config.alpha < 1 and teacher is None:
                raise CompressKitError(
                    "qat: alpha < 1 distils from the teacher but the context has none; "
                    "set alpha: 1 to train on labels only"
                )
        if is_quantized(model):
            ctx.record(notes=["model was already fake-quantized; fine-tuning its quantizers"])
        else:
            ctx.record(**quantize_static(model, ctx, config, what="qat"))
        metric_fn = task.validation(teacher if config.losses else None)
        monitor = task.monitor(config.train.monitor, what="qat")
        # The metric moves batches to the model itself, as in the training loop.
        val = ctx.data.loader("val", batch_size=task.eval_batch_size)
        ptq_val = metric_fn(model.eval(), val)[monitor]
        prepare_qat(model, learn_scales=config.learn_scales, track_ranges=not config.learn_scales)
        steps = config.train.steps or config.train.epochs * len(
            ctx.data.loader("train", batch_size=config.train.batch_size)
        )
        freeze_step = int(config.freeze_at * steps)
        step = 0

        def freezing(loss: Callable[[nn.Module, Inputs, torch.Tensor], Any]) -> Any:
            def loss_fn(student: nn.Module, inputs: Inputs, y: torch.Tensor) -> Any:
                nonlocal step
                if step >= freeze_step:
                    freeze_qat(student)  # also puts unfolded BatchNorm back in eval each step
                step += 1
                return loss(student, inputs, y)

            return loss_fn

        distils = bool(config.losses) or config.alpha < 1
        device = ctx.device
        with training_on(device, model, teacher if distils else None):
            torch.manual_seed(ctx.seed)
            if config.losses:
                example = tuple(x.to(device) for x in ctx.example_inputs)
                distillation = DistillObjective(
                    config.losses, model, teacher, example_inputs=example
                )
                terms = distillation.as_objective()
                objective = Objective(
                    loss=freezing(terms.loss), modules=terms.modules, on_step=terms.on_step
                )
                taps = distillation.teacher_taps or contextlib.nullcontext()
                with distillation.student_taps, taps:
                    history = train(
                        model,
                        ctx.data,
                        config.train,
                        objective=objective,
                        metric_fn=metric_fn,
                        seed=ctx.seed,
                        runtime=Runtime(device),
                        description="qat",
                    )
            else:
                label_kd = label_kd_loss(
                    task, teacher, alpha=config.alpha, temperature=config.temperature
                )
                history = train(
                    model,
                    ctx.data,
                    config.train,
                    loss_fn=freezing(label_kd),
                    seed=ctx.seed,
                    runtime=Runtime(device),
                    description="qat",
                )
        convert_qat(model)
        ctx.record(
            history=history.as_dict(),
            ptq_val={monitor: round(ptq_val, 4)},
            freeze_step=freeze_step,
            train_steps=steps,
            distilled=distils,
        )
        return model
