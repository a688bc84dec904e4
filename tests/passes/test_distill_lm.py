"""Token-level LM distillation: every loss is 0 at student == teacher with finite
gradients otherwise, chunked logits equal whole ones, and the losses train a student
through the distill pass and the shared loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from compresskit.context import Context
from compresskit.distill import lm_losses as LM
from compresskit.distill.lm_objective import LMDistillObjective, token_sums
from compresskit.errors import CompressKitError
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_decoder import PruneDecoderWidth, PruneDecoderWidthConfig
from compresskit.testing import tiny_data
from compresskit.testing.tiny_lm import tiny_gpt2, tiny_llama, tiny_lm_bundle, tiny_tokenizer
from compresskit.training.loop import TrainConfig

TOKEN_LOSSES = {
    "forward_kl": lambda s, t: LM.forward_kl(s, t),
    "forward_kl_t2": lambda s, t: LM.forward_kl(s, t, 2.0),
    "reverse_kl": lambda s, t: LM.reverse_kl(s, t),
    "jsd": lambda s, t: LM.generalized_jsd(s, t, 0.5),
    "jsd_0": lambda s, t: LM.generalized_jsd(s, t, 0.0),
    "jsd_1": lambda s, t: LM.generalized_jsd(s, t, 1.0),
    "skew_kl": lambda s, t: LM.skew_kl(s, t, 0.1),
    "skew_reverse_kl": lambda s, t: LM.skew_reverse_kl(s, t, 0.1),
    "taid": lambda s, t: LM.token_taid(s, t, 0.6),
}
OBJECTIVE_SPECS = [
    {"kind": "task"},
    {"kind": "kd", "temperature": 2.0},
    {"kind": "forward_kl"},
    {"kind": "reverse_kl"},
    {"kind": "jsd", "beta": 0.3},
    {"kind": "skew_kl", "alpha": 0.1},
    {"kind": "skew_reverse_kl", "alpha": 0.1},
    {"kind": "taid"},
    {"kind": "on_policy", "lmbda": 1.0, "prompt_tokens": 4, "max_new_tokens": 6},
    {"kind": "hidden"},
]


@pytest.fixture(scope="module")
def bundle():
    return tiny_lm_bundle(tiny_tokenizer(), seq_len=16)


def ctx_for(bundle, teacher=None) -> Context:
    return Context(data=bundle, teacher=teacher, example_inputs=bundle.example_inputs(2))


@pytest.mark.parametrize("name", sorted(TOKEN_LOSSES))
def test_token_losses_vanish_at_equality_with_finite_gradients(name: str) -> None:
    fn = TOKEN_LOSSES[name]
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 50, generator=generator) * 3
    assert float(fn(teacher.clone(), teacher).abs().max()) < 1e-5
    student = torch.randn(12, 50, generator=generator, requires_grad=True)
    loss = fn(student, teacher)
    assert loss.shape == (12,) and bool((loss > 1e-4).all())
    loss.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_skew_kl_is_bounded_by_the_skew() -> None:
    teacher = torch.tensor([[20.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0, 20.0]])  # nearly disjoint distributions
    assert float(LM.forward_kl(student, teacher)) > 15
    assert float(LM.skew_kl(student, teacher, 0.1)) <= -math.log(0.1) + 1e-6
    assert float(LM.skew_reverse_kl(student, teacher, 0.1)) <= -math.log(0.1) + 1e-6


def test_chunked_logits_equal_whole_logits_in_value_and_gradient() -> None:
    student, teacher = tiny_llama(), tiny_llama(seed=1)
    ids = torch.randint(2, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    hidden_t = teacher.model(ids).last_hidden_state.reshape(-1, 32).detach()
    targets = ids.reshape(-1)

    def losses(s, t, y):
        return torch.stack([LM.reverse_kl(s, t), LM.next_token_ce(s, y)], -1)

    results = []
    for chunk in (30, 7):
        student.zero_grad()
        hidden_s = student.model(ids).last_hidden_state.reshape(-1, 32)
        total = token_sums(
            losses, hidden_s, hidden_t, targets, student.lm_head, teacher.lm_head, chunk=chunk
        )
        total.sum().backward()
        results.append((total.detach(), student.lm_head.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    whole = losses(
        student(ids).logits.reshape(-1, 128), teacher(ids).logits.reshape(-1, 128), targets
    )
    torch.testing.assert_close(results[0][0], whole.sum(0).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", OBJECTIVE_SPECS, ids=lambda s: s["kind"])
def test_objective_terms_vanish_for_a_copy_and_train_a_different_student(spec, bundle) -> None:
    teacher = tiny_llama(seed=0)
    example = bundle.example_inputs(2)
    ids, labels = next(iter(bundle.loader("train", batch_size=4)))
    config = DistillConfig(losses=[spec])
    twin = copy.deepcopy(teacher)
    same = LMDistillObjective(config.loss_specs(), twin, teacher, example_inputs=example)
    value = same.loss(twin, (ids,), labels)
    if spec["kind"] != "task":
        assert abs(float(sum(value.values()))) < 1e-5
    student = tiny_llama(seed=2)
    objective = LMDistillObjective(config.loss_specs(), student, teacher, example_inputs=example)
    loss = sum(objective.loss(student, (ids,), labels).values())
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert float(loss.detach()) > 1e-4 and grads and all(torch.isfinite(g).all() for g in grads)


def test_on_policy_samples_are_the_students_and_deterministic(bundle) -> None:
    teacher, example = tiny_llama(), bundle.example_inputs(2)
    ids, labels = next(iter(bundle.loader("train", batch_size=2)))
    spec = {"kind": "on_policy", "lmbda": 1.0, "prompt_tokens": 4, "max_new_tokens": 5}
    values = []
    for _ in range(2):
        student = tiny_llama(seed=3)
        objective = LMDistillObjective(
            DistillConfig(losses=[spec]).loss_specs(), student, teacher, example_inputs=example
        )
        values.append(float(objective.loss(student, (ids,), labels)["on_policy"]))
    assert values[0] == values[1] > 0
    with pytest.raises(CompressKitError, match="exceed the window of 16 tokens"):
        LMDistillObjective(
            DistillConfig(losses=[{**spec, "max_new_tokens": 20}]).loss_specs(),
            tiny_llama(),
            teacher,
            example_inputs=example,
        )


def test_distill_pass_recovers_a_pruned_student(bundle) -> None:
    teacher = tiny_llama(seed=0)
    ctx = ctx_for(bundle, teacher)
    student = PruneDecoderWidth(PruneDecoderWidthConfig(mlp=0.5, hidden=0.25)).apply(
        copy.deepcopy(teacher), ctx
    )
    config = DistillConfig(
        losses=[{"kind": "forward_kl"}, {"kind": "hidden", "weight": 0.1}],
        train=TrainConfig(steps=20, eval_every=10, lr=1e-2, batch_size=8),
    )
    ctx = ctx_for(bundle, teacher)
    before = ctx.data  # the pass must not change the data
    student = Distill(config).apply(student, ctx)
    history = ctx.records["history"]["epochs"]
    assert ctx.data is before
    assert history[-1]["parts"]["forward_kl"] < history[0]["parts"]["forward_kl"]
    assert {"log_likelihood", "perplexity", "agreement"} <= set(history[-1]["metrics"])
    assert ctx.records["distill"]["terms"][1]["pairs"][0] == ["model.layers.0", "model.layers.0"]


def test_bad_inputs_are_one_line(bundle) -> None:
    teacher, example = tiny_llama(), bundle.example_inputs(2)
    with pytest.raises(CompressKitError, match="the nkd loss does not apply to a causal-lm"):
        LMDistillObjective(
            DistillConfig(losses=[{"kind": "nkd"}]).loss_specs(),
            tiny_llama(),
            teacher,
            example_inputs=example,
        )
    with pytest.raises(CompressKitError, match="vocabulary has 200 tokens but the student's 128"):
        LMDistillObjective(
            DistillConfig(losses=[{"kind": "forward_kl"}]).loss_specs(),
            tiny_llama(),
            tiny_llama(vocab_size=200),
            example_inputs=example,
        )
    digits = tiny_data()
    with pytest.raises(CompressKitError, match="forward_kl are token-level losses"):
        Distill(DistillConfig(losses=[{"kind": "forward_kl"}])).apply(
            tiny_gpt2(), Context(data=digits, teacher=None, example_inputs=digits.example_inputs(2))
        )
