"""Embedding: the model outputs a vector per sample (a sentence encoder), judged by the
cosine of each embedding to the baseline's. There are no labels: batches carry
placeholders that nothing reads."""

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
    Inputs,
    Judgement,
    MetricColumn,
    MetricFn,
    Task,
    TeacherMatch,
    at_least,
    shape_of,
)


def embeddings_of(raw: Any, inputs: Inputs) -> torch.Tensor | None:
    """A tensor output as it is; a Hugging Face output's ``sentence_embedding`` or
    ``pooler_output``, else its ``last_hidden_state`` mean-pooled over the attention mask
    (the second input, when there is one), the sentence-transformers convention."""
    if isinstance(raw, torch.Tensor):
        return raw
    get = raw.get if isinstance(raw, dict) else lambda key: getattr(raw, key, None)
    for key in ("sentence_embedding", "embeddings", "pooler_output"):
        value = get(key)
        if isinstance(value, torch.Tensor):
            return value
    hidden = get("last_hidden_state")
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
        if len(inputs) > 1 and inputs[1].shape == hidden.shape[:2]:
            mask = inputs[1].to(hidden.dtype).unsqueeze(-1)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return hidden.mean(1)
    if isinstance(raw, tuple | list) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    return None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` to the same row of ``b`` (flattened per sample)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.clip((a * b).sum(axis=1) / norms, -1.0, 1.0)


def probe(outputs: torch.Tensor) -> torch.Tensor:
    """0 in value, a fixed random direction per sample in gradient.

    The cosine distance to the model's own output is at its minimum, so its gradient is
    zero and gradient (Taylor) importance would score nothing. Adding this term gives the
    gradient of a random projection of the output instead: ``|activation x gradient|``
    then estimates (up to a constant) how far removing a unit moves the output."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(outputs.shape, generator=generator).to(outputs)
    return ((outputs - outputs.detach()) * direction).flatten(1).sum(1).mean()


class _EmbeddingEvaluation(Evaluation):
    def __init__(self) -> None:
        self.cosines: list[np.ndarray] = []
        self.squared = 0.0
        self.count = 0

    def update(self, outputs: np.ndarray, labels: np.ndarray, reference: Any) -> None:
        self.cosines.append(cosine_rows(outputs, reference))
        diff = np.asarray(outputs, np.float64) - np.asarray(reference, np.float64)
        self.squared += float((diff**2).sum())
        self.count += diff.size

    def result(self) -> dict[str, float]:
        cosine = np.concatenate(self.cosines)
        return {
            "cosine": float(cosine.mean()),
            "cosine_p5": float(np.percentile(cosine, 5)),
            "cosine_min": float(cosine.min()),
            "mse": self.squared / max(self.count, 1),
        }


class Embedding(Task):
    """Embeddings, scored by cosine to the baseline's (mean, 5th percentile, min) and MSE."""

    name = "embedding"
    description = "a vector per sample (batch, width), judged by cosine to the baseline"
    labelled = False
    class_outputs = False
    monitors = ("cosine",)
    columns = (
        MetricColumn("cosine", "cos", "cosine to baseline"),
        MetricColumn("cosine_p5", "cos p5", "5th percentile of the cosine to baseline"),
    )
    primary = columns[0]
    measured_note = (
        "Cosine is measured with ONNX Runtime on the held-out evaluation split: each "
        "sample's embedding against the baseline's, mean (cos) and 5th percentile (cos p5)."
    )
    unlabelled_recovery = "recover with a distill node (losses: [{kind: output, metric: cosine}])"
    budget_fields = frozenset({"min_cosine"})

    def adapt(self, raw: Any, inputs: Inputs) -> torch.Tensor:
        embeddings = embeddings_of(raw, inputs)
        if embeddings is None:
            return super().adapt(raw, inputs)
        return embeddings

    def check_output(self, output: Any, *, batch: int, data: str, classes: int | None) -> None:
        embeddings = embeddings_of(output, ())
        if embeddings is None or embeddings.dim() != 2 or embeddings.shape[0] != batch:
            raise CompressKitError(
                f"the model outputs {shape_of(output)} on {data}, but the embedding task "
                "needs one vector per sample, of shape (batch, width)"
            )

    def sensitivity_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        out, ref = outputs.flatten(1), reference.flatten(1)
        distance = 1 - F.cosine_similarity(out, ref.to(out.dtype), dim=1).mean()
        return distance + probe(out)

    def validation(self, teacher: nn.Module | None) -> MetricFn:
        if teacher is None:
            raise CompressKitError(
                "an embedding task validates by cosine to the teacher, and there is none"
            )
        return _TeacherCosine(teacher, self)

    def stop_value(
        self, monitor: str, budget: Budget, teacher_metrics: Callable[[], dict[str, float]]
    ) -> float | None:
        return budget.min_cosine if monitor == "cosine" else None

    def evaluation(self) -> Evaluation:
        return _EmbeddingEvaluation()

    def judge(
        self, metrics: dict[str, float], baseline: dict[str, float], budget: Budget
    ) -> Judgement:
        detail = (
            f"p5 {metrics['cosine_p5']:.4f}, min {metrics['cosine_min']:.4f}, "
            f"mse {metrics['mse']:.3g}"
        )
        return at_least("cosine", metrics["cosine"], budget.min_cosine, detail)


class _TeacherCosine(TeacherMatch):
    """Validation metric: the mean cosine of the model's embeddings to the teacher's."""

    def __call__(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        return {"cosine": self.mean_score(model, list(batches), sample_cosines)}


def sample_cosines(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Each sample's cosine of ``got`` to ``expected`` (flattened, in float64)."""
    return F.cosine_similarity(got.flatten(1).double(), expected.flatten(1).double(), dim=1)
