"""Static PTQ (each calibration method), dynamic int8, mixed precision, and bad input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import onnx
import pytest
import torch
from contract import PassContract
from prune_helpers import ort_parity
from pydantic import ValidationError
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import export_onnx
from compresskit.export.verify import compare, onnx_outputs, torch_outputs
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.quantization.calibration import choose_range
from compresskit.quantization.dynamic import DynamicQuantLinear
from compresskit.quantization.modules import ActQuant
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.testing import TinyReLU6CNN, tiny_data
from compresskit.training.loop import TrainConfig, train


def context(data, teacher=None) -> Context:
    return Context(data=data, teacher=teacher, example_inputs=data.example_inputs(2))


def test_percentile_and_mse_clip_heavy_tails_that_minmax_keeps() -> None:
    values = torch.randn(20000, generator=torch.Generator().manual_seed(0)) ** 3
    ranges = {}
    for method in ("minmax", "percentile", "mse", "entropy"):
        quantizer = ActQuant()
        quantizer.method = method
        quantizer.mode = "calib"
        quantizer(values)
        ranges[method] = float(choose_range(quantizer, quantizer.samples)[1])
    assert ranges["minmax"] == pytest.approx(float(values.max()))
    assert ranges["percentile"] < 0.9 * ranges["minmax"], ranges
    assert ranges["mse"] < 0.8 * ranges["minmax"], ranges
    assert ranges["entropy"] < 0.8 * ranges["minmax"], ranges


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_static_ptq_each_method_runs_in_int8_and_matches_ort(
    method, trained_tiny_cnn, tiny, tmp_path: Path
) -> None:
    ctx = context(tiny)
    model = Quantize(QuantizeConfig(calibration=method)).apply(copy.deepcopy(trained_tiny_cnn), ctx)
    assert ctx.records["calibration"] == method
    loader = tiny.loader("eval", batch_size=128)
    assert evaluate_accuracy(model, loader) >= evaluate_accuracy(trained_tiny_cnn, loader) - 0.03
    result = export_onnx(model, tiny.example_inputs(2), tmp_path / "q.onnx")
    assert kernel_report(result.path).fraction >= 0.9
    assert ort_parity(model, result.path, loader, "int8").ok


class HeavyTailed(nn.Module):
    """An MLP whose hidden activations are cubed: a few huge values carry much of the
    output, as outlier features do in BERT-style models, so clipping them costs more
    than the coarse steps of the whole range."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc1(self.flatten(x)) ** 3)


def test_auto_calibration_uses_the_method_with_the_least_output_error(tiny) -> None:
    torch.manual_seed(0)
    model = HeavyTailed().eval()
    settings = {"calibration_batches": 2, "integer_residuals": False}
    ctx = context(tiny)
    chosen = Quantize(QuantizeConfig(calibration="auto", **settings)).apply(
        copy.deepcopy(model), ctx
    )
    errors = ctx.records["calibration_errors"]
    assert set(errors) == {"minmax", "percentile", "mse", "entropy"}
    method = ctx.records["calibration"]
    assert errors[method] == min(errors.values())
    assert errors["percentile"] > 2 * errors[method], errors  # clipping the outliers hurts
    # The model the pass returns is the one that was measured: calibrated by `method`.
    batches = [list(b) for b in tiny.loader("calibration", batch_size=32)][:2]
    with torch.no_grad():
        reference = [model(x) for x, _ in batches]
        outputs = [chosen(x) for x, _ in batches]
    error = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, reference, strict=True))
    assert error / sum(float((r**2).sum()) for r in reference) == pytest.approx(
        errors[method], rel=1e-3
    )


def test_dynamic_int8_transformer_uses_integer_matmuls_and_agrees(
    trained_tiny_transformer, tiny_text, tmp_path: Path
) -> None:
    ctx = context(tiny_text)
    model = QuantizeDynamic(QuantizeDynamicConfig(exclude=["head"])).apply(
        copy.deepcopy(trained_tiny_transformer), ctx
    )
    assert ctx.records["float_layers"] == ["head"] and ctx.records["quantized_layers"] == 6
    assert isinstance(model.query, DynamicQuantLinear) and type(model.head) is nn.Linear
    result = export_onnx(
        model, tiny_text.example_inputs(2), tmp_path / "d.onnx", dynamic_sequence=True
    )
    assert result.post_quantization and "6 MatMul" in result.post_quantization
    report = kernel_report(result.path)
    assert report.fraction >= 0.9, report.nodes
    assert any("DynamicQuantizeMatMul" in op or "MatMulInteger" in op for op in report.ops)
    loader = tiny_text.loader("eval", batch_size=64)
    reference = torch_outputs(model, loader)
    actual = onnx_outputs(result.path, loader)
    float_error = compare(
        torch_outputs(trained_tiny_transformer, loader), actual, tolerance=1, min_agreement=0
    ).max_abs_error
    parity = compare(reference, actual, tolerance=1, min_agreement=0.97)
    # The torch model follows ORT's dynamic int8 closer than the float model does.
    assert parity.ok and parity.max_abs_error < 0.5 * float_error, (parity, float_error)


class Fragile(nn.Module):
    """A small MLP to plant a quantization-fragile layer in."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(self.flatten(x)))
        return self.head(torch.relu(self.fc2(h)))


def test_mixed_precision_keeps_the_planted_fragile_layer_float(tiny) -> None:
    torch.manual_seed(0)
    model = Fragile()
    train(model, tiny, TrainConfig(epochs=4, lr=1e-2, batch_size=32))
    with torch.no_grad():
        # Plant: fc2's channel 0 is dead (always 0 after ReLU) and the head gives it a huge
        # weight. Float outputs do not change, but the head's per-channel int8 scales now
        # round every other weight to zero: only the head is fragile.
        model.fc2.weight[0] = 0.0
        model.fc2.bias[0] = -1.0
        model.head.weight[:, 0] = 1000.0
    model.eval()
    loader = tiny.loader("eval", batch_size=128)
    float_accuracy = evaluate_accuracy(model, loader)
    plain = Quantize(QuantizeConfig()).apply(copy.deepcopy(model), context(tiny))
    ctx = context(tiny)
    config = QuantizeConfig(mixed_precision={"max_accuracy_drop": 0.02, "max_float_macs": 0.2})
    mixed = Quantize(config).apply(copy.deepcopy(model), ctx)
    sensitivity = ctx.records["sensitivity"]
    assert max(sensitivity, key=sensitivity.get) == "head", sensitivity
    assert ctx.records["float_layers"] == ["head"]
    assert "sensitivity" in ctx.records["float_layer_reasons"]["head"]
    assert evaluate_accuracy(plain, loader) < float_accuracy - 0.2  # the plant works
    assert evaluate_accuracy(mixed, loader) >= float_accuracy - 0.03


def test_mixed_precision_on_unlabelled_logits_is_refused_before_anything_runs(tiny) -> None:
    # fidelity: class logits without labels, nothing for an accuracy budget to count
    ctx = context(dataclasses.replace(tiny, task="fidelity"))
    with pytest.raises(CompressKitError, match="needs class labels.*remove mixed_precision"):
        Quantize(QuantizeConfig(mixed_precision={})).check(Fragile(), ctx)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"bits": 4}, "bits 4 is not supported"),
        ({"scheme": "s8s8-per-tensor"}, "u8s8-per-channel"),
        ({"calibration": "histogram"}, "calibration"),
    ],
)
def test_unsupported_settings_are_validation_errors(config, message) -> None:
    with pytest.raises(ValidationError, match=message):
        QuantizeConfig.model_validate(config)


def test_dynamic_rejects_other_bit_widths() -> None:
    with pytest.raises(ValidationError, match="bits 16 is not supported"):
        QuantizeDynamicConfig(bits=16)


def test_a_layer_the_pass_cannot_quantize_is_named(tiny) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(4))
    model[0] = nn.ConvTranspose2d(1, 4, 3)
    with pytest.raises(CompressKitError, match=r"layer '0' is a ConvTranspose2d.*exclude") as info:
        Quantize(QuantizeConfig()).apply(model, context(tiny))
    assert "\n" not in str(info.value)


def test_empty_calibration_split_is_a_one_line_error(trained_tiny_cnn) -> None:
    import dataclasses

    from torch.utils.data import Subset

    data = tiny_data()
    empty = dataclasses.replace(data, calibration=Subset(data.train, []))
    ctx = Context(data=empty, teacher=None, example_inputs=data.example_inputs(2))
    with pytest.raises(CompressKitError, match="calibration split is empty"):
        Quantize(QuantizeConfig()).apply(copy.deepcopy(trained_tiny_cnn), ctx)


def test_a_layer_forward_never_calls_stays_float_and_is_recorded(trained_tiny_cnn, tiny) -> None:
    model = copy.deepcopy(trained_tiny_cnn)
    model.pooler = nn.Linear(16, 16)  # like BERT's pooler under a custom head: never called
    ctx = context(tiny)
    quantized = Quantize(QuantizeConfig()).apply(model, ctx)
    assert type(quantized.pooler) is nn.Linear
    assert ctx.records["unused_layers"] == ["pooler"] and ctx.records["quantized_layers"] == 3


def test_linear_outputs_stay_float_unless_an_int8_layer_reads_them(tiny, tmp_path: Path) -> None:
    """fc1 -> relu -> fc2 -> relu -> head pass quantized tensors along; the logits are
    not requantized, so ORT runs the head as QGemm with a float output."""
    torch.manual_seed(0)
    model = Quantize(QuantizeConfig()).apply(Fragile(), context(tiny))
    assert model.fc2.act_in.tied_to is model.fc1.act_out and model.fc1.act_out.enabled
    assert model.head.act_in.tied_to is model.fc2.act_out and model.fc2.act_out.enabled
    assert not model.head.act_out.enabled
    result = export_onnx(model, tiny.example_inputs(2), tmp_path / "mlp.onnx")
    report = kernel_report(result.path)
    assert report.fraction == 1.0, report.ops
    graph = onnx.load(str(result.path)).graph
    (head,) = [node.output[0] for node in graph.node if node.name == "/head/Gemm"]
    assert not [node for node in graph.node if head in node.input]  # nothing requantizes it
    assert ort_parity(model, result.path, tiny.loader("eval", batch_size=128), "int8").ok


class TestQuantizeContract(PassContract):
    pass_name = "quantize"
    settings = {"calibration_batches": 2}


class TestQuantizeDynamicContract(PassContract):
    pass_name = "quantize_dynamic"


def test_relu6_fuses_into_the_conv_output_grid_and_reloads(tiny, tmp_path: Path) -> None:
    """The output grid of a conv followed by ReLU6 spans [0, 6] at most (zero point 0), so
    ORT runs QLinearConv with no Clip left, and the ceiling survives a save and reload."""
    from compresskit.models.checkpoint import save_model
    from compresskit.models.loading import load_model

    torch.manual_seed(0)
    model = TinyReLU6CNN().eval()
    with torch.no_grad():  # BatchNorm statistics that make the ReLU6 ceiling bite
        for bn in (model.bn1, model.bn2):
            bn.weight.fill_(4.0)
    quantized = Quantize(QuantizeConfig()).apply(copy.deepcopy(model), context(tiny))
    for name in ("conv1", "conv2"):
        conv = quantized.get_submodule(name)
        assert conv.fused_relu and conv.relu_max == 6.0, name
        assert float(conv.act_out.qparams()[0]) * 255 <= 6.0 + 1e-6, name
    report = kernel_report(export_onnx(quantized, tiny.example_inputs(2), tmp_path / "q.onnx").path)
    ops = {name.rpartition(":")[2] for name in report.ops}
    assert "QLinearConv" in ops and "Clip" not in ops, ops
    path = tmp_path / "q.pt"
    factory = "compresskit.testing:TinyReLU6CNN"
    save_model(quantized, path, source={"kind": "arch", "factory": factory})
    reloaded = load_model(path).model
    assert reloaded.get_submodule("conv2").relu_max == 6.0
    x = tiny.example_inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*x), quantized(*x), rtol=0, atol=0)
