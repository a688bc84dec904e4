"""On digits, a heavily pruned student trained with distillation agrees with its teacher
more than the same student fine-tuned on labels alone (fixed seed).

Measured while writing this (seeds 0, 1, 2; 359 eval images): agreement 0.997 / 0.981 /
0.989 with logit KD at T=1 vs 0.989 / 0.975 / 0.981 on labels alone.
"""

from __future__ import annotations

import copy

import torch

from compresskit.context import Context
from compresskit.data import load_data
from compresskit.models.examples import DigitsCNN
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.training.loop import TrainConfig, train


@torch.no_grad()
def agreement(student: torch.nn.Module, teacher: torch.nn.Module, loader) -> float:
    same = total = 0
    for x, _ in loader:
        same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
        total += len(x)
    return same / total


def test_distillation_beats_label_fine_tuning_on_agreement_with_the_teacher() -> None:
    data = load_data("digits", seed=0)
    torch.manual_seed(0)
    teacher = DigitsCNN(width=16)
    train(teacher, data, TrainConfig(epochs=6, lr=5e-3, batch_size=64), seed=0)
    teacher.eval()
    ctx = Context(data=data, teacher=teacher, example_inputs=data.example_inputs(2))
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.7, importance="random")).apply(
        copy.deepcopy(teacher), ctx
    )
    schedule = TrainConfig(epochs=10, lr=1e-2, batch_size=64)
    results = {}
    for name, config in {
        "labels": DistillConfig(alpha=1.0, train=schedule),
        "distill": DistillConfig(losses=[{"kind": "kd", "temperature": 1.0}], train=schedule),
    }.items():
        student = Distill(config).apply(copy.deepcopy(pruned), ctx.for_node())
        results[name] = agreement(student, teacher, data.loader("eval", batch_size=512))
    assert results["distill"] > results["labels"], results
