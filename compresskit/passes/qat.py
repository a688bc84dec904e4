"""Quantization-aware training: static int8 fake quant, then fine-tuning through it.

The model is prepared and calibrated exactly as by ``quantize`` (BatchNorm folded, ReLU
fused, ranges from calibration; ``mixed_precision`` works too), then trained with
straight-through gradients on the shared loop. Activation ranges follow a moving average
or are learned (LSQ); at ``freeze_at`` of training they freeze, with any unfolded
BatchNorm statistics. With ``alpha < 1`` the loss mixes in distillation from the teacher
(quantized distillation). The result exports to the same int8 QDQ graph as PTQ.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from compresskit.context import Context
from compresskit.distill.losses import label_kd_loss
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Effects, Pass, register_pass
from compresskit.passes.records import QATRecord
from compresskit.quantization.modules import is_quantized
from compresskit.quantization.qat import convert_qat, freeze_qat, prepare_qat
from compresskit.quantization.static import StaticQuantConfig, quantize_static
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.training.loop import Inputs, TrainConfig, train


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
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-4))

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

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        teacher = ctx.teacher
        ctx.task.require_labels("qat")
        if config.alpha < 1 and teacher is None:
            raise CompressKitError(
                "qat: alpha < 1 distils from the teacher but the context has none; "
                "set alpha: 1 to train on labels only"
            )
        if is_quantized(model):
            ctx.record(notes=["model was already fake-quantized; fine-tuning its quantizers"])
        else:
            ctx.record(**quantize_static(model, ctx, config, what="qat"))
        ptq_accuracy = evaluate_accuracy(model, ctx.data.loader("val", batch_size=256))
        prepare_qat(model, learn_scales=config.learn_scales, track_ranges=not config.learn_scales)
        steps = config.train.epochs * len(
            ctx.data.loader("train", batch_size=config.train.batch_size)
        )
        freeze_step = int(config.freeze_at * steps)
        step = 0

        label_kd = label_kd_loss(
            ctx.task, teacher, alpha=config.alpha, temperature=config.temperature
        )

        def loss_fn(student: nn.Module, inputs: Inputs, y: torch.Tensor) -> torch.Tensor:
            nonlocal step
            if step >= freeze_step:
                freeze_qat(student)  # also puts unfolded BatchNorm back in eval each step
            step += 1
            return label_kd(student, inputs, y)

        torch.manual_seed(ctx.seed)
        history = train(model, ctx.data, config.train, loss_fn=loss_fn, description="qat")
        convert_qat(model)
        ctx.record(
            history=history.as_dict(),
            ptq_val_accuracy=round(ptq_accuracy, 4),
            freeze_step=freeze_step,
            train_steps=steps,
            distilled=config.alpha < 1,
        )
        return model
