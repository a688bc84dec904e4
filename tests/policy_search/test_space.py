"""The search space read off a model, the chain of passes a choice becomes, the budget's
constraints and how the final training is fitted into the time left."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compresskit.budget import Budget
from compresskit.context import Context
from compresskit.pipeline import run_pipeline
from compresskit.policy_search.final import Plan, fitting, ranked
from compresskit.policy_search.front import Trial
from compresskit.policy_search.goal import Goal
from compresskit.policy_search.space import (
    MAX_RATIO,
    Choice,
    SearchSpace,
    Settings,
    choice_nodes,
)
from compresskit.testing import TinyCNN, tiny_data


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class TinyResNet(nn.Module):
    """A stem and three residual blocks in a Sequential: depth a search may cut."""

    def __init__(self, width: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(*(Residual(width) for _ in range(3)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class LoneBlockNet(nn.Module):
    """One identity block as an attribute of the model, between two width changes (the
    Fashion-MNIST ResNet's layer1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.layer1 = Residual(8)
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


SETTINGS = Settings("cpu-ort", 8, Budget(max_accuracy_drop=0.1))


def test_stages_blocks_and_precisions_of_a_model() -> None:
    data = tiny_data()
    space = SearchSpace.of(TinyResNet(), data.example_inputs(2))
    names = [name for name, _ in space.stages]
    assert names == ["stem", "blocks"]  # the top-level modules holding the layers
    assert dict(space.stages)["blocks"] == ("blocks.0.conv", "blocks.1.conv", "blocks.2.conv")
    assert space.removable_blocks == 2  # every block of the stack but one
    assert space.precisions == ("float", "int8", "int8-by-latency")
    assert space.boldest() == {
        "ratio_stem": MAX_RATIO,
        "ratio_blocks": MAX_RATIO,
        "remove_blocks": 2,
        "precision": "int8-by-latency",
    }
    plain = SearchSpace.of(TinyCNN(), data.example_inputs(2), quantize=False, depth=False)
    assert plain.removable_blocks == 0 and plain.precisions == ("float",)
    assert plain.boldest() == {"ratio_stage1": MAX_RATIO, "ratio_stage2": MAX_RATIO}
    assert SearchSpace(stages=(), removable_blocks=0, precisions=("float",)).boldest() is None
    assert [layers for _, layers in plain.stages] == [("features.0",), ("features.3",)]


def test_a_lone_block_outside_a_container_may_be_removed() -> None:
    data = tiny_data()
    space = SearchSpace.of(LoneBlockNet(), data.example_inputs(2), quantize=False)
    assert space.removable_blocks == 1
    choice = Choice((0.0, 0.0, 0.0), remove_blocks=1, precision="float")
    chain = choice_nodes(space, choice, "t0", epochs=1, settings=SETTINGS)
    model = LoneBlockNet().eval()
    ctx = Context(data=data, teacher=model, example_inputs=data.example_inputs(2))
    (candidate,) = run_pipeline(chain, model, ctx)
    assert isinstance(candidate.model.layer1, nn.Identity)
    assert isinstance(model.layer1, Residual)  # the input model is not modified


def test_a_choice_is_a_chain_of_passes_that_runs() -> None:
    data = tiny_data()
    model = TinyResNet().eval()
    space = SearchSpace.of(model, data.example_inputs(2))
    choice = Choice((0.25, 0.5), remove_blocks=1, precision="int8")
    pipeline = choice_nodes(space, choice, "t5", epochs=1, settings=SETTINGS)
    assert [(n.id, n.pass_.name) for n in pipeline.nodes] == [
        ("t5-prune", "prune_channels"),
        ("t5-blocks", "prune_blocks"),
        ("t5-distill", "distill"),
        ("t5", "quantize"),
    ]
    prune = pipeline.nodes[0].pass_.config
    assert prune.layer_ratios == {
        "stem": 0.25,
        "blocks.0.conv": 0.5,
        "blocks.1.conv": 0.5,
        "blocks.2.conv": 0.5,
    }
    torch.manual_seed(0)
    ctx = Context(data=data, teacher=model, example_inputs=data.example_inputs(2))
    (candidate,) = run_pipeline(pipeline, model, ctx)
    assert candidate.name == "t5"
    assert len(candidate.model.blocks) == 2
    assert candidate.model(data.example_inputs(3)[0]).shape == (3, 4)
    assert len(model.blocks) == 3  # the input model is not modified

    unpruned = choice_nodes(
        space, Choice((0.0, 0.0), 0, "float"), "t6", epochs=1, settings=SETTINGS
    )
    assert [n.pass_.name for n in unpruned.nodes] == ["distill"]


def test_violations_say_how_far_each_limit_is_missed() -> None:
    goal = Goal(max_accuracy_drop=0.02, min_speedup=2.0, max_latency_ms=1.0)
    assert goal.violations(0.90, 0.91, latency_ms=0.5, baseline_ms=2.0) == pytest.approx(
        [-0.01, -2.0, -0.5]
    )
    assert goal.violations(0.85, 0.91, latency_ms=1.5, baseline_ms=2.0) == pytest.approx(
        [0.04, 2.0 - 2.0 / 1.5, 0.5]
    )
    cosine = Goal(min_cosine=0.95, min_speedup=1.5)
    assert cosine.metric == "cosine" and cosine.budget() == Budget(min_cosine=0.95)
    assert cosine.violations(0.97, 1.0, latency_ms=1.0, baseline_ms=3.0) == pytest.approx(
        [-0.02, -1.5]
    )


def _trial(number: int, latency: float, violations: list[float]) -> Trial:
    return Trial(
        number=number,
        params={},
        description="",
        state="complete",
        quality=0.9,
        latency_ms=latency,
        feasible=all(v <= 0 for v in violations),
        violations=violations,
        seconds=10.0,
        train_seconds=4.0,
    )


def test_the_final_training_is_fitted_into_the_time_left() -> None:
    front = [_trial(0, 3.0, [-1]), _trial(1, 1.0, [0.5]), _trial(2, 2.0, [-1]), _trial(3, 5, [0.1])]
    assert [t.number for t in ranked(front)] == [2, 0, 3, 1]
    space = SearchSpace(stages=(), removable_blocks=0, precisions=("float",))
    plan = Plan(space, SETTINGS, Goal(max_accuracy_drop=0.1, min_speedup=1), 1, 4, final=2)
    # Each trial: 6 s besides training, 4 s of training per epoch; the baseline: 6 s more.
    chosen = fitting(front, plan, seconds_left=1000)
    assert chosen is not None and [t.number for t in chosen[0]] == [2, 0] and chosen[1] == 4
    one = fitting(front, plan, seconds_left=6 + 6 + 16 + 1)
    assert one is not None and [t.number for t in one[0]] == [2] and one[1] == 4
    shorter = fitting(front, plan, seconds_left=6 + 6 + 8 + 1)
    assert shorter is not None and [t.number for t in shorter[0]] == [2] and shorter[1] == 2
    assert fitting(front, plan, seconds_left=10) is None


def test_a_trial_the_proxy_puts_near_the_budget_is_trained_before_slower_safe_ones() -> None:
    goal = Goal(max_accuracy_drop=0.01, min_speedup=2)
    assert goal.default_slack() == 0.01
    assert Goal(min_cosine=0.97).default_slack() == pytest.approx(0.03)
    safe_slow, safe_fast = _trial(0, 3.0, [-0.01, -1]), _trial(1, 2.0, [-0.005, -2])
    near = _trial(2, 1.0, [0.008, -4])  # 0.8 points short of the budget, fast enough
    far = _trial(3, 0.8, [0.05, -5])  # 5 points short: beyond the slack
    too_slow = _trial(4, 4.0, [0.001, 0.5])  # near on quality, but misses the speed limit
    front = [safe_slow, safe_fast, near, far, too_slow]
    assert near.promising(0.01) and not far.promising(0.01) and not too_slow.promising(0.01)
    assert not safe_fast.promising(0.01)  # within budget: not "near"
    assert [t.number for t in ranked(front, slack=0.01)] == [1, 2, 0, 3, 4]
    assert [t.number for t in ranked(front)] == [1, 0, 2, 3, 4]  # no slack: as before
    space = SearchSpace(stages=(), removable_blocks=0, precisions=("float",))
    plan = Plan(space, SETTINGS, goal, 1, 4, final=2, slack=0.01)
    chosen = fitting(front, plan, seconds_left=1000)
    assert chosen is not None and [t.number for t in chosen[0]] == [1, 2]
