"""The limits a candidate must stay within to be called good (a policy's ``budget``).

It lives below every other module so that tasks (which judge a candidate against it),
training (which stops once it is met) and policies (which declare it) share one type.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Budget(BaseModel):
    """Limits a candidate must stay within to be called good in the report.

    >>> Budget(max_accuracy_drop=0.01).max_accuracy_drop
    0.01
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="absolute drop in accuracy vs the baseline (0.01 = 1 point); "
        "classification tasks only",
    )
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="lowest top-1 agreement with the baseline"
    )
    min_cosine: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="embedding tasks only: lowest mean cosine of a candidate's embeddings "
        "to the baseline's on the evaluation split (and the val cosine to the teacher at "
        "which train.stop_at_budget stops)",
    )
    max_perplexity_increase: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="causal language models only: largest relative perplexity increase "
        "over the baseline (0.15 = +15%)",
    )
    min_int8_coverage: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="lowest share of MACs ONNX Runtime must run in integer / low-bit kernels",
    )
