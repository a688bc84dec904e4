"""Small experiments that a test asserts on and a benchmark repeats over seeds.

``digits_kd_vs_labels``: a 70%-pruned DigitsCNN student trained from a deliberately
imperfect teacher (120 labelled digits, ~93% accurate), once fine-tuned on labels and
once distilled with logit KD at T=1; each keeps the checkpoint best by its own goal on
the val split. Used by ``tests/passes/test_distill_digits.py`` (seed 0) and
``benchmarks/distill_digits_seeds.py`` (seeds 0, 1, 2).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch.utils.data import DataLoader, Subset

from compresskit.context import Context
from compresskit.data import load_data
from compresskit.distill.losses import KDLoss
from compresskit.models.examples import DigitsCNN
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.training.loop import TrainConfig, train


@torch.no_grad()
def agreement(student: torch.nn.Module, teacher: torch.nn.Module, loader: DataLoader) -> float:
    """Top-1 agreement of ``student`` with ``teacher`` over ``(x, label)`` batches."""
    same = total = 0
    for x, _ in loader:
        same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
        total += len(x)
    return same / total


def digits_kd_vs_labels(seed: int = 0) -> dict[str, float]:
    """Eval-split agreement with the teacher of the label-trained (``labels``) and the
    distilled (``distill``) student, and the teacher's own accuracy."""
    data = load_data("digits", seed=seed)
    torch.manual_seed(seed)
    teacher = DigitsCNN(width=16)
    few_labels = dataclasses.replace(data, train=Subset(data.train, range(120)))
    train(teacher, few_labels, TrainConfig(epochs=15, lr=5e-3, batch_size=32), seed=seed)
    teacher.eval()
    ctx = Context(data=data, teacher=teacher, example_inputs=data.example_inputs(2), seed=seed)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.7, importance="random")).apply(
        copy.deepcopy(teacher), ctx
    )
    schedule = TrainConfig(epochs=12, lr=5e-3, batch_size=64)
    eval_loader = data.loader("eval", batch_size=512)
    results = {"teacher accuracy": evaluate_accuracy(teacher, eval_loader)}
    for name, config in {
        "labels": DistillConfig(alpha=1.0, train=schedule),
        "distill": DistillConfig(
            losses=[KDLoss(temperature=1.0)],
            train=schedule.model_copy(update={"monitor": "agreement"}),
        ),
    }.items():
        student = Distill(config).apply(copy.deepcopy(pruned), ctx.for_node())
        results[name] = agreement(student, teacher, eval_loader)
    return results
