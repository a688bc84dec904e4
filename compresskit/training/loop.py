"""The one training loop every training pass uses (distillation, QAT, fine-tuning).

Passes contribute a loss function; the loop owns optimisation, evaluation, keeping the
best state and progress. It takes a model and data, not a pass, so it can later run
under DistributedDataParallel without a rewrite.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compresskit.data.bundle import DataBundle
from compresskit.progress import progress_bar, status
from compresskit.training import distributed

Inputs = tuple[torch.Tensor, ...]
# (model, inputs, labels) -> scalar loss; the model is called as model(*inputs)
LossFn = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]


class TrainConfig(BaseModel):
    """Optimisation settings shared by every training pass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(default=1.0, gt=0)
    keep_best: bool = True


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float


@dataclass
class TrainHistory:
    """Loss and eval accuracy per epoch, and which epoch's weights were kept."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "epochs": [vars(record) for record in self.epochs],
            "best_epoch": self.best_epoch,
        }


def cross_entropy(model: nn.Module, inputs: Inputs, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(*inputs), y)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(*inputs, label)`` batches."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for *inputs, y in batches:
        correct += int((model(*inputs).argmax(dim=-1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def train(
    model: nn.Module,
    data: DataBundle,
    config: TrainConfig,
    *,
    loss_fn: LossFn = cross_entropy,
    extra_parameters: Iterable[nn.Parameter] = (),
    description: str = "training",
) -> TrainHistory:
    """Train ``model`` in place on ``data.train``; validate on ``data.val`` each epoch and
    keep the best weights (``data.eval`` stays unseen for the report)."""
    extra = list(extra_parameters)
    parameters = [p for p in model.parameters() if p.requires_grad] + extra
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    # batch_size is the global batch; each rank loads its share (training/distributed.py)
    loader = distributed.train_loader(data.train, batch_size=config.batch_size, seed=data.seed)
    student = distributed.wrap(model)  # DDP when torchrun started several processes
    steps = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
        if config.schedule == "cosine"
        else (lambda step: 1.0),
    )
    history = TrainHistory()
    best_accuracy, best_state = -1.0, None
    with progress_bar(description, total=steps) as bar:
        for epoch in range(config.epochs):
            distributed.set_epoch(loader, epoch)
            model.train()
            total_loss, batches = 0.0, 0
            for *inputs, y in loader:
                loss = loss_fn(student, tuple(inputs), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(extra)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                optimizer.step()
                scheduler.step()
                total_loss += loss.item()
                batches += 1
                bar.update(bar.task_ids[0], advance=1, info=f"loss {total_loss / batches:.4f}")
            distributed.sync_buffers(model)
            accuracy = distributed.mean_over_shards(
                data.val, lambda loader: evaluate_accuracy(model, loader)
            )
            epoch_loss = distributed.weighted_mean(total_loss / max(batches, 1), batches)
            history.epochs.append(EpochRecord(epoch, epoch_loss, accuracy))
            if config.keep_best and accuracy > best_accuracy:
                best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
                history.best_epoch = epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    last = history.epochs[-1]
    status(
        f"{description}: {config.epochs} epochs, loss {last.loss:.4f}, "
        f"val accuracy {last.accuracy:.4f}"
        + (f" (kept epoch {history.best_epoch}: {best_accuracy:.4f})" if best_state else "")
    )
    return history
