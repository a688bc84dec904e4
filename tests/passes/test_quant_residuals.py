"""Integer residuals: adds and concatenations between int8 layers run in ORT's integer
kernels (QLinearAdd / QLinearConcat), match torch, survive reload, and a model that does
not trace keeps today's float adds and says so."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from prune_helpers import ort_parity
from torch import nn

from compresskit.context import Context
from compresskit.data.bundle import DataBundle, split
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import export_onnx
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import load_model
from compresskit.passes.qat import QAT, QATConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.quantization.residuals import is_rewritten
from compresskit.testing import TinyBranchyCNN, TinyResidualCNN, tiny_data
from compresskit.training.loop import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _context(data: DataBundle) -> Context:
    return Context(data=data, teacher=None, example_inputs=data.example_inputs(2))


def _ops(model: nn.Module, data: DataBundle, path: Path) -> tuple[dict[str, int], float]:
    """The op histogram of the graph ORT optimises, and the int8 share of MACs."""
    result = export_onnx(model, data.example_inputs(2), path)
    report = kernel_report(result.path)
    ops: dict[str, int] = {}
    for name, count in report.ops.items():
        ops[name.rpartition(":")[2]] = ops.get(name.rpartition(":")[2], 0) + count
    return ops, report.fraction


def _quantize(model: nn.Module, data: DataBundle, **config: object) -> tuple[nn.Module, dict]:
    ctx = _context(data)
    torch.manual_seed(0)
    quantized = Quantize(QuantizeConfig(**config)).apply(copy.deepcopy(model).eval(), ctx)
    return quantized, ctx.records


@pytest.mark.parametrize(
    ("factory", "integer_ops"),
    [(TinyResidualCNN, {"QLinearAdd"}), (TinyBranchyCNN, {"QLinearAdd", "QLinearConcat"})],
)
def test_residual_ops_run_in_integer_kernels_and_match_torch(
    factory, integer_ops: set[str], tiny, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    quantized, records = _quantize(model, tiny)
    assert records["integer_residuals"], records
    ops, coverage = _ops(quantized, tiny, tmp_path / "on.onnx")
    assert integer_ops <= set(ops), ops
    assert "Add" not in ops and "Concat" not in ops, ops
    loader = tiny.loader("eval", batch_size=64)
    assert ort_parity(quantized, tmp_path / "on.onnx", loader, "int8").ok
    before, records_off = _quantize(model, tiny, integer_residuals=False)
    assert "integer_residuals" not in records_off or not records_off["integer_residuals"]
    ops_before, coverage_before = _ops(before, tiny, tmp_path / "off.onnx")
    assert "QLinearAdd" not in ops_before  # what the rewrite changes
    assert coverage >= coverage_before


def test_fashion_mnist_resnet_adds_all_run_as_qlinearadd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from models import resnet_fmnist

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=generator)
    data = split(x, torch.randint(0, 10, (96,), generator=generator), name="fm", seed=0)
    torch.manual_seed(0)
    quantized, records = _quantize(resnet_fmnist().eval(), data)
    assert records["integer_residuals"] == ["layer1: add", "layer2: add_1", "layer3: add_2"]
    assert all(is_rewritten(quantized.get_submodule(f"layer{i}")) for i in (1, 2, 3))
    ops, coverage = _ops(quantized, data, tmp_path / "resnet.onnx")
    assert ops.get("QLinearAdd") == 3 and "Add" not in ops, ops
    assert coverage == 1.0
    loader = data.loader("eval", batch_size=64)
    assert ort_parity(quantized, tmp_path / "resnet.onnx", loader, "int8").ok


def test_an_add_reading_a_float_layers_output_takes_it_on_the_next_layers_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A float stem (kept float for speed): layer1's add reads the stem's float output,
    which layer1.conv1 quantizes anyway; the add takes it on that grid and runs in int8."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from models import resnet_fmnist

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=generator)
    data = split(x, torch.randint(0, 10, (96,), generator=generator), name="fm", seed=0)
    torch.manual_seed(0)
    quantized, records = _quantize(resnet_fmnist().eval(), data, exclude=["stem.0"])
    assert records["integer_residuals"] == ["layer1: add", "layer2: add_1", "layer3: add_2"]
    ops, _ = _ops(quantized, data, tmp_path / "stem_float.onnx")
    assert ops.get("QLinearAdd") == 3 and "Add" not in ops, ops
    assert ops.get("Conv") == 1, ops  # the stem, float
    loader = data.loader("eval", batch_size=64)
    assert ort_parity(quantized, tmp_path / "stem_float.onnx", loader, "int8").ok


def test_rewritten_model_reloads_copies_and_pickles_to_the_same_outputs(
    tiny, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    quantized, _ = _quantize(TinyResidualCNN(), tiny)
    inputs = tiny.example_inputs(8)
    with torch.no_grad():
        expected = quantized(*inputs)
    path = tmp_path / "model.pt"
    factory = "compresskit.testing.tiny:TinyResidualCNN"
    save_model(quantized, path, source={"kind": "arch", "factory": factory})
    buffer = io.BytesIO()
    torch.save(quantized, buffer)  # what the torch benchmark worker receives
    buffer.seek(0)
    copies = {
        "reloaded": load_model(path).model,
        "deepcopy": copy.deepcopy(quantized),
        "pickled": torch.load(buffer, weights_only=False),
    }
    for name, model in copies.items():
        assert is_rewritten(model), name
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(*inputs), expected, rtol=0, atol=0)
    ops, _ = _ops(copies["reloaded"], tiny, tmp_path / "reloaded.onnx")
    assert "QLinearAdd" in ops


class _Untraceable(nn.Module):
    """A residual block whose forward branches on the data: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if x.mean() > -1:  # always true, but only known at run time
            x = torch.relu(x + self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def test_a_model_that_does_not_trace_keeps_float_residuals_and_says_so(
    tiny, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    quantized, records = _quantize(_Untraceable(), tiny)
    assert records["quantized_layers"] == 3 and not records["integer_residuals"]
    assert any("does not trace" in note for note in records["notes"]), records["notes"]
    ops, _ = _ops(quantized, tiny, tmp_path / "untraced.onnx")
    assert "Add" in ops and "QLinearAdd" not in ops


def test_qat_trains_through_integer_residuals(tmp_path: Path) -> None:
    data = tiny_data(samples=256)
    torch.manual_seed(0)
    config = QATConfig(train=TrainConfig(epochs=1, lr=1e-3, batch_size=32))
    ctx = _context(data)
    model = QAT(config).apply(TinyResidualCNN(), ctx)
    assert ctx.records["integer_residuals"] == ["(model): add"]
    ops, _ = _ops(model, data, tmp_path / "qat.onnx")
    assert "QLinearAdd" in ops
    assert ort_parity(model, tmp_path / "qat.onnx", data.loader("eval", batch_size=64), "int8").ok
