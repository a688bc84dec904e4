"""Causal language modelling: the model outputs next-token logits at every position
``(batch, seq, vocab)``, judged by perplexity on fixed evaluation windows and by how
closely it follows the baseline (next-token top-1 agreement, mean token KL).

Batches are ``(input_ids, labels)`` with ``labels`` the window's own ids (see
:mod:`compresskit.data.text`); position ``t`` is scored on token ``t + 1``, so every
metric covers positions ``0 .. seq - 2`` of each window. Labels of -100 are ignored.

The baseline's outputs on a 49,152-token vocabulary are too large to keep for every
evaluation position (98 KB per position in fp16), so :meth:`CausalLM.reference` keeps its
top-:data:`REFERENCE_TOP_K` log-probabilities and their token ids. The KL is then taken
between the two distributions coarsened to those tokens plus one bucket holding the rest
of the mass: by the log-sum inequality that never exceeds the exact KL, and equals it when
the candidate spreads the tail as the baseline does; with top-64 the bucket is typically a
few percent of the mass. Top-1 agreement needs only the first of those ids and is exact.

>>> from compresskit.tasks import get_task
>>> task = get_task("causal-lm")
>>> task.judge({"perplexity": 18.0, "agreement": 0.93, "kl": 0.05},
...            {"perplexity": 17.0, "agreement": 1.0, "kl": 0.0},
...            Budget(max_perplexity_increase=0.15)).met
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    Task,
    model_device,
    shape_of,
)
from compresskit.tasks.classification import LogitsTask, logits_of

REFERENCE_TOP_K = 64
IGNORE = -100
# Positions scored per forward in validation (bounds the logits held at once).
POSITIONS_PER_FORWARD = 1024

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "The first person to walk on the Moon was",
    "In mathematics, a prime number is",
    "The Roman Empire was",
)


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of each next token, and how many were scored."""
    targets = labels[:, 1:].reshape(-1).long()
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum")
    return total, int((targets != IGNORE).sum())


@dataclass(frozen=True)
class TopTokens:
    """What is kept of the baseline's logits per position: the top-k log-probabilities
    (descending) and their token ids, both ``(batch, seq, k)``."""

    log_probs: np.ndarray
    ids: np.ndarray


def top_tokens(logits: torch.Tensor, k: int = REFERENCE_TOP_K) -> TopTokens:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
    return TopTokens(values.numpy().astype(np.float32), ids.numpy().astype(np.int32))


def coarse_kl(log_probs: torch.Tensor, reference: TopTokens) -> torch.Tensor:
    """Per position: KL(baseline || candidate) over the baseline's top-k tokens plus one
    bucket for every other token (a lower bound of the exact KL; see the module doc)."""
    ref = torch.from_numpy(reference.log_probs).double()
    ids = torch.from_numpy(reference.ids).long()
    cand = log_probs.double().gather(-1, ids)
    p_ref = ref.exp()
    head = (p_ref * (ref - cand)).sum(-1)
    tail_ref = (1 - p_ref.sum(-1)).clamp(min=0)
    tail_cand = (1 - cand.exp().sum(-1)).clamp(min=1e-30)
    tail = torch.where(
        tail_ref > 1e-12, tail_ref * (tail_ref.clamp(min=1e-30).log() - tail_cand.log()), 0.0
    )
    return head + tail


class _LMEvaluation(Evaluation):
    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0
        self.correct = 0
        self.agree = 0
        self.kl = 0.0
        self.positions = 0

    def update(self, outputs: np.ndarray, labels: np.ndarray, reference: Any) -> None:
        if not isinstance(reference, TopTokens):
            raise TypeError("a causal-lm reference is TopTokens (CausalLM.reference)")
        logits = torch.from_numpy(np.asarray(outputs, dtype=np.float32))
        labels_t = torch.from_numpy(np.asarray(labels)).long()
        for row in range(logits.shape[0]):  # one window at a time: bounded memory
            row_logits = logits[row : row + 1]
            nll, count = next_token_nll(row_logits, labels_t[row : row + 1])
            self.nll += float(nll)
            self.tokens += count
            log_probs = torch.log_softmax(row_logits[0, :-1], dim=-1)
            pred = log_probs.argmax(-1)
            target = labels_t[row, 1:]
            self.correct += int(((pred == target) & (target != IGNORE)).sum())
            ref = TopTokens(reference.log_probs[row, :-1], reference.ids[row, :-1])
            self.agree += int((pred == torch.from_numpy(ref.ids[:, 0]).long()).sum())
            self.kl += float(coarse_kl(log_probs, ref).sum())
            self.positions += len(pred)

    def result(self) -> dict[str, float]:
        loss = self.nll / max(self.tokens, 1)
        positions = max(self.positions, 1)
        return {
            "perplexity": math.exp(loss),
            "loss": loss,
            "token_accuracy": self.correct / max(self.tokens, 1),
            "agreement": self.agree / positions,
            "kl": self.kl / positions,
        }


class CausalLM(LogitsTask):
    """Next-token logits, scored by perplexity (and agreement and KL vs the baseline)."""

    name = "causal-lm"
    description = "next-token logits (batch, seq, vocab), judged by perplexity on fixed windows"
    labelled = True  # the windows' own tokens are the targets
    class_outputs = True  # the last axis is a distribution over tokens
    monitors = ("log_likelihood", "agreement")
    columns = (
        MetricColumn("perplexity", "ppl", "perplexity", higher_is_better=False),
        MetricColumn("agreement", "agree", "next-token top-1 agreement with the baseline"),
        MetricColumn("kl", "kl", "mean token KL to the baseline", higher_is_better=False),
    )
    primary = columns[0]
    measured_note = (
        "Perplexity is measured with ONNX Runtime on the fixed evaluation windows (every "
        "next token); agreement is next-token top-1 agreement with the baseline, KL the mean "
        f"per-token KL from the baseline over its top-{REFERENCE_TOP_K} tokens plus one "
        "bucket for the rest (a lower bound of the exact KL). Exported folders are timed "
        "in onnxruntime-genai: TTFT is the time to the first token of a prompt of that "
        "length, tok/s the decode rate, and the latency columns one decode step."
    )
    budget_fields = frozenset({"max_perplexity_increase"})
    eval_batch_size = 8

    def check_output(self, output: Any, *, batch: int, data: str, classes: int | None) -> None:
        logits = logits_of(output)
        if logits is None or logits.dim() != 3 or logits.shape[0] != batch:
            raise CompressKitError(
                f"the model outputs {shape_of(output)} on {data}, but causal-lm needs logits "
                "of shape (batch, seq, vocab); load the model with its language-modelling head "
                "(AutoModelForCausalLM)"
            )
        if classes is not None and logits.shape[2] < classes:
            raise CompressKitError(
                f"the model's logits cover {logits.shape[2]} tokens but the tokenizer of "
                f"{data} has {classes}; use the tokenizer the model was trained with"
            )

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total, count = next_token_nll(outputs, labels)
        return total / max(count, 1)

    def sensitivity_loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        # The LM loss, not the KL to the reference: at the unpruned model that KL is at
        # its minimum and its gradient is zero, so gradient criteria would see nothing.
        return self.loss(outputs, labels)

    def validation(self, teacher: nn.Module | None) -> MetricFn:
        return LMValidation(teacher, self)

    def stop_value(
        self, monitor: str, budget: Budget, teacher_metrics: Callable[[], dict[str, float]]
    ) -> float | None:
        if monitor == "log_likelihood":
            if budget.max_perplexity_increase is None:
                return None
            allowed = teacher_metrics()["perplexity"] * (1 + budget.max_perplexity_increase)
            return -math.log(allowed)
        return super().stop_value(monitor, budget, teacher_metrics)

    def reference(self, outputs: np.ndarray) -> Any:
        return top_tokens(torch.from_numpy(np.asarray(outputs, dtype=np.float32)))

    def evaluation(self) -> Evaluation:
        return _LMEvaluation()

    def judge(
        self, metrics: dict[str, float], baseline: dict[str, float], budget: Budget
    ) -> Judgement:
        ppl, base = metrics["perplexity"], baseline["perplexity"]
        change = ppl / base - 1
        limit = budget.max_perplexity_increase
        detail = (
            f"perplexity {ppl:.3f} ({change * 100:+.1f}% vs baseline {base:.3f}; agreement "
            f"{metrics['agreement']:.4f}, kl {metrics['kl']:.4f})"
        )
        if limit is None:
            met, code = None, "no_perplexity_budget"
            clause = f"perplexity {change * 100:+.1f}% (no budget)"
        else:
            met = change <= limit + 1e-12
            code = "perplexity_within_budget" if met else "perplexity_over_budget"
            word = "within" if met else "OVER"
            clause = f"perplexity {word} budget ({change * 100:+.1f}%, allowed +{limit * 100:.1f}%)"
        if budget.min_agreement is not None and metrics["agreement"] < budget.min_agreement:
            met, code = False, "agreement_below_budget"
            clause += f"; agreement {metrics['agreement']:.4f} BELOW {budget.min_agreement:g}"
        return Judgement(clause, met, code, [detail])


class LMValidation:
    """Validation metrics of a language model being trained: mean token log-likelihood
    and perplexity on the val windows, and next-token agreement with the teacher (whose
    top-1 tokens are computed once: the val loader's order is fixed)."""

    def __init__(self, teacher: nn.Module | None, task: Task) -> None:
        self.teacher = teacher
        self.task = task
        self.teacher_top1: list[torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, batches: Batches) -> dict[str, float]:
        device = model_device(model)
        was_training = model.training
        model.eval()
        windows = [b[0] for b in batches]
        labels = [b[-1] for b in batches]
        if self.teacher is not None and self.teacher_top1 is None:
            self.teacher_top1 = [self._top1(self.teacher, ids, device)[0] for ids in windows]
        nll, tokens, agree, positions = 0.0, 0, 0, 0
        for i, (ids, y) in enumerate(zip(windows, labels, strict=True)):
            top1, batch_nll, count = self._top1(model, ids, device, y)
            nll, tokens = nll + batch_nll, tokens + count
            if self.teacher_top1 is not None:
                agree += int((top1 == self.teacher_top1[i]).sum())
                positions += top1.numel()
        model.train(was_training)
        log_likelihood = -nll / max(tokens, 1)
        metrics = {"log_likelihood": log_likelihood, "perplexity": math.exp(-log_likelihood)}
        if self.teacher_top1 is not None:
            metrics["agreement"] = agree / max(positions, 1)
        return metrics

    def _top1(
        self,
        model: nn.Module,
        ids: torch.Tensor,
        device: torch.device,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float, int]:
        """Top-1 next tokens of positions ``0 .. seq - 2`` (and the summed NLL of labels)."""
        rows = max(1, POSITIONS_PER_FORWARD // max(ids.shape[1], 1))
        tops, nll, count = [], 0.0, 0
        for start in range(0, len(ids), rows):
            chunk = ids[start : start + rows].to(device)
            logits = self.task.adapt(model(chunk), (chunk,))
            tops.append(logits[:, :-1].argmax(-1).cpu())
            if labels is not None:
                total, n = next_token_nll(logits, labels[start : start + rows].to(device))
                nll, count = nll + float(total), count + n
        return torch.cat(tops), nll, count


@torch.no_grad()
def greedy_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    *,
    max_new_tokens: int = 32,
) -> list[dict[str, str]]:
    """Each prompt's greedy continuation (text), for the report to show next to numbers."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    results = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        ids = encoded["input_ids"].to(device)
        output = model.generate(
            ids,
            attention_mask=encoded.get("attention_mask", torch.ones_like(ids)).to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        text = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        results.append({"prompt": prompt, "continuation": text})
    model.train(was_training)
    return results
