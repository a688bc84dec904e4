"""Fine-tuning with knowledge distillation from a teacher, through the shared loop.

The teacher is the model as it entered the pipeline (``ctx.teacher``) or a checkpoint
(``teacher: path``). ``losses`` composes weighted terms (task, kd, nkd, dts, taid,
hidden, attention, rkd_distance, rkd_angle; see :mod:`compresskit.distill.losses`).
Without ``losses``, the short form is ``alpha * CE(labels) + (1 - alpha) * KD(T)``:
``alpha = 1`` is plain fine-tuning, ``alpha = 0`` needs no labels at all.

Where the task's outputs are not class distributions (an embedding task) only the losses
that compare outputs or layers (output, hidden, attention, rkd_*) apply; validation is the
task's own (accuracy and agreement, or the cosine of the embeddings to the teacher's).

Projectors and hooks are training-only: hooks are removed when training ends and
projectors are never attached to the model, so neither reaches the export.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
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
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import DistillRecord
from compresskit.progress import status
from compresskit.tasks import Task
from compresskit.tasks.base import model_device, to_device
from compresskit.training.loop import Runtime, TrainConfig, train

__all__ = ["Distill", "DistillConfig", "kd_loss", "training_on"]

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

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.TRAIN})


def load_teacher(path: str, *, trust_factory: bool = False, causal_lm: bool = False) -> nn.Module:
    from compresskit.models.causal_lm import load_causal_lm
    from compresskit.models.loading import load_model

    teacher = (
        load_causal_lm(path).model
        if causal_lm
        else load_model(path, trust_factory=trust_factory).model
    )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@contextlib.contextmanager
def training_on(
    device: torch.device, model: nn.Module, teacher: nn.Module | None
) -> Iterator[None]:
    """``model`` and ``teacher`` on the run's ``device`` while a pass trains (pass
    ``Runtime(device)`` to ``train``); each goes back where it was afterwards, also when
    training fails, so the next pass finds the models as it left them."""
    home = model_device(model)
    teacher_home = model_device(teacher) if teacher is not None else None
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    try:
        yield
    finally:
        if teacher is not None:
            teacher.to(teacher_home)
        model.to(home)


def check_losses(
    specs: Sequence[Any], task: Task, *, short_form: bool, what: str = "distill"
) -> None:
    """Refuse class-based losses (and the alpha/temperature ``short_form``) where the
    task's outputs are not class distributions (embeddings), and label losses without
    labels. ``what`` is the pass that asks."""
    if not task.class_outputs:
        if short_form:
            raise CompressKitError(
                f"{what}: alpha/temperature distil class logits, but the {task.name} task has "
                f"none; {task.unlabelled_recovery}"
            )
        wrong = sorted({spec.kind for spec in specs} & CLASS_LOSSES)
        if wrong:
            raise CompressKitError(
                f"{what}: losses {', '.join(wrong)} need classes but this is the {task.name} "
                f"task; {task.unlabelled_recovery}"
            )
    if not task.labelled and any(spec.kind == "task" for spec in specs):
        raise CompressKitError(task.needs_labels(f"{what}'s task loss"))


@register_pass("distill")
class Distill(Pass[DistillConfig]):
    """Train the model against the teacher with the policy's weighted losses.

    Example::

        Distill(DistillConfig(losses=[{"kind": "kd"}, {"kind": "hidden"}])).apply(m, ctx)
    """

    config_cls = DistillConfig
    effects = Effects(trains=True)
    record_cls = DistillRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        specs = config.loss_specs()
        task = ctx.task
        check_losses(specs, task, short_form=not config.losses)
        lm = task.name == "causal-lm"
        lm_only = sorted({spec.kind for spec in specs} & LM_LOSS_KINDS)
        if lm_only and not lm:
            raise CompressKitError(
                f"distill: losses {', '.join(lm_only)} are token-level losses of causal "
                f"language models but {ctx.data.name} is a {task.name} task; use kd"
            )
        monitor = task.monitor(config.train.monitor, what="distill")
        needs_teacher = any(spec.kind != "task" for spec in specs)
        teacher = (
            load_teacher(config.teacher, trust_factory=ctx.trust_factory, causal_lm=lm)
            if config.teacher
            else ctx.teacher
        )
        if teacher is None and needs_teacher:
            raise CompressKitError(
                "distill: no teacher in the context; set teacher: PATH, or alpha: 1 to "
                "fine-tune on labels only"
            )
        if not needs_teacher:
            teacher = None
        device = ctx.device
        with training_on(device, model, teacher):
            torch.manual_seed(ctx.seed)
            example = tuple(x.to(device) for x in ctx.example_inputs)
            objective: DistillObjective | LMDistillObjective
            if lm:
                # Logits of a whole vocabulary per position are never cached or kept whole.
                objective = LMDistillObjective(
                    specs, model, teacher, example_inputs=example, seed=ctx.seed
                )
                data = ctx.data
            else:
                objective = DistillObjective(specs, model, teacher, example_inputs=example)
                data = self._maybe_cache(objective, ctx, example)
            metric_fn = task.validation(teacher)
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
        if not self.config.train.stop_at_budget or ctx.budget is None:
            return None

        def teacher_metrics() -> dict[str, float]:
            if teacher is None:
                return {}
            loader = [
                to_device(b, device)
                for b in ctx.data.loader("val", batch_size=ctx.task.eval_batch_size)
            ]
            return ctx.task.validation(None)(teacher, loader)

        return ctx.task.stop_value(monitor, ctx.budget, teacher_metrics)
