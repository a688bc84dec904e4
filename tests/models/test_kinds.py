"""The module-kind registry: what it says of each kind, and what restoring refuses."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.kinds import UnknownKindError, kind_named, kind_of
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import load_model
from compresskit.models.size import count_params, weight_bytes
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.quantization.dynamic import DynamicQuantLinear
from compresskit.quantization.embedding import Int8Embedding
from compresskit.quantization.modules import QuantConv2d, QuantLinear
from compresskit.quantization.qparams import affine_qparams
from compresskit.testing import TinyCNN

ARCH = "compresskit.testing:TinyCNN"


def test_each_builtin_kind_says_precision_export_route_and_restore() -> None:
    conv = QuantConv2d.convert_(nn.Conv2d(3, 8, 3))
    linear = QuantLinear.convert_(nn.Linear(8, 4))
    dynamic = DynamicQuantLinear.convert_(nn.Linear(8, 4))
    table = Int8Embedding.convert_(nn.Embedding(10, 8))
    kinds = {}
    for module in (conv, linear, dynamic, table):
        kind = kind_of(module)
        assert kind is not None and kind.precision_of(module) == "int8"
        kinds[type(module).__name__] = kind.export
    assert kinds == {
        "QuantConv2d": "qdq",
        "QuantLinear": "qdq",
        "DynamicQuantLinear": "ort-dynamic",
        "Int8Embedding": "as-is",
    }
    assert kind_of(nn.Linear(2, 2)) is None
    # int8 weights and a float32 scale per output channel (and a 32-bit bias)
    assert weight_bytes(nn.Sequential(linear)) == 8 * 4 + 4 * 4 + 4 * 4
    assert weight_bytes(nn.Sequential(nn.Linear(8, 4))) == 4 * (8 * 4 + 4)
    # the int8 table counts as parameters (rows and dims), and as int8 bytes plus row scales
    assert count_params(nn.Sequential(table)) == 10 * 8
    assert weight_bytes(nn.Sequential(table)) == 10 * 8 + 10 * 4


def test_bitsandbytes_kinds_are_known_by_name_without_importing_bitsandbytes() -> None:
    kind, cls = kind_named("bitsandbytes.nn.modules.Linear4bit")
    assert cls is None and kind.export == "none" and kind.restore is None
    assert "no ONNX form" in kind.reason and "weight_only" in kind.restore_refusal


def test_affine_qparams_match_torch_min_max_observer() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    observer = torch.ao.quantization.MinMaxObserver(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine
    )
    observer(x)
    reference_scale, reference_zero_point = observer.calculate_qparams()
    scale, zero_point = affine_qparams(x.min(), x.max())
    assert float(scale) == pytest.approx(float(reference_scale), rel=1e-6)
    assert int(zero_point) == int(reference_zero_point)


def _tampered(tmp_path: Path, saved_class: str) -> Path:
    path = tmp_path / "m.pt"
    save_model(TinyCNN(), path, source={"kind": "arch", "factory": ARCH})
    payload = torch.load(path, weights_only=True)
    name = next(n for n, e in payload["structure"].items() if e["class"].endswith("Conv2d"))
    payload["structure"][name]["class"] = saved_class
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("saved_class", ["os.system", "builtins.eval", "this.Zen"])
def test_a_class_outside_the_allowlist_is_refused_without_importing_it(
    saved_class: str, tmp_path: Path
) -> None:
    assert "this" not in sys.modules  # importing it would print; it must stay unimported
    path = _tampered(tmp_path, saved_class)
    with pytest.raises(CompressKitError, match="not a module kind compresskit can restore") as info:
        load_model(path)
    assert saved_class in str(info.value) and "\n" not in str(info.value)
    assert "this" not in sys.modules
    with pytest.raises(UnknownKindError):
        kind_named(saved_class)


def test_an_allowlisted_name_that_is_not_a_kind_is_refused(tmp_path: Path) -> None:
    path = _tampered(tmp_path, "compresskit.quantization.calibration.choose_range")
    with pytest.raises(CompressKitError, match="not a registered compresskit module kind"):
        load_model(path)
    path = _tampered(tmp_path, "compresskit.quantization.no_such_module.QuantConv2d")
    with pytest.raises(CompressKitError, match="cannot import compresskit.quantization.no_such"):
        load_model(path)


def test_a_saved_int8_model_names_its_kinds_and_reloads(trained_tiny_cnn, tiny, tmp_path) -> None:
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    model = Quantize(QuantizeConfig(calibration_batches=2)).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    path = tmp_path / "q.pt"
    save_model(model, path, source={"kind": "arch", "factory": ARCH})
    structure = torch.load(path, weights_only=True)["structure"]
    saved = {e["class"] for e in structure.values()}
    assert "compresskit.quantization.modules.QuantConv2d" in saved
    entry = next(e for e in structure.values() if e["class"].endswith("QuantConv2d"))
    assert set(entry["attrs"]) >= {"fused_relu", "act_in_enabled", "act_out_enabled", "mode"}
    reloaded = load_model(path).model
    x = tiny.example_inputs(8)[0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["nf4", "fp4"])
def test_bitsandbytes_layers_report_their_precision_and_weight_bytes(dtype: str) -> None:
    from compresskit.export.verify import model_precision
    from compresskit.passes.weight_only import WeightOnly, WeightOnlyConfig
    from compresskit.testing import TinyTokenTransformer, tiny_token_data

    data = tiny_token_data(samples=64)
    torch.manual_seed(0)
    original = TinyTokenTransformer().eval()
    ctx = Context(data=data, teacher=None, example_inputs=data.example_inputs(2))
    model = WeightOnly(WeightOnlyConfig(dtype=dtype)).apply(copy.deepcopy(original), ctx)
    kind = kind_of(model.query)
    assert kind is not None and kind.label == "bitsandbytes Linear4bit"
    assert kind.precision_of(model.query) == dtype and kind.export == "none"
    assert model_precision(model) == "fp32"  # computes in float: no integer kernels
    assert weight_bytes(model) < 0.5 * weight_bytes(original)
    # 32 inputs is less than one 64-value block: bitsandbytes' packed CPU kernel cannot
    # take the layer (where this bitsandbytes has one), so it stays on the generic path.
    generic = ctx.records["generic_kernel_layers"]
    if hasattr(model.query, "support_avx512bf16_for_cpu"):
        assert "in_features 32 is not a multiple of 64" in generic["query"]
        assert "ffn_out" not in generic  # 128 -> 32 fits the packed kernel
