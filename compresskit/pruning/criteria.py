"""Ranking criteria and the calibration statistics they need.

Magnitude (L1, L2) and BatchNorm scale read the weights; Taylor reads weights and the
gradient of the task loss on calibration data (collected once per step, before any
candidate is pruned); random is a control; sensitivity measures the loss change when a
head or block is removed.

Embedding tasks have no labels: their calibration batches carry an empty label tensor
(``no_labels``) and the task loss is the cosine distance to the unpruned model's output.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.context import Context

Criterion = Literal["l1", "l2", "taylor", "bn_scale", "random", "sensitivity"]
DATA_CRITERIA = frozenset({"taylor", "sensitivity"})


def calibration_batches(ctx: Context, count: int, batch_size: int = 32) -> list[list[torch.Tensor]]:
    """The first ``count`` ``(*inputs, label)`` batches of the calibration split (labels
    replaced by ``no_labels`` for embedding tasks, whose labels are placeholders)."""
    loader = ctx.data.loader("calibration", batch_size=batch_size)
    batches = [list(batch) for batch in islice(iter(loader), count)]
    if ctx.data.is_embedding:
        batches = [[*inputs, no_labels(len(y))] for *inputs, y in batches]
    return batches


def no_labels(size: int) -> torch.Tensor:
    """The label tensor of a batch without labels: shape ``(size, 0)``."""
    return torch.zeros(size, 0)


def _probe(outputs: torch.Tensor) -> torch.Tensor:
    """0 in value, a fixed random direction per sample in gradient.

    The cosine distance to the model's own output is at its minimum, so its gradient is
    zero and gradient (Taylor) importance would score nothing. Adding this term gives the
    gradient of a random projection of the output instead: ``|activation x gradient|``
    then estimates (up to a constant) how far removing a unit moves the output."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(outputs.shape, generator=generator).to(outputs)
    return ((outputs - outputs.detach()) * direction).flatten(1).sum(1).mean()


def task_loss(outputs: Any, labels: torch.Tensor, reference: Any = None) -> torch.Tensor:
    """Cross-entropy on logits; the output change (MSE) from ``reference`` for models whose
    outputs are not logits over the labels; for batches without labels (``no_labels``,
    embedding tasks) the cosine distance to ``reference``, plus a gradient probe."""
    if labels.dim() == 2 and labels.shape[1] == 0:
        if reference is None:
            raise ValueError("a batch without labels needs the reference outputs")
        out, ref = _first_tensor(outputs).flatten(1), _first_tensor(reference).flatten(1)
        distance = 1 - F.cosine_similarity(out, ref.to(out.dtype), dim=1).mean()
        return distance + _probe(out)
    if (
        isinstance(outputs, torch.Tensor)
        and outputs.dim() == 2
        and labels.dim() == 1
        and int(labels.max()) < outputs.shape[1]
    ):
        return F.cross_entropy(outputs, labels)
    if reference is None:
        raise ValueError("outputs are not logits over the labels and no reference was given")
    return F.mse_loss(_first_tensor(outputs), _first_tensor(reference))


def _first_tensor(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return next(v for v in outputs.values() if isinstance(v, torch.Tensor))
    return next(v for v in outputs if isinstance(v, torch.Tensor))


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[list[torch.Tensor]], references: list[Any]) -> float:
    """Mean task loss of ``model`` over ``batches`` (in eval mode)."""
    model.eval()
    total = 0.0
    for (*inputs, y), ref in zip(batches, references, strict=True):
        total += float(task_loss(model(*inputs), y, ref))
    return total / max(len(batches), 1)


@torch.no_grad()
def reference_outputs(model: nn.Module, batches: list[list[torch.Tensor]]) -> list[Any]:
    model.eval()
    return [model(*inputs) for *inputs, _ in batches]


def accumulate_gradients(
    model: nn.Module, batches: list[list[torch.Tensor]], references: list[Any]
) -> None:
    """Leave in every parameter's ``.grad`` the gradient of the mean task loss."""
    model.eval()  # keep BatchNorm statistics fixed: we measure, not train
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for (*inputs, y), ref in zip(batches, references, strict=True):
            loss = task_loss(model(*inputs), y, ref) / len(batches)
            loss.backward()


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
