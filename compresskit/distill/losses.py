"""Distillation losses: their policy configs (a union discriminated by ``kind``) and the
tensor functions behind them.

Every distillation term is 0 when the student's outputs equal the teacher's (NKD's
target term is shifted by a constant to get there; its gradients are the paper's).

>>> from compresskit.passes.distill import DistillConfig
>>> config = DistillConfig(losses=[{"kind": "task", "weight": 0.3}, {"kind": "kd", "weight": 0.7}])
>>> [loss.kind for loss in config.losses]
['task', 'kd']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from compresskit.distill.lm_losses import (
    ForwardKLLoss,
    JSDLoss,
    OnPolicyLoss,
    ReverseKLLoss,
    SkewKLLoss,
    SkewReverseKLLoss,
)
from compresskit.tasks import Task
from compresskit.tasks.base import Inputs

EPS = 1e-12


class LayerPair(BaseModel):
    """One student module distilled from one teacher module (by ``named_modules`` name)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    student: str
    teacher: str


Layers = Literal["auto", "last"] | list[LayerPair]


class _Loss(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    weight: float = Field(default=1.0, ge=0)


class TaskLoss(_Loss):
    """Cross-entropy on the labels."""

    kind: Literal["task"] = "task"


class KDLoss(_Loss):
    """Hinton's KL between temperature-softened teacher and student distributions."""

    kind: Literal["kd"] = "kd"
    temperature: float = Field(default=4.0, gt=0)


class NKDLoss(_Loss):
    """Normalised KD (Yang et al., "From Knowledge Distillation to Self-Knowledge
    Distillation", ICCV 2023): teacher-weighted CE on the target class plus KL between
    the renormalised non-target distributions. ``target: teacher`` uses the teacher's
    prediction as the target class (unlabelled data)."""

    kind: Literal["nkd"] = "nkd"
    temperature: float = Field(default=1.0, gt=0)
    gamma: float = Field(default=1.5, ge=0)
    target: Literal["label", "teacher"] = "label"


class DTSLoss(_Loss):
    """KD with a dynamic temperature (after "Dynamic Temperature Scheduler for Knowledge
    Distillation", Islam et al. 2025): a cosine schedule from ``t_max`` to ``t_min``,
    raised while the student's cross-entropy trails the teacher's (softer targets when
    the gap is wide), smoothed with momentum. The constants are compresskit's."""

    kind: Literal["dts"] = "dts"
    t_min: float = Field(default=1.0, gt=0)
    t_max: float = Field(default=8.0, gt=0)
    gap_scale: float = Field(default=1.0, ge=0, description="how much the CE gap raises T")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    target: Literal["label", "teacher"] = "label"

    @model_validator(mode="after")
    def _ordered(self) -> DTSLoss:
        if self.t_min > self.t_max:
            raise ValueError(f"t_min {self.t_min} is above t_max {self.t_max}")
        return self


class TAIDLoss(_Loss):
    """TAID (Shing et al., ICLR 2025): KL to a target interpolated in logit space from the
    student's own (detached) logits toward the teacher's; the interpolation ``t`` rises
    from ``t_start`` to ``t_end`` over training, faster while the loss keeps falling."""

    kind: Literal["taid"] = "taid"
    t_start: float = Field(default=0.4, ge=0, lt=1)
    t_end: float = Field(default=1.0, gt=0, le=1)
    alpha: float = Field(default=5e-4, ge=0, le=1, description="adaptive step size")
    beta: float = Field(default=0.99, ge=0, lt=1, description="momentum of the loss change")
    adaptive: bool = True


class OutputLoss(_Loss):
    """The model's outputs themselves, cosine or MSE: for models whose output is an
    embedding rather than logits (a sentence encoder), where KD's softmax means nothing
    and the metric users check is the cosine to the original's embedding."""

    kind: Literal["output"] = "output"
    metric: Literal["cosine", "mse"] = "cosine"


class HiddenLoss(_Loss):
    """Hidden states of mapped layers, MSE or cosine; a learned projector maps the
    student's width to the teacher's when they differ (training only)."""

    kind: Literal["hidden"] = "hidden"
    metric: Literal["mse", "cosine"] = "mse"
    layers: Layers = "auto"
    projector: bool = True


class AttentionLoss(_Loss):
    """MiniLM-style self-attention transfer: KL between the teacher's and the student's
    attention distributions of mapped attention modules (heads are averaged when their
    counts differ). Needs eager attention (modules that return their probabilities)."""

    kind: Literal["attention"] = "attention"
    layers: Layers = "last"


class RKDDistanceLoss(_Loss):
    """Relational KD (Park et al., CVPR 2019), distance-wise: pairwise distances of the
    batch's embeddings (default: the classifier's input), normalised by their mean."""

    kind: Literal["rkd_distance"] = "rkd_distance"
    layer: LayerPair | None = Field(default=None, description="default: the classifier input")


class RKDAngleLoss(_Loss):
    """Relational KD, angle-wise: the angles of embedding triplets."""

    kind: Literal["rkd_angle"] = "rkd_angle"
    layer: LayerPair | None = Field(default=None, description="default: the classifier input")


LossSpec = Annotated[
    TaskLoss
    | KDLoss
    | NKDLoss
    | DTSLoss
    | TAIDLoss
    | OutputLoss
    | HiddenLoss
    | AttentionLoss
    | RKDDistanceLoss
    | RKDAngleLoss
    | ForwardKLLoss
    | ReverseKLLoss
    | JSDLoss
    | SkewKLLoss
    | SkewReverseKLLoss
    | OnPolicyLoss,
    Field(discriminator="kind"),
]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton's distillation loss, scaled by T^2 so gradients keep their size across T."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)


def label_kd_loss(
    task: Task, teacher: nn.Module | None, *, alpha: float, temperature: float
) -> Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]:
    """``alpha * task loss(labels) + (1 - alpha) * KD(T)`` from ``teacher``'s outputs, as a
    training-loop loss: the short form that fine-tuning, QAT and distillation share."""
    if alpha < 1 and teacher is None:
        raise ValueError("label_kd_loss: alpha < 1 needs a teacher")

    def loss(student: nn.Module, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
        outputs = task.adapt(student(*inputs), inputs)
        value = alpha * task.loss(outputs, labels) if alpha > 0 else outputs.sum() * 0
        if alpha < 1:
            assert teacher is not None
            with torch.no_grad():
                target = task.adapt(teacher(*inputs), inputs)
            value = value + (1 - alpha) * kd_loss(outputs, target, temperature)
        return value

    return loss


def output_loss(student: torch.Tensor, teacher: torch.Tensor, metric: str) -> torch.Tensor:
    """1 - cosine along the last axis (mean over the rest), or MSE."""
    if metric == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=EPS)).mean()
    return F.mse_loss(student, teacher)


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    gamma: float = 1.5,
) -> torch.Tensor:
    """``-T_t log S_t`` on the target class plus ``gamma T^2 KL`` between the non-target
    distributions renormalised to sum to one. Both are shifted by constants (the teacher's
    own entropies) so the loss is 0 at student == teacher; the gradients are NKD's."""
    target = target.view(-1, 1)
    log_s = F.log_softmax(student_logits, dim=-1)
    log_t = F.log_softmax(teacher_logits, dim=-1).detach()
    weight = log_t.gather(1, target).exp()
    target_term = (weight * (log_t.gather(1, target) - log_s.gather(1, target))).mean()
    mask = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(1, target, True)
    # Non-target distributions: the target logit is removed before the softmax.
    log_s_non = F.log_softmax((student_logits / temperature).masked_fill(mask, -1e9), dim=-1)
    log_t_non = F.log_softmax((teacher_logits / temperature).masked_fill(mask, -1e9), dim=-1)
    t_non = log_t_non.exp().masked_fill(mask, 0.0)
    kl = (t_non * (log_t_non - log_s_non).masked_fill(mask, 0.0)).sum(-1).mean()
    return target_term + gamma * temperature**2 * kl


def taid_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """KL(p_t || q_student) with p_t = softmax((1 - t) stopgrad(student) + t teacher)."""
    mixed = (1 - t) * student_logits.detach() + t * teacher_logits
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1),
        F.log_softmax(mixed, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


class TAIDSchedule:
    """The interpolation ``t`` of TAID: at least linear from ``t_start`` to ``t_end``, and
    faster while the loss keeps falling (momentum of its relative change)."""

    def __init__(self, spec: TAIDLoss) -> None:
        self.spec = spec
        self.t = spec.t_start
        self.previous: float | None = None
        self.momentum = 0.0

    def update(self, loss: float, step: int, total: int) -> None:
        spec = self.spec
        linear = spec.t_start + (spec.t_end - spec.t_start) * min(step / max(total, 1), 1.0)
        if not spec.adaptive:
            self.t = linear
            return
        if self.previous is not None:
            change = (self.previous - loss) / (abs(self.previous) + 1e-15)
            self.momentum = spec.beta * self.momentum + (1 - spec.beta) * change
            delta = spec.alpha / (1 + math.exp(-self.momentum)) * (1 - self.t)
            self.t = min(spec.t_end, max(linear, self.t + delta))
        self.previous = loss


class DTSSchedule:
    """The temperature of DTS: cosine from ``t_max`` to ``t_min`` over training, scaled up
    by ``1 + gap_scale * tanh(max(gap, 0))`` where gap is the student's batch cross-entropy
    minus the teacher's, clamped to [t_min, t_max] and smoothed with momentum."""

    def __init__(self, spec: DTSLoss) -> None:
        self.spec = spec
        self.progress = 0.0
        self.temperature = spec.t_max

    def update(self, gap: float) -> float:
        spec = self.spec
        base = spec.t_min + 0.5 * (spec.t_max - spec.t_min) * (
            1 + math.cos(math.pi * self.progress)
        )
        wanted = min(
            max(base * (1 + spec.gap_scale * math.tanh(max(gap, 0.0))), spec.t_min), spec.t_max
        )
        self.temperature = spec.momentum * self.temperature + (1 - spec.momentum) * wanted
        return self.temperature


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    square = e.pow(2).sum(1)
    d = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=EPS).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the batch's pairwise distances, each normalised by its mean."""
    s, t = student.flatten(1), teacher.flatten(1).detach()
    with torch.no_grad():
        td = _pairwise_distances(t)
        td = td / td[td > 0].mean().clamp(min=EPS)
    sd = _pairwise_distances(s)
    sd = sd / sd[sd > 0].mean().clamp(min=EPS)
    return F.smooth_l1_loss(sd, td)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the cosines of the angles every embedding triplet forms."""
    s, t = student.flatten(1), teacher.flatten(1).detach()
    with torch.no_grad():
        ta = _angles(t)
    return F.smooth_l1_loss(_angles(s), ta)


def hidden_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, metric: str, channel_dim: int
) -> torch.Tensor:
    """MSE, or 1 - cosine along the channel axis, of same-shaped hidden states."""
    if metric == "cosine":
        return 1 - F.cosine_similarity(student, teacher.detach(), dim=channel_dim).mean()
    return F.mse_loss(student, teacher.detach())


def attention_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of attention rows ``[batch, heads, query, key]``; heads are
    averaged first when the counts differ (after head pruning)."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    teacher = teacher.detach()
    kl = teacher * (teacher.clamp(min=EPS).log() - student.clamp(min=EPS).log())
    return kl.sum(-1).mean()
