"""Fine-tuning with knowledge distillation from the teacher (Hinton logit KD).

The loss is ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``;
``alpha = 1`` is plain fine-tuning on labels, ``alpha = 0`` needs no labels at all.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Pass, PassConfig, Stage, register_pass
from compresskit.training.loop import Inputs, TrainConfig, train


class DistillConfig(PassConfig):
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the label loss")
    train: TrainConfig = Field(default_factory=TrainConfig)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's distillation loss, scaled by T^2 so gradients keep their size across T."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)


@register_pass("distill")
class Distill(Pass[DistillConfig]):
    """Train the model to match the teacher's logits (and the labels, by ``alpha``).

    >>> Distill(DistillConfig(alpha=0.3)).apply(pruned, ctx)     # doctest: +SKIP
    """

    config_cls = DistillConfig
    stage = Stage.TRAINING
    needs = frozenset({DataNeed.TRAIN})
    may_follow = frozenset({Stage.QUANTIZATION})  # fine-tuning a fake-quant model is QAT

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        teacher = ctx.teacher
        if teacher is None and self.config.alpha < 1:
            raise CompressKitError(
                "distill: no teacher in the context; set alpha: 1 to fine-tune on labels only"
            )
        config = self.config

        def loss_fn(student: nn.Module, inputs: Inputs, y: torch.Tensor) -> torch.Tensor:
            logits = student(*inputs)
            loss = config.alpha * F.cross_entropy(logits, y) if config.alpha > 0 else 0.0
            if config.alpha < 1:
                assert teacher is not None
                with torch.no_grad():
                    target = teacher(*inputs)
                if target.shape != logits.shape:
                    raise CompressKitError(
                        f"distill: teacher outputs {tuple(target.shape)} but the student "
                        f"{tuple(logits.shape)}; the teacher must solve the same task"
                    )
                loss = loss + (1 - config.alpha) * kd_loss(logits, target, config.temperature)
            return loss  # type: ignore[return-value]

        torch.manual_seed(ctx.seed)
        history = train(model, ctx.data, config.train, loss_fn=loss_fn, description="distill")
        ctx.record(history=history.as_dict())
        return model
