from __future__ import annotations

import pytest
import torch
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import Pass, PassConfig, register_pass
from compresskit.pipeline import Pipeline, run_pipeline
from compresskit.policies import pipeline_of, policy_of
from compresskit.records import Line, PassRecord, RecordError, Table
from compresskit.testing import TinyCNN


class ScaleConfig(PassConfig):
    factor: float = 2.0


class ScaleRecord(PassRecord):
    factor: float

    def summary(self) -> list[Line | Table]:
        return [Line(text=f"scaled the head by {self.factor:g}")]


@register_pass("test_scale_head")
class ScaleHead(Pass[ScaleConfig]):
    """Multiplies the classifier weights in place: a leak across branches would show."""

    config_cls = ScaleConfig
    record_cls = ScaleRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        with torch.no_grad():
            model.head.weight.mul_(self.config.factor)
        ctx.record(factor=self.config.factor)
        return model


@pytest.fixture
def ctx(tiny) -> Context:
    return Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))


def test_branches_get_their_own_copies(ctx: Context) -> None:
    model = TinyCNN()
    original = model.head.weight.detach().clone()
    pipeline = (
        Pipeline()
        .add("double", ScaleHead(ScaleConfig(factor=2.0)))
        .add("then-triple", ScaleHead(ScaleConfig(factor=3.0)), after="double")
        .add("then-halve", ScaleHead(ScaleConfig(factor=0.5)), after="double")
        .add("alone", ScaleHead(ScaleConfig(factor=5.0)))
    )
    candidates = {c.name: c for c in run_pipeline(pipeline, model, ctx)}
    assert list(candidates) == ["then-triple", "then-halve", "alone"]
    torch.testing.assert_close(model.head.weight, original)  # the input is untouched
    for name, factor in [("then-triple", 6.0), ("then-halve", 1.0), ("alone", 5.0)]:
        torch.testing.assert_close(candidates[name].model.head.weight, original * factor)
    assert [n.id for n in candidates["then-halve"].nodes] == ["double", "then-halve"]
    assert candidates["alone"].nodes[0].records == {"factor": 5.0}
    record = candidates["alone"].nodes[0].record
    assert isinstance(record, ScaleRecord) and record.summary()[0].text == "scaled the head by 5"


@register_pass("test_misrecording")
class Misrecording(Pass[ScaleConfig]):
    """Records a fact its record class does not declare."""

    config_cls = ScaleConfig
    record_cls = ScaleRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        ctx.record(factor=self.config.factor, facto=1.0)
        return model


def test_a_fact_the_record_does_not_declare_fails_at_the_node(ctx: Context) -> None:
    pipeline = Pipeline().add("typo", Misrecording(ScaleConfig()))
    with pytest.raises(RecordError, match="node 'typo' \\(test_misrecording\\): recorded 'facto'"):
        run_pipeline(pipeline, TinyCNN(), ctx)


def test_every_built_in_pass_declares_a_record_that_renders() -> None:
    from compresskit.passes import registered_passes

    for name, cls in registered_passes().items():
        if name.startswith("test_"):
            continue
        assert cls.record_cls is not PassRecord, name
        assert cls.record_cls.model_config.get("extra") == "forbid", name
        assert isinstance(cls.record_cls().summary(), list), name  # an empty record renders


def test_an_inner_node_marked_candidate_is_reported_as_it_was(ctx: Context) -> None:
    model = TinyCNN()
    original = model.head.weight.detach().clone()
    pipeline = (
        Pipeline()
        .add("double", ScaleHead(ScaleConfig(factor=2.0)), candidate=True)
        .add("then-triple", ScaleHead(ScaleConfig(factor=3.0)), after="double")
    )
    candidates = {c.name: c for c in run_pipeline(pipeline, model, ctx)}
    assert list(candidates) == ["double", "then-triple"]
    # The child changed its model in place; the candidate kept its own copy.
    torch.testing.assert_close(candidates["double"].model.head.weight, original * 2)
    torch.testing.assert_close(candidates["then-triple"].model.head.weight, original * 6)
    policy = policy_of(pipeline, "p")
    assert [n.candidate for n in policy.nodes] == [True, False]
    assert [n.id for n in pipeline_of(policy).candidates()] == ["double", "then-triple"]


def test_add_rejects_a_bad_node_and_keeps_the_graph() -> None:
    pipeline = Pipeline().add("a", ScaleHead(ScaleConfig()))
    with pytest.raises(CompressKitError, match="'missing' is not a node id"):
        pipeline.add("b", ScaleHead(ScaleConfig()), after="missing")
    assert [n.id for n in pipeline] == ["a"]


def test_data_needs_are_checked_before_running(tiny) -> None:
    from torch.utils.data import TensorDataset

    from compresskit.passes.quantize import Quantize, QuantizeConfig

    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    ctx = Context(
        data=type(tiny)(**{**vars(tiny), "calibration": empty}),
        teacher=None,
        example_inputs=tiny.example_inputs(2),
    )
    pipeline = Pipeline().add("q", Quantize(QuantizeConfig()))
    with pytest.raises(CompressKitError, match="needs calibration data"):
        run_pipeline(pipeline, TinyCNN(), ctx)
