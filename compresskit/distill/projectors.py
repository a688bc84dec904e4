"""Learned projections from a student's hidden width to its teacher's (FitNets-style).

A projector is a linear map along the one axis where the shapes differ (channels of a
conv feature map, the hidden size of a token sequence). It is trained with the student
and then dropped: it is never attached to the model, so it never reaches the export.

>>> proj = build_projector((8, 16, 4, 4), (8, 32, 4, 4), where="features", allowed=True)
>>> proj(torch.zeros(8, 16, 4, 4)).shape
torch.Size([8, 32, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compresskit.errors import CompressKitError


class ChannelProjector(nn.Module):
    """``nn.Linear`` applied along axis ``dim`` (no bias: a change of basis)."""

    def __init__(self, dim: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.dim = dim
        self.in_features, self.out_features = in_features, out_features
        self.linear = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(self.dim, -1)).movedim(-1, self.dim)


def channel_dim(shape: Sequence[int]) -> int:
    """The feature axis of a same-shaped pair: 1 for conv maps, the last otherwise."""
    return 1 if len(shape) in (4, 5) else len(shape) - 1


def differing_dim(student: Sequence[int], teacher: Sequence[int], where: str) -> int | None:
    """The one non-batch axis where the shapes differ (None when they are equal)."""
    if len(student) != len(teacher):
        raise CompressKitError(
            f"distill: {where}: the student gives shape {tuple(student)} and the teacher "
            f"{tuple(teacher)}; map layers whose outputs have the same rank"
        )
    differ = [i for i, (a, b) in enumerate(zip(student, teacher, strict=True)) if a != b and i]
    if len(differ) > 1:
        raise CompressKitError(
            f"distill: {where}: shapes {tuple(student)} and {tuple(teacher)} differ in more "
            "than one axis, which a projector cannot bridge; map other layers"
        )
    return differ[0] if differ else None


def build_projector(
    student: Sequence[int], teacher: Sequence[int], *, where: str, allowed: bool
) -> ChannelProjector | None:
    """A projector from the student's shape to the teacher's, or None if they match."""
    dim = differing_dim(student, teacher, where)
    if dim is None:
        return None
    if not allowed:
        raise CompressKitError(
            f"distill: {where}: the student gives shape {tuple(student)} and the teacher "
            f"{tuple(teacher)}; set projector: true or map layers of equal width"
        )
    return ChannelProjector(dim, student[dim], teacher[dim])
