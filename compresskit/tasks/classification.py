"""Classification: the model outputs class logits ``(batch, classes)``, judged by accuracy
on labels and agreement with the baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    Inputs,
    Judgement,
    MetricColumn,
    MetricFn,
    Task,
    TeacherMatch,
    model_device,
    points,
    shape_of,
    to_device,
)


def logits_of(raw: Any) -> torch.Tensor | None:
    """Class logits from a model output: the tensor, ``.logits`` of a ``ModelOutput`` or
    dict, or the first tensor of a tuple."""
    if isinstance(raw, torch.Tensor):
        return raw
    logits = raw.get("logits") if isinstance(raw, dict) else getattr(raw, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(raw, tuple | list) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    return None


def _logits(raw: Any, inputs: Inputs) -> torch.Tensor:
    logits = logits_of(raw)
    if logits is None:
        raise CompressKitError(f"the model returned {type(raw).__name__}, not class logits")
    return logits


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    batches: Batches,
    *,
    adapt: Callable[[Any, Inputs], torch.Tensor] = _logits,
) -> float:
    """Top-1 accuracy of ``model`` over ``(*inputs, label)`` batches."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = total = 0
    for batch in batches:
        *inputs, y = to_device(batch, device)
        logits = adapt(model(*inputs), tuple(inputs))
        correct += int((logits.argmax(dim=-1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


class _ClassificationEvaluation(Evaluation):
    def __init__(self) -> None:
        self.outputs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.references: list[np.ndarray] = []

    def update(self, outputs: np.ndarray, labels: np.ndarray, reference: Any) -> None:
        self.outputs.append(np.asarray(outputs))
        self.labels.append(np.asarray(labels))
        self.references.append(np.asarray(reference))

    def result(self) -> dict[str, float]:
        outputs, labels = np.concatenate(self.outputs), np.concatenate(self.labels)
        baseline = np.concatenate(self.references)
        logp = torch.log_softmax(torch.from_numpy(outputs).double(), -1)
        base_logp = torch.log_softmax(torch.from_numpy(baseline).double(), -1)
        pred, base_pred = outputs.argmax(-1), baseline.argmax(-1)
        changed = pred != base_pred
        return {
            "accuracy": float((pred == labels).mean()),
            "agreement": float((pred == base_pred).mean()),
            "kl": float((base_logp.exp() * (base_logp - logp)).sum(-1).mean()),
            # Prediction churn vs the baseline ("Churn Reduction via Distillation"): good
            # churn fixes a baseline mistake, bad churn breaks a correct prediction.
            "churn": float(changed.mean()),
            "churn_good": float((changed & (pred == labels)).mean()),
            "churn_bad": float((changed & (base_pred == labels)).mean()),
        }


class LogitsTask(Task):
    """A task whose model outputs logits: a tensor, or a ``ModelOutput``'s ``.logits``."""

    def adapt(self, raw: Any, inputs: Inputs) -> torch.Tensor:
        logits = logits_of(raw)
        return super().adapt(raw, inputs) if logits is None else logits


class Classification(LogitsTask):
    """Class logits, scored by accuracy (and agreement, KL and churn vs the baseline)."""

    name = "classification"
    description = "class logits (batch, classes), judged by accuracy on labels"
    labelled = True
    class_outputs = True
    monitors = ("accuracy", "agreement")
    columns = (
        MetricColumn("accuracy", "acc", "accuracy"),
        MetricColumn("agreement", "agree", "top-1 agreement with the baseline"),
    )
    primary = columns[0]
    measured_note = (
        "Accuracy is measured with ONNX Runtime on the held-out evaluation split; agreement "
        "is top-1 agreement with the baseline."
    )
    budget_fields = frozenset({"max_accuracy_drop"})

    def check_output(self, output: Any, *, batch: int, data: str, classes: int | None) -> None:
        logits = logits_of(output)
        if logits is None or logits.dim() != 2 or logits.shape[0] != batch:
            raise CompressKitError(
                f"the model outputs {shape_of(output)} on {data}, but classification needs "
                "logits of shape (batch, classes); for a model that outputs embeddings, give "
                'the data task="embedding"'
            )
        if classes is not None and logits.shape[1] < classes:
            raise CompressKitError(
                f"the model outputs {logits.shape[1]} classes but the labels of {data} go up "
                f"to {classes - 1}; check --data and the model's head"
            )

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels)

    def sensitivity_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        if outputs.dim() == 2 and labels.dim() == 1 and int(labels.max()) < outputs.shape[1]:
            return F.cross_entropy(outputs, labels)
        # A model whose outputs are not logits over these labels (a sub-network measured
        # on its own): how far its output moved from the unpruned one's.
        return F.mse_loss(outputs, reference.to(outputs.dtype))

    def validation(self, teacher: nn.Module | None) -> MetricFn:
        return _TeacherAgreement(teacher, self)

    def stop_value(
        self, monitor: str, budget: Budget, teacher_metrics: Callable[[], dict[str, float]]
    ) -> float | None:
        if monitor == "accuracy":
            teacher = teacher_metrics() if budget.max_accuracy_drop is not None else {}
            if "accuracy" not in teacher or budget.max_accuracy_drop is None:
                return None  # no budget, or no teacher to measure it against
            return teacher["accuracy"] - budget.max_accuracy_drop
        return super().stop_value(monitor, budget, teacher_metrics)

    def evaluation(self) -> Evaluation:
        return _ClassificationEvaluation()

    def judge(
        self, metrics: dict[str, float], baseline: dict[str, float], budget: Budget
    ) -> Judgement:
        change = metrics["accuracy"] - baseline["accuracy"]
        limit = budget.max_accuracy_drop
        lines = [f"accuracy {metrics['accuracy']:.4f} ({points(change)} points vs baseline)"]
        if limit is None:
            met, code = None, "no_accuracy_budget"
            clause = f"accuracy {points(change)} points (no budget)"
        else:
            met = -change <= limit + 1e-12
            code = "accuracy_within_budget" if met else "accuracy_over_budget"
            word = "within" if met else "OVER"
            clause = f"accuracy {word} budget ({points(change)} points, allowed -{limit * 100:.1f})"
            lines[0] += f", {word} budget"
        if budget.min_agreement is not None and metrics["agreement"] < budget.min_agreement:
            met, code = False, "agreement_below_budget"
            clause += f"; agreement {metrics['agreement']:.4f} BELOW {budget.min_agreement:g}"
        return Judgement(clause, met, code, lines)


class _TeacherAgreement(TeacherMatch):
    """Validation metrics: accuracy, and top-1 agreement with the teacher."""

    def __call__(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        batches = list(batches)
        metrics = {"accuracy": evaluate_accuracy(model, batches, adapt=self.task.adapt)}
        if self.teacher is not None:
            metrics["agreement"] = self.mean_score(model, batches, _same_top1)
        return metrics


def _same_top1(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return got.argmax(-1) == expected.argmax(-1)


def class_count(labels: Sequence[int] | np.ndarray | torch.Tensor) -> int:
    """The number of classes the labels imply at least (largest label + 1)."""
    values = torch.as_tensor(np.asarray(labels))
    return int(values.max()) + 1 if values.numel() else 0
