"""Fidelity: a classifier judged without labels, by how closely it follows the original
model's own outputs on the same inputs: top-1 agreement, cosine of the logits, and the KL
divergence of its class distribution from the original's.

For a pretrained model and inputs nobody labelled (natural images for an ImageNet
network): the batches carry placeholder labels that nothing reads, so accuracy is never
claimed. Recover with distillation from the original (``kd`` losses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from compresskit.budget import Budget
from compresskit.errors import CompressKitError
from compresskit.tasks.base import (
    Batches,
    Evaluation,
    Judgement,
    MetricColumn,
    MetricFn,
    TeacherMatch,
    at_least,
    shape_of,
)
from compresskit.tasks.classification import LogitsTask, logits_of
from compresskit.tasks.embedding import cosine_rows


class _FidelityEvaluation(Evaluation):
    def __init__(self) -> None:
        self.agree: list[np.ndarray] = []
        self.cosines: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []

    def update(self, outputs: np.ndarray, labels: np.ndarray, reference: Any) -> None:
        outputs, reference = np.asarray(outputs), np.asarray(reference)
        self.agree.append(outputs.argmax(-1) == reference.argmax(-1))
        self.cosines.append(cosine_rows(outputs, reference))
        logp = torch.log_softmax(torch.from_numpy(outputs).double(), -1)
        base = torch.log_softmax(torch.from_numpy(reference).double(), -1)
        self.kl.append((base.exp() * (base - logp)).sum(-1).numpy())

    def result(self) -> dict[str, float]:
        cosine = np.concatenate(self.cosines)
        return {
            "agreement": float(np.concatenate(self.agree).mean()),
            "cosine": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "kl": float(np.concatenate(self.kl).mean()),
        }


class Fidelity(LogitsTask):
    """Class logits scored against the baseline's: agreement, cosine, KL (no labels)."""

    name = "fidelity"
    description = "class logits (batch, classes), judged by agreement with the original model"
    labelled = False
    class_outputs = True
    monitors = ("agreement",)
    columns = (
        MetricColumn("agreement", "agree", "top-1 agreement with the baseline"),
        MetricColumn("cosine", "cos", "cosine of the logits to the baseline's"),
        MetricColumn("kl", "KL", "KL divergence from the baseline", higher_is_better=False),
    )
    primary = columns[0]
    measured_note = (
        "No labels: fidelity to the baseline is measured with ONNX Runtime on the evaluation "
        "inputs: top-1 agreement, cosine of the logits, and KL from the baseline's classes."
    )
    unlabelled_recovery = "recover with a distill node (losses: [{kind: kd}])"
    budget_fields = frozenset()

    def check_output(self, output: Any, *, batch: int, data: str, classes: int | None) -> None:  # noqa: ANN401
        logits = logits_of(output)
        if logits is None or logits.dim() != 2 or logits.shape[0] != batch:
            raise CompressKitError(
                f"the model outputs {shape_of(output)} on {data}, but the fidelity task needs "
                "class logits of shape (batch, classes)"
            )

    def sensitivity_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        target = torch.softmax(reference.to(outputs.dtype), -1)
        return F.kl_div(torch.log_softmax(outputs, -1), target, reduction="batchmean")

    def validation(self, teacher: nn.Module | None) -> MetricFn:
        if teacher is None:
            raise CompressKitError(
                "the fidelity task validates against a teacher, and there is none"
            )
        return _TeacherTop1(teacher, self)

    def stop_value(
        self, monitor: str, budget: Budget, teacher_metrics: Callable[[], dict[str, float]]
    ) -> float | None:
        return budget.min_agreement

    def evaluation(self) -> Evaluation:
        return _FidelityEvaluation()

    def judge(
        self, metrics: dict[str, float], baseline: dict[str, float], budget: Budget
    ) -> Judgement:
        detail = f"cosine {metrics['cosine']:.4f}, KL {metrics['kl']:.4g}"
        return at_least("agreement", metrics["agreement"], budget.min_agreement, detail)


class _TeacherTop1(TeacherMatch):
    def __call__(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        return {"agreement": self.mean_score(model, list(batches), _same_top1)}


def _same_top1(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return got.argmax(-1) == expected.argmax(-1)
