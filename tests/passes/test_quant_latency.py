"""Precision by measured latency: a layer (or block) stays float where the probe measures
int8 no faster, each float layer says why, and the mixed model must beat all-int8.

The probes here implement compresskit's own ProfileProbe protocol from the models they
are handed (which layers are int8), so that the decision can be checked without timing;
one test runs the real probe (ONNX Runtime's profiler) and checks only what it maps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from prune_helpers import ort_parity
from torch import nn

from compresskit.bench.probe import measure_costs
from compresskit.context import Context, ModelCost
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.passes.qat import QAT, QATConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.quantization.latency_plan import block_of, choose_by_latency
from compresskit.quantization.modules import QUANT_TYPES
from compresskit.testing import TinyBranchyCNN, TinyResidualCNN, tiny_data
from compresskit.training.loop import TrainConfig


class RuleProbe:
    """Per layer: 1.0 ms in float, 0.5 ms in int8 except the ``slow`` layers (2.0 ms);
    ``boundary`` ms more per float layer inside an int8 model (conversions)."""

    def __init__(self, slow: set[str], boundary: float = 0.0) -> None:
        self.slow, self.boundary, self.calls = slow, boundary, 0

    def __call__(self, models, example_inputs, *, target, batch, seconds, dynamic_sequence):
        self.calls += 1
        costs = []
        for model in models:
            quantized = any(isinstance(m, QUANT_TYPES) for m in model.modules())
            modules = {}
            for name, module in model.named_modules():
                if isinstance(module, QUANT_TYPES):
                    modules[name] = 2.0 if name in self.slow else 0.5
                elif isinstance(module, nn.Conv2d | nn.Linear):
                    modules[name] = 1.0 + (self.boundary if quantized else 0.0)
            costs.append(ModelCost(sum(modules.values()), modules))
        return costs


def _quantize(model, data, probe, pass_cls=Quantize, config_cls=QuantizeConfig, **config):
    ctx = Context(
        data=data, teacher=None, example_inputs=data.example_inputs(2), profile_probe=probe
    )
    torch.manual_seed(0)
    quantized = pass_cls(config_cls(**config)).apply(copy.deepcopy(model).eval(), ctx)
    return quantized, ctx.records


def test_a_layer_int8_is_slower_for_stays_float_and_says_why(tiny, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResidualCNN()
    probe = RuleProbe({"conv1"})
    quantized, records = _quantize(
        model, tiny, probe, precision_by_latency={"granularity": "layer"}
    )
    assert type(quantized.conv1) is nn.Conv2d
    assert all(isinstance(getattr(quantized, n), QUANT_TYPES) for n in ("stem", "conv2", "head"))
    assert records["float_causes"] == {"conv1": "speed"}
    assert records["float_layer_reasons"]["conv1"].startswith("speed: int8 2.000 ms vs float")
    plan = records["latency_plan"]
    assert plan["accepted"] and probe.calls == 2  # measured, then checked end to end
    chosen = {unit["unit"]: unit["chosen"] for unit in plan["units"]}
    assert chosen == {"stem": "int8", "conv1": "float", "conv2": "int8", "head": "int8"}
    loader = tiny.loader("eval", batch_size=64)
    path = export_onnx(quantized, tiny.example_inputs(2), tmp_path / "mixed.onnx").path
    assert ort_parity(quantized, path, loader, "int8").ok


def test_the_mixed_model_must_beat_all_int8_end_to_end(tiny) -> None:
    torch.manual_seed(0)
    probe = RuleProbe({"conv1"}, boundary=5.0)  # float islands cost conversions
    quantized, records = _quantize(TinyResidualCNN(), tiny, probe, precision_by_latency={})
    assert isinstance(quantized.conv1, QUANT_TYPES)
    plan = records["latency_plan"]
    assert not plan["accepted"] and "kept all-int8" in plan["note"]
    assert plan["mixed_p50_ms"] > plan["int8_p50_ms"]
    assert "float_causes" not in records


def test_blocks_are_decided_whole(tiny) -> None:
    torch.manual_seed(0)
    model = TinyBranchyCNN()
    assert block_of(model, "stem.0") == "stem" and block_of(model, "head") == "head"
    _, records = _quantize(
        model, tiny, RuleProbe({"stem.0"}), precision_by_latency={"granularity": "block"}
    )
    assert records["float_causes"] == {"stem.0": "speed"}
    units = {unit["unit"]: unit for unit in records["latency_plan"]["units"]}
    assert units["stem"]["layers"] == ["stem.0"] and units["stem"]["chosen"] == "float"


def test_qat_keeps_the_layers_the_probe_says_are_slower_float() -> None:
    data = tiny_data(samples=256)
    torch.manual_seed(0)
    quantized, records = _quantize(
        TinyResidualCNN(),
        data,
        RuleProbe({"head"}),
        pass_cls=QAT,
        config_cls=QATConfig,
        precision_by_latency={},
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=32),
    )
    assert type(quantized.head) is nn.Linear and records["float_causes"] == {"head": "speed"}


def test_choice_is_generic_over_precisions() -> None:
    costs = {
        "a": {"float": 1.0, "int8": 0.6, "int4": 0.58},  # int4 gains under 5% on int8
        "b": {"float": 1.0, "int8": 0.99, "int4": 0.5},  # int8 gains nothing, int4 half
        "c": {"float": 1.0, "int8": 1.2},
        "d": {},
    }
    chosen = choose_by_latency(costs, order=["float", "int8", "int4"], min_gain=0.05)
    assert chosen == {"a": "int8", "b": "int4", "c": "float"}


def test_precision_by_latency_needs_a_probe(tiny) -> None:
    with pytest.raises(CompressKitError, match="needs a profile probe"):
        _quantize(TinyResidualCNN(), tiny, None, precision_by_latency={})


def test_the_real_probe_finds_every_layer_in_float_and_int8_profiles(tiny) -> None:
    torch.manual_seed(0)
    model = TinyResidualCNN().eval()
    quantized, _ = _quantize(model, tiny, None)
    float_cost, int8_cost = measure_costs(
        [model, quantized],
        tiny.example_inputs(2),
        target="cpu-ort",
        batch=8,
        seconds=0.2,
        dynamic_sequence=False,
    )
    for layer in ("stem", "conv1", "conv2", "head"):  # module names match across exports
        assert float_cost.cost_of(layer) > 0 and int8_cost.cost_of(layer) > 0, layer
    assert float_cost.p50_ms > 0 and int8_cost.p50_ms > 0


def test_no_layer_faster_in_int8_is_an_error_that_says_so(tiny) -> None:
    slow = {"stem", "conv1", "conv2", "head"}
    with pytest.raises(CompressKitError, match="no layer runs faster in int8"):
        _quantize(TinyResidualCNN(), tiny, RuleProbe(slow), precision_by_latency={})
