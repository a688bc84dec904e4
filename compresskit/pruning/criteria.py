"""Ranking criteria and the calibration statistics they need.

Magnitude (L1, L2) and BatchNorm scale read the weights; Taylor reads weights and the
gradient of the task's sensitivity loss on calibration data (collected once per step,
before any candidate is pruned); random is a control; sensitivity measures the loss
change when a head or block is removed. The loss is the task's (cross-entropy on labels
for classification; for tasks without labels, the distance to the unpruned model's
output on the same batch): :class:`CalibrationSet` keeps the batches, the task and those
reference outputs together.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import torch
from torch import nn

from compresskit.context import Context
from compresskit.tasks import Task

Criterion = Literal["l1", "l2", "taylor", "bn_scale", "random", "sensitivity"]
DATA_CRITERIA = frozenset({"taylor", "sensitivity"})


def calibration_batches(ctx: Context, count: int, batch_size: int = 32) -> list[list[torch.Tensor]]:
    """The first ``count`` ``(*inputs, label)`` batches of the calibration split."""
    loader = ctx.data.loader("calibration", batch_size=batch_size)
    return [list(batch) for batch in islice(iter(loader), count)]


@dataclass
class CalibrationSet:
    """Calibration batches, the task that scores them, and the outputs of the model as it
    was when they were collected (the reference a pruned model is compared with).

    Example::

        calibration = CalibrationSet.collect(model, ctx, count=4)
        calibration.mean_loss(pruned) - calibration.mean_loss(model)
    """

    task: Task
    batches: list[list[torch.Tensor]]
    references: list[torch.Tensor]

    @classmethod
    @torch.no_grad()
    def collect(
        cls, model: nn.Module, ctx: Context, count: int, *, batch_size: int = 32
    ) -> CalibrationSet:
        batches = calibration_batches(ctx, count, batch_size)
        model.eval()
        references = [ctx.task.adapt(model(*inputs), tuple(inputs)) for *inputs, _ in batches]
        return cls(ctx.task, batches, references)

    def output(self, model: nn.Module, index: int) -> torch.Tensor:
        """``model``'s task output on batch ``index``."""
        *inputs, _ = self.batches[index]
        return self.task.adapt(model(*inputs), tuple(inputs))

    def loss(self, model: nn.Module, index: int) -> torch.Tensor:
        """The task's sensitivity loss of ``model`` on batch ``index``."""
        labels = self.batches[index][-1]
        return self.task.sensitivity_loss(self.output(model, index), labels, self.references[index])

    @torch.no_grad()
    def mean_loss(self, model: nn.Module) -> float:
        """Mean sensitivity loss of ``model`` over the batches (in eval mode)."""
        model.eval()
        total = sum(float(self.loss(model, i)) for i in range(len(self.batches)))
        return total / max(len(self.batches), 1)

    @torch.no_grad()
    def output_change(self, model: nn.Module) -> float:
        """Mean squared change of ``model``'s outputs from the references."""
        model.eval()
        total = sum(
            float((self.output(model, i) - self.references[i]).pow(2).mean())
            for i in range(len(self.batches))
        )
        return total / max(len(self.batches), 1)

    def accumulate_gradients(self, model: nn.Module) -> None:
        """Leave in every parameter's ``.grad`` the gradient of the mean sensitivity loss."""
        model.eval()  # keep BatchNorm statistics fixed: we measure, not train
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for index in range(len(self.batches)):
                (self.loss(model, index) / len(self.batches)).backward()


def channel_importance(criterion: Criterion) -> Any:
    """The torch-pruning importance object for a channel criterion."""
    import torch_pruning as tp

    if criterion == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance()
    if criterion == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"no channel importance for {criterion!r}")
