"""The digits acceptance test of tests/passes/test_distill_digits.py, over seeds 0, 1, 2.

Prints agreement with the (deliberately imperfect) teacher for a 70%-pruned DigitsCNN
student fine-tuned on labels vs distilled with logit KD at T=1. About 3 minutes on 2 cores:
    python benchmarks/distill_digits_seeds.py
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch.utils.data import Subset

from compresskit.context import Context
from compresskit.data import load_data
from compresskit.models.examples import DigitsCNN
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.training.loop import TrainConfig, evaluate_accuracy, train


@torch.no_grad()
def agreement(student: torch.nn.Module, teacher: torch.nn.Module, loader) -> float:
    same = total = 0
    for x, _ in loader:
        same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
        total += len(x)
    return same / total


def main() -> None:
    torch.set_num_threads(1)
    for seed in (0, 1, 2):
        data = load_data("digits", seed=seed)
        torch.manual_seed(seed)
        teacher = DigitsCNN(width=16)
        few = dataclasses.replace(data, train=Subset(data.train, range(120)))
        train(teacher, few, TrainConfig(epochs=15, lr=5e-3, batch_size=32), seed=seed)
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
            "kd": DistillConfig(
                losses=[{"kind": "kd", "temperature": 1.0}],
                train=schedule.model_copy(update={"monitor": "agreement"}),
            ),
        }.items():
            student = Distill(config).apply(copy.deepcopy(pruned), ctx.for_node())
            results[f"{name} agreement"] = agreement(student, teacher, eval_loader)
        print(seed, {k: round(v, 4) for k, v in results.items()}, flush=True)


if __name__ == "__main__":
    main()
