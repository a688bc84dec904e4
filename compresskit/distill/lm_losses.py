"""Token-level distillation losses for causal language models: their policy configs and
the per-token divergences behind them.

Every divergence takes student and teacher logits of the same positions, ``(tokens,
vocab)``, and returns one value per token; it is 0 where the two distributions agree.
``teacher`` is P and ``student`` Q_theta below.

- ``forward_kl``: KL(P || Q), mode-covering (classic KD; ``kd`` on a causal-lm task is this
  with Hinton's temperature).
- ``reverse_kl``: KL(Q || P), mode-seeking (MiniLLM's objective).
- ``jsd``: generalized Jensen-Shannon of GKD (Agarwal et al., ICLR 2024),
  ``beta KL(P || M) + (1 - beta) KL(Q || M)`` with ``M = beta P + (1 - beta) Q``;
  ``beta`` 0 and 1 are forward and reverse KL (TRL's convention).
- ``skew_kl`` / ``skew_reverse_kl``: DistiLLM (Ko et al., ICML 2024), KL(P || a P + (1-a) Q)
  and KL(Q || a Q + (1-a) P): the mixture keeps the log-ratio bounded by -log(a).
- ``taid`` (:class:`compresskit.distill.losses.TAIDLoss`): KL(P_t || Q) with P_t the softmax
  of ``(1 - t) stopgrad(student) + t teacher`` logits, per token.
- ``on_policy``: GKD's on-policy distillation: with probability ``lmbda`` a batch's
  continuations are sampled from the student (after a prompt cut from the window) and the
  divergence is taken on the sampled tokens, scored by the teacher; otherwise on the
  window itself (off-policy).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F


class _LMLoss(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(default=1.0, ge=0)


class ForwardKLLoss(_LMLoss):
    """Token-level KL(teacher || student) (mode-covering)."""

    kind: Literal["forward_kl"] = "forward_kl"
    temperature: float = Field(default=1.0, gt=0)


class ReverseKLLoss(_LMLoss):
    """Token-level KL(student || teacher) (mode-seeking)."""

    kind: Literal["reverse_kl"] = "reverse_kl"
    temperature: float = Field(default=1.0, gt=0)


class JSDLoss(_LMLoss):
    """GKD's generalized Jensen-Shannon divergence; ``beta`` 0 / 1: forward / reverse KL."""

    kind: Literal["jsd"] = "jsd"
    beta: float = Field(default=0.5, ge=0, le=1)


class SkewKLLoss(_LMLoss):
    """DistiLLM's skew KL: KL(teacher || alpha teacher + (1 - alpha) student)."""

    kind: Literal["skew_kl"] = "skew_kl"
    alpha: float = Field(default=0.1, ge=0, lt=1)


class SkewReverseKLLoss(_LMLoss):
    """DistiLLM's skew reverse KL: KL(student || alpha student + (1 - alpha) teacher)."""

    kind: Literal["skew_reverse_kl"] = "skew_reverse_kl"
    alpha: float = Field(default=0.1, ge=0, lt=1)


class OnPolicyLoss(_LMLoss):
    """GKD: a ``lmbda`` share of batches trains on continuations the student samples
    (``max_new_tokens`` after the window's first ``prompt_tokens``), scored by the teacher
    with ``divergence``; the other batches use the window (off-policy)."""

    kind: Literal["on_policy"] = "on_policy"
    lmbda: float = Field(default=0.5, ge=0, le=1, description="share of on-policy batches")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "jsd"
    beta: float = Field(default=0.5, ge=0, le=1, description="of divergence: jsd")
    prompt_tokens: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=1.0, gt=0, description="of the student's sampling")


LM_LOSS_KINDS = frozenset(
    {"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "on_policy"}
)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """log(weight a + (1 - weight) b) from log a and log b."""
    return torch.logsumexp(
        torch.stack([log_a + math.log(weight), log_b + math.log1p(-weight)]), dim=0
    )


def forward_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    s = F.log_softmax(student / temperature, -1)
    t = F.log_softmax(teacher / temperature, -1)
    return _kl(t, s) * temperature**2


def reverse_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    s = F.log_softmax(student / temperature, -1)
    t = F.log_softmax(teacher / temperature, -1)
    return _kl(s, t) * temperature**2


def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    s, t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    if beta == 0:
        return _kl(t, s)
    if beta == 1:
        return _kl(s, t)
    mixture = _mix(t, s, beta)
    return beta * _kl(t, mixture) + (1 - beta) * _kl(s, mixture)


def skew_kl(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    s, t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    return _kl(t, _mix(t, s, alpha) if alpha > 0 else s)


def skew_reverse_kl(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    s, t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    return _kl(s, _mix(s, t, alpha) if alpha > 0 else t)


def token_taid(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    target = F.log_softmax((1 - t) * student.detach() + t * teacher, -1)
    return _kl(target, F.log_softmax(student, -1))


def next_token_ce(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per token (labels of -100 give 0)."""
    return F.cross_entropy(student, targets, ignore_index=-100, reduction="none")
