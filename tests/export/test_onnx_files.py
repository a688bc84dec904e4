"""Export details: metadata, external data for large models, per-precision parity."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest

from compresskit import __version__
from compresskit.context import Context
from compresskit.digest import state_dict_sha256
from compresskit.export.onnx import export_onnx, onnx_metadata
from compresskit.export.verify import (
    PARITY_TOLERANCES,
    compare,
    model_precision,
    onnx_outputs,
    parity_tolerance,
    torch_outputs,
)
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.testing import TinyCNN


def test_metadata_names_version_exporter_and_source(tiny, tmp_path: Path) -> None:
    model = TinyCNN().eval()
    digest = state_dict_sha256(model)
    result = export_onnx(
        model,
        tiny.example_inputs(2),
        tmp_path / "m.onnx",
        exporter="legacy",
        metadata={"policy": "default", "source_sha256": digest},
    )
    props = onnx_metadata(result.path)
    assert props["compresskit_version"] == __version__
    assert props["exporter"] == "legacy" and "exporter_fallback_reason" not in props
    assert props["policy"] == "default" and props["source_sha256"] == digest
    assert len(digest) == 64 and digest != state_dict_sha256(TinyCNN())
    assert result.data_path is None and result.bytes == result.path.stat().st_size


def test_large_models_get_one_external_data_file(tiny, tmp_path: Path) -> None:
    model = TinyCNN().eval()
    out = tmp_path / "m.onnx"
    # a threshold of 1 kB stands in for the 2 GiB protobuf limit
    result = export_onnx(
        model, tiny.example_inputs(2), out, exporter="legacy", external_data_threshold=1024
    )
    assert result.data_path == tmp_path / "m.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert result.bytes > out.stat().st_size
    loader = tiny.loader("eval", batch_size=32)
    parity = compare(
        torch_outputs(model, loader), onnx_outputs(out, loader), tolerance=1e-4, min_agreement=1
    )
    assert parity.ok
    # re-exporting small removes the now stale data file
    export_onnx(model, tiny.example_inputs(2), out, exporter="legacy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(str(out))


def test_tolerances_are_per_precision(tiny) -> None:
    reference = np.array([[4.0, -2.0]])
    fp32, fp16, int8 = (parity_tolerance(p, reference) for p in ("fp32", "fp16", "int8"))
    assert fp32[0] < fp16[0] < int8[0] and fp32[1] > fp16[1] > int8[1]
    assert fp32[0] == pytest.approx(4.0 * PARITY_TOLERANCES["fp32"][0])
    assert parity_tolerance(True, reference) == int8 and parity_tolerance(False, reference) == fp32
    with pytest.raises(ValueError, match="precision"):
        parity_tolerance("int4", reference)  # type: ignore[arg-type]
    model = TinyCNN().eval()
    assert model_precision(model) == "fp32"
    assert model_precision(copy.deepcopy(model).half()) == "fp16"
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    quantized = Quantize(QuantizeConfig()).apply(copy.deepcopy(model), ctx)
    assert model_precision(quantized) == "int8"


def test_an_int8_sized_error_fails_the_fp32_check() -> None:
    reference = np.array([[1.0, 0.5], [0.2, 0.9]])
    actual = reference + 0.05  # a few int8 steps off; same argmax
    tolerance, agreement = parity_tolerance("fp32", reference)
    assert not compare(reference, actual, tolerance=tolerance, min_agreement=agreement).ok
    tolerance, agreement = parity_tolerance("int8", reference)
    assert compare(reference, actual, tolerance=tolerance, min_agreement=agreement).ok
