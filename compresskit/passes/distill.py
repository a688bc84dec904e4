"""Fine-tuning with knowledge distillation from a teacher, through the shared loop.

The teacher is the model as it entered the pipeline (``ctx.teacher``) or a checkpoint
(``teacher: path``). ``losses`` composes weighted terms (task, kd, nkd, dts, taid,
hidden, attention, rkd_distance, rkd_angle; see :mod:`compresskit.distill.losses`).
Without ``losses``, the short form is ``alpha * CE(labels) + (1 - alpha) * KD(T)``:
``alpha = 1`` is plain fine-tuning, ``alpha = 0`` needs no labels at all.

For an embedding task (``DataBundle(task="embedding")``) there are no classes: only the
losses that compare outputs or layers (output, hidden, attention, rkd_*) apply, and
validation measures the cosine of the student's embeddings to the teacher's.

Projectors and hooks are training-only: hooks are removed when training ends and
projectors are never attached to the model, so neither reaches the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from compresskit.context import Context
from compresskit.distill.lm_losses import LM_LOSS_KINDS
from compresskit.distill.lm_objective import LMDistillObjective
from compresskit.distill.losses import KDLoss, LossSpec, TaskLoss, kd_loss
from compresskit.distill.objective import DistillObjective, IndexedDataset
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Pass, PassConfig, Stage, register_pass
from compresskit.progress import status
from compresskit.tasks import get_task
from compresskit.training.loop import (
    Runtime,
    TrainConfig,
    evaluate_accuracy,
    resolve_monitor,
    to_device,
    train,
)

__all__ = ["Distill", "DistillConfig", "kd_loss"]

# Losses over class labels or class probabilities: meaningless on embeddings.
CLASS_LOSSES = frozenset({"task", "kd", "nkd", "dts", "taid"})


class DistillConfig(PassConfig):
    """Teacher, weighted losses, teacher-output caching and training settings."""

    teacher: str | None = Field(
        default=None, description="checkpoint to distil from; default: the pipeline's input"
    )
    alpha: float | None = Field(
        default=None, ge=0, le=1, description="short form: weight of the label loss (0.5)"
    )
    temperature: float | None = Field(
        default=None, gt=0, description="short form: KD temperature (4.0)"
    )
    losses: list[LossSpec] = Field(
        default_factory=list, description="weighted loss terms; replaces alpha/temperature"
    )
    cache_teacher: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="compute teacher outputs once over the training data (auto: if they "
        "fit in cache_max_mb and inputs have a fixed shape)",
    )
    cache_max_mb: float = Field(default=256, gt=0)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _one_form(self) -> DistillConfig:
        if self.losses and (self.alpha is not None or self.temperature is not None):
            raise ValueError(
                "alpha/temperature are the short form; with losses, give the weights and "
                "temperature in the losses (kind: task / kind: kd)"
            )
        return self

    def loss_specs(self) -> list[Any]:
        if self.losses:
            return list(self.losses)
        alpha = 0.5 if self.alpha is None else self.alpha
        temperature = 4.0 if self.temperature is None else self.temperature
        specs: list[Any] = []
        if alpha > 0:
            specs.append(TaskLoss(weight=alpha))
        if alpha < 1:
            specs.append(KDLoss(weight=1 - alpha, temperature=temperature))
        return specs


def load_teacher(path: str, *, causal_lm: bool = False) -> nn.Module:
    from compresskit.models.causal_lm import load_causal_lm
    from compresskit.models.loading import load_model

    teacher = load_causal_lm(path).model if causal_lm else load_model(path).model
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


class _TeacherMatch:
    """Validation against the teacher: a per-sample score of the model's outputs against
    the teacher's on the val batches, averaged (the teacher's are computed once; the val
    loader's order is fixed)."""

    def __init__(self, teacher: nn.Module | None) -> None:
        self.teacher = teacher
        self.outputs: list[torch.Tensor] | None = None

    @torch.no_grad()
    def mean_score(
        self,
        model: nn.Module,
        batches: list[Sequence[torch.Tensor]],
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        assert self.teacher is not None
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self.outputs is None:
            self.outputs = [self.teacher(*to_device(b, device)[:-1]) for b in batches]
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch, expected in zip(batches, self.outputs, strict=True):
            scores = score(model(*to_device(batch, device)[:-1]), expected)
            total += float(scores.sum())
            count += len(scores)
        model.train(was_training)
        return total / max(count, 1)


class TeacherAgreement(_TeacherMatch):
    """Validation metrics: accuracy, and top-1 agreement with the teacher."""

    def __call__(
        self, model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]
    ) -> dict[str, float]:
        batches = list(batches)
        metrics = {"accuracy": evaluate_accuracy(model, batches)}
        if self.teacher is not None:
            metrics["agreement"] = self.mean_score(
                model, batches, lambda got, expected: got.argmax(-1) == expected.argmax(-1)
            )
        return metrics


class TeacherCosine(_TeacherMatch):
    """Validation metric of embedding tasks: the mean cosine of the model's embeddings to
    the teacher's."""

    def __call__(
        self, model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]
    ) -> dict[str, float]:
        return {"cosine": self.mean_score(model, list(batches), _cosine)}


def _cosine(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(
        got.flatten(1).double(), expected.flatten(1).double(), dim=1
    )


def check_embedding_losses(specs: Sequence[Any], config: DistillConfig, data_name: str) -> None:
    """Refuse class-based losses (and the alpha/temperature short form) on embeddings."""
    if not config.losses:
        raise CompressKitError(
            f"distill: {data_name} is an embedding task and alpha/temperature distil class "
            "logits; give losses: [{kind: output, metric: cosine}] (and hidden/attention)"
        )
    wrong = sorted({spec.kind for spec in specs} & CLASS_LOSSES)
    if wrong:
        raise CompressKitError(
            f"distill: losses {', '.join(wrong)} need classes but {data_name} is an embedding "
            "task; use {kind: output, metric: cosine} (and hidden/attention/rkd_*) instead"
        )


@register_pass("distill")
class Distill(Pass[DistillConfig]):
    """Train the model against the teacher with the policy's weighted losses.

    >>> Distill(DistillConfig(losses=[{"kind": "kd"}, {"kind": "hidden"}])).apply(m, ctx)
    ...                                                                 # doctest: +SKIP
    """

    config_cls = DistillConfig
    stage = Stage.TRAINING
    needs = frozenset({DataNeed.TRAIN})
    may_follow = frozenset({Stage.QUANTIZATION})  # fine-tuning a fake-quant model is QAT

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        specs = config.loss_specs()
        if ctx.data.is_embedding:
            check_embedding_losses(specs, config, ctx.data.name)
        lm = ctx.data.task == "causal-lm"
        lm_only = sorted({spec.kind for spec in specs} & LM_LOSS_KINDS)
        if lm_only and not lm:
            raise CompressKitError(
                f"distill: losses {', '.join(lm_only)} are token-level losses of causal "
                f"language models but {ctx.data.name} is a {ctx.data.task} task; use kd"
            )
        monitor = resolve_monitor(config.train, ctx.data, what="distill")
        needs_teacher = any(spec.kind != "task" for spec in specs)
        teacher = load_teacher(config.teacher, causal_lm=lm) if config.teacher else ctx.teacher
        if teacher is None and needs_teacher:
            raise CompressKitError(
                "distill: no teacher in the context; set teacher: PATH, or alpha: 1 to "
                "fine-tune on labels only"
            )
        if not needs_teacher:
            teacher = None
        device = ctx.device
        teacher_device = _device_of(teacher)
        model_device = _device_of(model)
        model.to(device)
        if teacher is not None:
            teacher.to(device)
        try:
            torch.manual_seed(ctx.seed)
            example = tuple(x.to(device) for x in ctx.example_inputs)
            objective: DistillObjective | LMDistillObjective
            metric_fn: Any
            if lm:
                # Logits of a whole vocabulary per position are never cached or kept whole.
                objective = LMDistillObjective(
                    specs, model, teacher, example_inputs=example, seed=ctx.seed
                )
                data = ctx.data
                metric_fn = get_task(ctx.data.task).validation(teacher)
            else:
                objective = DistillObjective(specs, model, teacher, example_inputs=example)
                data = self._maybe_cache(objective, ctx, example)
                if ctx.data.is_embedding:
                    assert teacher is not None  # every embedding loss reads the teacher
                    metric_fn = TeacherCosine(teacher)
                else:
                    metric_fn = TeacherAgreement(teacher)
            stop_at = self._stop_at(ctx, monitor, teacher, device)
            with objective.student_taps, objective.teacher_taps or contextlib.nullcontext():
                history = train(
                    model,
                    data,
                    config.train,
                    objective=objective.as_objective(),
                    metric_fn=metric_fn,
                    stop_at=stop_at,
                    seed=ctx.seed,
                    runtime=Runtime(device),
                    description="distill",
                )
        finally:
            if teacher is not None:
                teacher.to(teacher_device)
        model.to(model_device)
        ctx.record(
            history=history.as_dict(),
            distill={
                **objective.describe(),
                "teacher": config.teacher or "input",
                "stop_at": stop_at,
            },
        )
        return model

    def _maybe_cache(self, objective: DistillObjective, ctx: Context, example: Any) -> Any:
        mode = self.config.cache_teacher
        if objective.teacher is None or mode == "never":
            return ctx.data
        if ctx.data.dynamic_sequence:
            if mode == "always":
                raise CompressKitError(
                    "distill: cache_teacher: always needs fixed-shape inputs, but "
                    f"{ctx.data.name} pads each batch to its own length; use auto or never"
                )
            return ctx.data
        size = objective.cache_bytes(example, len(ctx.data.train))  # type: ignore[arg-type]
        limit = self.config.cache_max_mb * 2**20
        if mode == "auto" and size > limit:
            status(
                f"distill: teacher outputs need {size / 2**20:.0f} MB > cache_max_mb "
                f"{self.config.cache_max_mb:.0f}; running the teacher every step"
            )
            return ctx.data
        objective.build_cache(ctx.data.train, ctx.device)
        return dataclasses.replace(ctx.data, train=IndexedDataset(ctx.data.train))

    def _stop_at(
        self,
        ctx: Context,
        monitor: str,
        teacher: nn.Module | None,
        device: torch.device,
    ) -> float | None:
        """The val metric at which the policy budget is met (budget-based early stop)."""
        train_config = self.config.train
        budget = ctx.budget
        if not train_config.stop_at_budget or budget is None:
            return None
        if monitor == "log_likelihood":
            task = get_task(ctx.data.task)
            val = [to_device(b, device) for b in ctx.data.loader("val", batch_size=8)]
            return task.stop_value(
                monitor,
                budget,
                lambda: task.validation(None)(teacher, val),  # type: ignore[arg-type]
            )
        if monitor == "cosine":
            return budget.min_cosine
        if monitor == "agreement":
            return budget.min_agreement
        if budget.max_accuracy_drop is None or teacher is None:
            return None
        loader = [to_device(b, device) for b in ctx.data.loader("val", batch_size=256)]
        return evaluate_accuracy(teacher, loader) - budget.max_accuracy_drop


def _device_of(model: nn.Module | None) -> torch.device:
    if model is None:
        return torch.device("cpu")
    return next((p.device for p in model.parameters()), torch.device("cpu"))
