from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from contract import PassContract
from prune_helpers import assert_exports, assert_reloads, context
from pydantic import ValidationError
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.models.size import count_macs, count_params
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig, prunable_widths
from compresskit.pruning.sizing import Meter
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.testing import TinyBranchyCNN, TinyCNN, TinyTransformer


def prune(model: nn.Module, data, **config) -> tuple[nn.Module, dict]:
    ctx = context(data, model)
    pruned = PruneChannels(PruneChannelsConfig(**config)).apply(model, ctx)
    return pruned, ctx.records


def test_every_coupling_is_cut_together(tiny, tmp_path: Path) -> None:
    """Residual add, concatenation, depthwise and grouped convs, BatchNorm."""
    torch.manual_seed(0)
    model, records = prune(TinyBranchyCNN(width=16), tiny, ratio=0.5)
    widths = prunable_widths(model)
    for name in ("stem.0", "res.0", "depthwise", "pointwise", "grouped"):
        assert widths[name] == 8, (name, widths)
    assert widths["branch_a"] + widths["branch_b"] == 8  # the concatenation is halved as one
    assert model.depthwise.groups == model.depthwise.out_channels == 8
    assert model.bn.num_features == 8 and widths["head"] == 4
    assert records["widths"]["stem.0"] == [16, 8]
    assert records["macs"][1] < 0.5 * records["macs"][0]
    assert_exports(model, tiny, tmp_path)
    assert_reloads(model, tiny, tmp_path, "compresskit.testing.tiny:TinyBranchyCNN")


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale", "random"])
def test_each_criterion_prunes_and_runs(importance, trained_tiny_cnn, tiny) -> None:
    model, records = prune(copy.deepcopy(trained_tiny_cnn), tiny, ratio=0.5, importance=importance)
    assert records["widths"]["features.3"] == [16, 8]
    assert model(*tiny.example_inputs(4)).shape == (4, 4)
    assert all(p.grad is None for p in model.parameters())  # statistics do not leak


def test_criteria_choose_different_channels(trained_tiny_cnn, tiny) -> None:
    kept = {}
    for importance in ("l2", "taylor", "random"):
        model, _ = prune(copy.deepcopy(trained_tiny_cnn), tiny, ratio=0.5, importance=importance)
        kept[importance] = model.features[3].weight.detach().clone()
    assert not torch.equal(kept["l2"], kept["taylor"]) or not torch.equal(
        kept["l2"], kept["random"]
    )


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_size_target_is_reached_within_rounding(kind, tiny) -> None:
    torch.manual_seed(0)
    model = TinyBranchyCNN(width=32)
    measure = {"macs": lambda m: count_macs(m, tiny.example_inputs(1)), "params": count_params}
    before = measure[kind](model)
    pruned, records = prune(model, tiny, target={kind: 0.5}, round_to=4)
    fraction = measure[kind](pruned) / before
    assert 0.35 <= fraction <= 0.5, fraction
    assert records["steps"][-1]["goal"] == pytest.approx(0.5 * before)
    assert all(prunable_widths(pruned)[n] % 4 == 0 for n in ("stem.0", "res.0", "grouped"))


def test_layer_ratios_and_ignore(tiny) -> None:
    model, _ = prune(
        TinyCNN(width=8), tiny, ratio=0.25, layer_ratios={"features.3": 0.75}, ignore=["head"]
    )
    widths = prunable_widths(model)
    assert widths["features.0"] == 6 and widths["features.3"] == 4


def test_custom_attention_loses_whole_heads(tiny, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, records = prune(TinyTransformer(), tiny, ratio=0.5, heads={"blocks.*.attn.[qkv]": 4})
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.head_dim == 4
        assert block.attn.q.out_features == block.attn.o.in_features == 8
        assert block.fc1.out_features == 16
        assert block.norm1.normalized_shape == (16,)  # the residual stream keeps its width
    assert records["heads"]["blocks.0.attn"] == [4, 2]
    assert_exports(model, tiny, tmp_path)
    reloaded = assert_reloads(model, tiny, tmp_path, "compresskit.testing.tiny:TinyTransformer")
    assert reloaded.blocks[1].attn.num_heads == 2


def test_steps_with_distillation_from_the_teacher(trained_tiny_cnn, tiny) -> None:
    loader = tiny.loader("eval", batch_size=128)
    one_shot, _ = prune(copy.deepcopy(trained_tiny_cnn), tiny, ratio=0.75, importance="random")
    stepped, records = prune(
        copy.deepcopy(trained_tiny_cnn),
        tiny,
        ratio=0.75,
        importance="random",
        steps=2,
        finetune={"alpha": 0.5, "train": {"epochs": 2, "lr": 5e-3, "batch_size": 32}},
    )
    assert [s["step"] for s in records["steps"]] == [1, 2]
    assert all(len(s["finetune"]["epochs"]) == 2 for s in records["steps"])
    assert prunable_widths(stepped)["features.3"] in (4, 5)  # 16 * 0.25, within rounding
    assert evaluate_accuracy(stepped, loader) > evaluate_accuracy(one_shot, loader)


def test_latency_target_prunes_until_the_measurement_fits(tiny, monkeypatch) -> None:
    # A stand-in clock proportional to MACs: the search logic, not this machine's speed.
    monkeypatch.setattr(Meter, "latency", lambda self, m: count_macs(m, self.example_inputs) / 1e5)
    model = TinyBranchyCNN(width=32)
    start = count_macs(model, tiny.example_inputs(1)) / 1e5
    pruned, records = prune(model, tiny, target={"latency_ms": 0.4 * start, "step": 0.1})
    last = records["steps"][-1]
    assert last["latency"] <= 0.4 * start
    assert len(last["tried"]) >= 2 and last["tried"][-2][1] > 0.4 * start  # stopped at first fit


def test_latency_target_already_met_is_measured_and_says_so(tiny) -> None:
    model, records = prune(TinyCNN(), tiny, target={"latency_ms": 1e4})  # exported and timed
    assert records["steps"][0]["latency"] > 0
    assert "nothing pruned" in records["steps"][0]["note"]
    assert records["widths"]["features.3"] == [16, 16]


def test_unreachable_latency_target_is_an_error(tiny, monkeypatch) -> None:
    monkeypatch.setattr(Meter, "latency", lambda self, m: 5.0)
    with pytest.raises(CompressKitError, match="relax the target"):
        prune(TinyCNN(), tiny, target={"latency_ms": 1.0, "step": 0.45})


def test_ratio_outside_zero_one_is_rejected() -> None:
    for ratio in (0.0, 1.0, 1.3):
        with pytest.raises(ValidationError, match="ratio"):
            PruneChannelsConfig(ratio=ratio)
    with pytest.raises(ValidationError, match="exactly one"):
        PruneChannelsConfig(target={"macs": 0.5, "params": 0.5})


@pytest.mark.parametrize("field", ["ignore", "layer_ratios", "heads"])
def test_pattern_that_matches_nothing_is_an_error(field, tiny) -> None:
    value = {"ignore": ["backbone.*"], "layer_ratios": {"backbone.*": 0.5}, "heads": {"x.q": 2}}
    with pytest.raises(CompressKitError, match="matches no module") as error:
        prune(TinyCNN(), tiny, **{field: value[field]})
    assert "\n" not in str(error.value)


def test_removing_every_channel_is_an_error(tiny) -> None:
    with pytest.raises(CompressKitError, match="every channel of features"):
        prune(TinyCNN(width=8), tiny, ratio=0.9, round_to=8)


class _Mix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.w)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.mix = _Mix()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.mix(self.conv1(x))).mean((2, 3)))


def test_module_torch_pruning_cannot_follow_is_named(tiny) -> None:
    with pytest.raises(CompressKitError, match=r"fails in mix .*add 'conv1'"):
        prune(_Untraceable(), tiny, ratio=0.5)
    model, _ = prune(_Untraceable(), tiny, ratio=0.5, ignore=["conv1"])  # the fix works
    assert model(*tiny.example_inputs(2)).shape == (2, 4)


class TestPruneChannelsContract(PassContract):
    pass_name = "prune_channels"
    settings = {"ratio": 0.5}
