from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compresskit.budget import Budget
from compresskit.errors import CompressKitError
from compresskit.tasks import get_task
from compresskit.tasks.causal_lm import coarse_kl, greedy_continuations, top_tokens
from compresskit.testing.tiny_lm import tiny_llama, tiny_lm_bundle, tiny_tokenizer

TASK = get_task("causal-lm")


def _logits(probabilities: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray([probabilities], dtype=np.float32))


def test_metrics_on_a_hand_computed_case() -> None:
    # Two scored positions over 3 tokens; labels [_, 1, 2] are the next tokens.
    candidate = _logits([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    baseline = _logits([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    labels = np.array([[0, 1, 2]])
    evaluation = TASK.evaluation()
    evaluation.update(candidate, labels, TASK.reference(baseline))
    metrics = evaluation.result()
    assert metrics["perplexity"] == pytest.approx(math.sqrt(4 * 5), rel=1e-5)
    assert metrics["loss"] == pytest.approx((math.log(4) + math.log(5)) / 2, rel=1e-5)
    assert metrics["token_accuracy"] == 0.0
    assert metrics["agreement"] == 0.5
    # KL(baseline || candidate): 0.25 log(0.5) + 0.5 log(2) at position 0, 0 at position 1.
    assert metrics["kl"] == pytest.approx(0.25 * math.log(2) / 2, rel=1e-5)


def test_baseline_against_itself_and_ignored_labels() -> None:
    logits = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32)
    labels = np.array([[1, 2, 3, -100, 4], [0, 0, 1, 1, 2]])
    evaluation = TASK.evaluation()
    evaluation.update(logits, labels, TASK.reference(logits))
    metrics = evaluation.result()
    assert metrics["agreement"] == 1.0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-9)
    expected = float(TASK.loss(torch.from_numpy(logits), torch.from_numpy(labels)))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_coarse_kl_is_exact_with_every_token_and_a_lower_bound_otherwise() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(3, 50, generator=generator) * 2
    cand = base + torch.randn(3, 50, generator=generator)
    log_b, log_c = base.log_softmax(-1), cand.log_softmax(-1)
    exact = (log_b.exp() * (log_b - log_c)).sum(-1).double()
    full = coarse_kl(log_c, top_tokens(base, k=50))
    torch.testing.assert_close(full, exact, rtol=1e-4, atol=1e-6)
    for k in (1, 5, 20):
        approx = coarse_kl(log_c, top_tokens(base, k=k))
        assert bool((approx <= exact + 1e-6).all()) and bool((approx >= -1e-9).all())


def test_judge_against_the_perplexity_budget() -> None:
    base = {"perplexity": 17.0, "agreement": 1.0, "kl": 0.0}
    close = {"perplexity": 18.0, "agreement": 0.8, "kl": 0.1}
    far = {"perplexity": 20.0, "agreement": 0.7, "kl": 0.3}
    budget = Budget(max_perplexity_increase=0.15)
    assert TASK.judge(close, base, budget).met is True
    verdict = TASK.judge(far, base, budget)
    assert verdict.met is False and verdict.code == "perplexity_over_budget"
    assert "+17.6%" in verdict.clause
    assert TASK.judge(close, base, Budget()).met is None
    low = TASK.judge(close, base, Budget(max_perplexity_increase=0.15, min_agreement=0.9))
    assert low.met is False and low.code == "agreement_below_budget"
    assert TASK.unused_budget(Budget(max_perplexity_increase=0.1)) == []
    assert TASK.unused_budget(Budget(min_cosine=0.9))  # foreign to this task
    assert not TASK.primary.higher_is_better


def test_validation_and_stop_value_on_a_tiny_model() -> None:
    model = tiny_llama()
    bundle = tiny_lm_bundle(tiny_tokenizer(), seq_len=16)
    batches = list(bundle.loader("val", batch_size=3))
    metrics = TASK.validation(model)(model, batches)
    assert metrics["agreement"] == 1.0
    with torch.no_grad():
        ids = torch.cat([b[0] for b in batches])
        expected = float(TASK.loss(model(ids).logits, ids))
    assert metrics["log_likelihood"] == pytest.approx(-expected, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    other = tiny_llama(seed=1)
    assert TASK.validation(model)(other, batches)["agreement"] < 1.0
    stop = TASK.stop_value(
        "log_likelihood", Budget(max_perplexity_increase=0.1), lambda: {"perplexity": 10.0}
    )
    assert stop == pytest.approx(-math.log(11.0))
    assert TASK.monitor(None, what="distill") == "log_likelihood"
    with pytest.raises(CompressKitError, match="use monitor: log_likelihood"):
        TASK.monitor("accuracy", what="distill")


def test_output_checks_are_one_line() -> None:
    model = tiny_llama()
    ids = torch.zeros(2, 4, dtype=torch.long)
    TASK.check_output(model(ids), batch=2, data="d", classes=100)
    with pytest.raises(CompressKitError, match=r"needs logits of shape \(batch, seq, vocab\)"):
        TASK.check_output(torch.zeros(2, 5), batch=2, data="d", classes=None)
    with pytest.raises(CompressKitError, match="tokenizer of d has 500"):
        TASK.check_output(model(ids), batch=2, data="d", classes=500)


def test_greedy_continuations_are_text_and_deterministic() -> None:
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    first = greedy_continuations(model, tokenizer, ["the cat"], max_new_tokens=4)
    again = greedy_continuations(model, tokenizer, ["the cat"], max_new_tokens=4)
    assert first == again and first[0]["prompt"] == "the cat"
    assert isinstance(first[0]["continuation"], str) and first[0]["continuation"]
