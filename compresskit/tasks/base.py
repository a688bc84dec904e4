"""The task contract: what a model's output is, and how it is trained, validated and judged.

A task is one object (one module per task) that every stage asks instead of switching on
a task name: the run checks and adapts the model's output with it, training takes its
loss and validation metrics, pruning criteria its sensitivity loss, the ONNX parity check
its agreement rule, and the report its metric columns and the clause that judges a
candidate against the budget. A new task is a new module registered in ``tasks/__init__``.

>>> from compresskit.tasks import get_task
>>> task = get_task("classification")
>>> task.judge({"accuracy": 0.90}, {"accuracy": 0.91}, Budget(max_accuracy_drop=0.02)).met
True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from compresskit.budget import Budget
from compresskit.errors import CompressKitError

Inputs = tuple[torch.Tensor, ...]
Batches = Iterable[Sequence[torch.Tensor]]  # (*inputs, label) batches
# (model, val batches) -> named metrics, higher is better
MetricFn = Callable[[nn.Module, Batches], dict[str, float]]


@dataclass(frozen=True)
class MetricColumn:
    """A metric as the report shows it: the key in ``metrics``, a short column header, and
    a longer label (axis titles)."""

    key: str
    header: str
    label: str = ""
    higher_is_better: bool = True

    @property
    def title(self) -> str:
        return self.label or self.header


@dataclass(frozen=True)
class Judgement:
    """A candidate's quality against the budget: one clause for the summary line, longer
    lines for the verdict, whether the budget is met (None: no budget applies) and a
    machine-readable reason code."""

    clause: str
    met: bool | None
    code: str
    lines: list[str] = field(default_factory=list)


def at_least(metric: str, value: float, minimum: float | None, detail: str) -> Judgement:
    """The judgement of a metric that must stay at or above ``minimum`` (the budget's
    ``min_<metric>``; None: no budget), agreeing with the baseline in ``detail``."""
    if minimum is None:
        clause = f"{metric} {value:.4f} to the baseline (no budget)"
        return Judgement(clause, None, f"no_{metric}_budget", [f"{clause}; {detail}"])
    met = value >= minimum
    word = "within budget" if met else "BELOW budget"
    clause = f"{metric} {value:.4f} to the baseline, {word} (min {minimum:g})"
    code = f"{metric}_within_budget" if met else f"{metric}_below_budget"
    return Judgement(clause, met, code, [f"{clause}; {detail}"])


class Evaluation(ABC):
    """Streaming metrics of one model over the evaluation batches: ``update`` per batch
    (ONNX Runtime's outputs, the labels, what the task kept of the baseline's outputs for
    the same batch), then ``result``."""

    @abstractmethod
    def update(self, outputs: np.ndarray, labels: np.ndarray, reference: Any) -> None: ...

    @abstractmethod
    def result(self) -> dict[str, float]: ...


def to_device(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=True) for t in batch]


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class Task(ABC):
    """What a model computes and how compresskit judges it (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    # The labels in each batch are real targets that a loss can train on.
    labelled: ClassVar[bool]
    # The output's last axis is a distribution over classes (or tokens): class losses
    # (KD, NKD, DTS, TAID) apply, and top-1 agreement between two models is meaningful.
    class_outputs: ClassVar[bool]
    # Validation metrics training may monitor; the first is the default.
    monitors: ClassVar[tuple[str, ...]]
    # Report columns; ``primary`` is the metric plots put on their quality axis.
    columns: ClassVar[tuple[MetricColumn, ...]]
    primary: ClassVar[MetricColumn]
    measured_note: ClassVar[str]
    # How to recover a model without labels: the hint of errors from label-based passes.
    unlabelled_recovery: ClassVar[str] = ""
    # Samples per forward when a pass scores a whole split (a causal LM's logits per
    # position are large: fewer windows at once).
    eval_batch_size: ClassVar[int] = 256

    # -- the model's output --------------------------------------------------------------

    def adapt(self, raw: Any, inputs: Inputs) -> torch.Tensor:
        """The tensor this task scores, from what the model returned (a tensor, a tuple, a
        dict or a Hugging Face ``ModelOutput``)."""
        tensor = first_tensor(raw)
        if tensor is None:
            raise CompressKitError(
                f"the model returned {type(raw).__name__}, which holds no tensor for the "
                f"{self.name} task"
            )
        return tensor

    @abstractmethod
    def check_output(self, output: Any, *, batch: int, data: str, classes: int | None) -> None:
        """Raise a :class:`CompressKitError` naming the problem when ``output`` (the model's
        raw output on ``batch`` samples of ``data``) is not what this task scores."""

    # -- training --------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task loss on labels (fine-tuning, the ``task`` distillation term)."""
        raise CompressKitError(self.needs_labels("training on labels"))

    @abstractmethod
    def sensitivity_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        """What pruning criteria differentiate (Taylor) or compare (sensitivity):
        ``reference`` is the unpruned model's output on the same batch."""

    @abstractmethod
    def validation(self, teacher: nn.Module | None) -> MetricFn:
        """Validation metrics of a model being trained (against ``teacher`` if given)."""

    def needs_labels(self, what: str, fix: str | None = None) -> str:
        """The message of a pass that trains or judges on labels this task lacks."""
        return (
            f"{what} needs class labels, but the {self.name} task has none; "
            f"{fix or self.unlabelled_recovery}"
        )

    def require_labels(self, what: str, fix: str | None = None) -> None:
        """Raise :meth:`needs_labels` unless this task's batches carry real labels."""
        if not self.labelled:
            raise CompressKitError(self.needs_labels(what, fix))

    def monitor(self, configured: str | None, *, what: str) -> str:
        """The validation metric training monitors: ``configured`` if it applies here."""
        if configured is None:
            return self.monitors[0]
        if configured not in self.monitors:
            raise CompressKitError(
                f"{what}: train.monitor is {configured!r} but the {self.name} task validates "
                f"by {' or '.join(self.monitors)}; use monitor: {self.monitors[0]}"
            )
        return configured

    def stop_value(
        self, monitor: str, budget: Budget, teacher_metrics: Callable[[], dict[str, float]]
    ) -> float | None:
        """The monitored validation value at which ``budget`` is met (None: none set).
        ``teacher_metrics`` measures the teacher on the val split when a budget is
        relative to it."""
        if monitor == "agreement":
            return budget.min_agreement
        return None

    # -- the report ----------------------------------------------------------------------

    def reference(self, outputs: np.ndarray) -> Any:
        """What is kept of the baseline's outputs on one evaluation batch, to score every
        candidate against (the outputs themselves, unless they are too large)."""
        return outputs

    @abstractmethod
    def evaluation(self) -> Evaluation:
        """A fresh accumulator of this task's metrics."""

    def score(
        self, outputs: np.ndarray, labels: np.ndarray, baseline: np.ndarray
    ) -> dict[str, float]:
        """This task's metrics of whole-array ``outputs`` against ``baseline``'s."""
        evaluation = self.evaluation()
        evaluation.update(outputs, labels, self.reference(baseline))
        return evaluation.result()

    @abstractmethod
    def judge(
        self, metrics: dict[str, float], baseline: dict[str, float], budget: Budget
    ) -> Judgement:
        """A candidate's metrics against the baseline's, within ``budget``."""

    def unused_budget(self, budget: Budget) -> list[str]:
        """Budget fields set in the policy that do not apply to this task."""
        return [
            f"budget {name} does not apply to the {self.name} task; ignored"
            for name in budget.model_fields_set
            if name in FOREIGN_BUDGETS and name not in self.budget_fields
        ]

    budget_fields: ClassVar[frozenset[str]] = frozenset()


# Budget fields that belong to one task (the others apply to every task).
FOREIGN_BUDGETS = frozenset({"max_accuracy_drop", "min_cosine", "max_perplexity_increase"})


def first_tensor(raw: Any) -> torch.Tensor | None:
    """The first tensor of a model output: the tensor itself, the first of a tuple or
    list, or the first tensor value of a dict or Hugging Face ``ModelOutput``."""
    if isinstance(raw, torch.Tensor):
        return raw
    values: Iterable[Any]
    if isinstance(raw, dict):
        values = raw.values()
    elif isinstance(raw, tuple | list):
        values = raw
    else:
        return None
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def points(change: float) -> str:
    """A change of a fraction in points, never ``-0.00`` (e.g. ``+0.56``, ``0.00``)."""
    value = round(change * 100, 2)
    return "0.00" if value == 0 else f"{value:+.2f}"


def shape_of(output: Any) -> str:
    return str(tuple(output.shape)) if isinstance(output, torch.Tensor) else type(output).__name__


class TeacherMatch:
    """Validation against a teacher: a per-sample score of the model's outputs against
    the teacher's on the val batches, averaged. The teacher's outputs are computed once
    (the val loader's order is fixed)."""

    def __init__(self, teacher: nn.Module | None, task: Task) -> None:
        self.teacher = teacher
        self.task = task
        self.outputs: list[torch.Tensor] | None = None

    @torch.no_grad()
    def mean_score(
        self,
        model: nn.Module,
        batches: list[Sequence[torch.Tensor]],
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        assert self.teacher is not None
        device = model_device(model)
        if self.outputs is None:
            self.outputs = [self._run(self.teacher, b, device) for b in batches]
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch, expected in zip(batches, self.outputs, strict=True):
            scores = score(self._run(model, batch, device), expected)
            total += float(scores.sum())
            count += scores.numel()
        model.train(was_training)
        return total / max(count, 1)

    def _run(self, model: nn.Module, batch: Sequence[torch.Tensor], device: torch.device) -> Any:
        inputs = tuple(to_device(batch, device)[:-1])
        return self.task.adapt(model(*inputs), inputs)
