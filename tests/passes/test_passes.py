from __future__ import annotations

import copy

import pytest
import torch

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.distill import Distill, DistillConfig, kd_loss
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig, prunable_widths
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.quantization.modules import QuantConv2d, QuantLinear
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.testing import TinyCNN, TinyResidualCNN
from compresskit.training.loop import TrainConfig


def context(tiny, model=None) -> Context:
    teacher = copy.deepcopy(model).eval() if model is not None else None
    return Context(data=tiny, teacher=teacher, example_inputs=tiny.example_inputs(2))


@pytest.mark.parametrize("model_cls", [TinyCNN, TinyResidualCNN])
def test_pruning_makes_layers_physically_smaller(model_cls, tiny) -> None:
    model = model_cls(width=16)
    before = prunable_widths(model)
    ctx = context(tiny)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(model, ctx)
    after = prunable_widths(pruned)
    assert after["head"] == before["head"]  # the classifier keeps its classes
    inner = [name for name in before if name != "head"]
    assert all(after[name] == before[name] // 2 for name in inner), after
    assert pruned(tiny.example_inputs(3)[0]).shape == (3, 4)
    assert ctx.records["widths"]["head"] == [4, 4]


def test_pruning_round_to_and_ignore(tiny) -> None:
    model = TinyCNN(width=12)
    config = PruneChannelsConfig(ratio=0.3, round_to=4, ignore=["features.0"])
    pruned = PruneChannels(config).apply(model, context(tiny))
    widths = prunable_widths(pruned)
    assert widths["features.0"] == 12
    assert widths["features.3"] % 4 == 0 and widths["features.3"] < 24


def test_pruning_pattern_that_matches_nothing_is_an_error(tiny) -> None:
    with pytest.raises(CompressKitError, match="matches no module"):
        PruneChannels(PruneChannelsConfig(ignore=["backbone.*"])).apply(TinyCNN(), context(tiny))


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    logits = torch.randn(8, 5)
    assert float(kd_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits, torch.randn(8, 5), 4.0)) > 0


def test_distillation_recovers_a_pruned_model(trained_tiny_cnn, tiny) -> None:
    ctx = context(tiny, trained_tiny_cnn)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.6, importance="random")).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    loader = tiny.loader("eval", batch_size=128)
    before = evaluate_accuracy(pruned, loader)
    config = DistillConfig(alpha=0.3, train=TrainConfig(epochs=4, lr=5e-3, batch_size=32))
    distilled = Distill(config).apply(pruned, ctx)
    assert evaluate_accuracy(distilled, loader) > before
    assert len(ctx.records["history"]["epochs"]) == 4


def test_quantize_converts_layers_and_stays_close_to_float(trained_tiny_cnn, tiny) -> None:
    ctx = context(tiny)
    quantized = Quantize(QuantizeConfig()).apply(copy.deepcopy(trained_tiny_cnn), ctx)
    kinds = [type(m) for m in quantized.modules()]
    assert kinds.count(QuantConv2d) == 2 and kinds.count(QuantLinear) == 1
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in quantized.modules())
    loader = tiny.loader("eval", batch_size=128)
    float_acc = evaluate_accuracy(trained_tiny_cnn, loader)
    assert evaluate_accuracy(quantized, loader) >= float_acc - 0.03


def test_quantize_exclude_keeps_layers_float(trained_tiny_cnn, tiny) -> None:
    ctx = context(tiny)
    quantized = Quantize(QuantizeConfig(exclude=["head"])).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    assert type(quantized.head) is torch.nn.Linear
    assert ctx.records["float_layers"] == ["head"]


def test_quantizing_twice_is_an_error(trained_tiny_cnn, tiny) -> None:
    ctx = context(tiny)
    once = Quantize(QuantizeConfig()).apply(copy.deepcopy(trained_tiny_cnn), ctx)
    with pytest.raises(CompressKitError, match="already quantized"):
        Quantize(QuantizeConfig()).apply(once, ctx)
