"""Quantization-aware training: int8 kernels, ORT parity, accuracy, the freeze schedule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from contract import PassContract
from prune_helpers import ort_parity

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import export_onnx
from compresskit.passes.qat import QAT, QATConfig
from compresskit.quantization.modules import ActQuant
from compresskit.quantization.qat import convert_qat, is_frozen, prepare_qat
from compresskit.quantization.static import quantize_static
from compresskit.tasks.classification import evaluate_accuracy
from compresskit.testing import TinyCNN
from compresskit.training.loop import TrainConfig

QUICK = TrainConfig(epochs=2, lr=1e-3, batch_size=32)


def run_qat(model, data, **config):
    ctx = Context(data=data, teacher=copy.deepcopy(model), example_inputs=data.example_inputs(2))
    result = QAT(QATConfig(train=QUICK, **config)).apply(copy.deepcopy(model), ctx)
    return result, ctx


def check_int8_and_parity(model, data, path: Path) -> None:
    result = export_onnx(
        model, data.example_inputs(2), path, dynamic_sequence=data.dynamic_sequence
    )
    assert result.exporter == "legacy"
    report = kernel_report(result.path)
    assert report.fraction >= 0.9, report.nodes
    parity = ort_parity(model, result.path, data.loader("eval", batch_size=64), "int8")
    assert parity.ok, parity


@pytest.mark.parametrize("config", [{}, {"learn_scales": True}, {"alpha": 0.5}])
def test_qat_tiny_cnn_runs_in_int8_and_stays_accurate(
    config, trained_tiny_cnn, tiny, tmp_path: Path
) -> None:
    model, ctx = run_qat(trained_tiny_cnn, tiny, **config)
    loader = tiny.loader("eval", batch_size=128)
    assert evaluate_accuracy(model, loader) >= evaluate_accuracy(trained_tiny_cnn, loader) - 0.03
    assert len(ctx.records["history"]["epochs"]) == 2
    assert ctx.records["distilled"] is ("alpha" in config)
    assert is_frozen(model)
    assert not any(
        isinstance(q.scale, torch.nn.Parameter) for q in model.modules() if isinstance(q, ActQuant)
    )
    check_int8_and_parity(model, tiny, tmp_path / "q.onnx")


def test_qat_tiny_transformer_runs_in_int8_and_stays_accurate(
    trained_tiny_transformer, tiny_text, tmp_path: Path
) -> None:
    model, _ = run_qat(trained_tiny_transformer, tiny_text, alpha=0.5)
    loader = tiny_text.loader("eval", batch_size=128)
    float_accuracy = evaluate_accuracy(trained_tiny_transformer, loader)
    assert evaluate_accuracy(model, loader) >= float_accuracy - 0.03
    check_int8_and_parity(model, tiny_text, tmp_path / "t.onnx")


def test_learned_scales_move_and_convert_to_fixed_positive_scales(trained_tiny_cnn, tiny) -> None:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    config = QATConfig(train=TrainConfig(epochs=1, lr=1e-2, batch_size=32), calibration_batches=2)
    model = copy.deepcopy(trained_tiny_cnn)
    quantize_static(model, ctx, config, what="qat")
    before = {n: float(m.scale) for n, m in model.named_modules() if isinstance(m, ActQuant)}
    prepare_qat(model, learn_scales=True)
    assert not is_frozen(model)
    learnable = [m for m in model.modules() if isinstance(m, ActQuant) and m.learnable]
    assert learnable
    optimizer = torch.optim.SGD([m.scale for m in learnable], lr=0.1)
    model.train()
    for x, y in tiny.loader("train", batch_size=32):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    convert_qat(model)
    after = {n: float(m.scale) for n, m in model.named_modules() if isinstance(m, ActQuant)}
    assert any(abs(after[n] - before[n]) > 1e-6 for n in before), "LSQ scales did not move"
    assert all(value > 0 for value in after.values())


def test_qat_convert_before_prepare_is_an_error() -> None:
    with pytest.raises(CompressKitError, match="no fake-quant layers.*prepare_qat"):
        convert_qat(TinyCNN())


def test_qat_distillation_needs_a_teacher(trained_tiny_cnn, tiny) -> None:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    with pytest.raises(CompressKitError, match="set alpha: 1"):
        QAT(QATConfig(alpha=0.5, train=QUICK)).apply(copy.deepcopy(trained_tiny_cnn), ctx)


class TestQATContract(PassContract):
    pass_name = "qat"
    settings = {
        "calibration_batches": 2,
        "train": TrainConfig(epochs=1, batch_size=64, lr=1e-3).model_dump(),
    }


def test_qat_records_of_older_reports_still_load() -> None:
    """Reports written before ``ptq_val`` kept the PTQ accuracy as ``ptq_val_accuracy``."""
    from compresskit.passes.records import QATRecord

    record = QATRecord.model_validate({"ptq_val_accuracy": 0.91, "freeze_step": 3})
    assert record.ptq_val == {"accuracy": 0.91}
    assert "val accuracy after PTQ 0.9100" in record.summary()[0].text  # type: ignore[union-attr]
