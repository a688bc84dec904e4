"""Shared checks for the pass tests: ONNX parity and save -> reload."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from compresskit.bench.probe import measure_costs, measure_p50
from compresskit.context import Context
from compresskit.data.bundle import DataBundle
from compresskit.export.onnx import export_onnx
from compresskit.export.verify import (
    Parity,
    Precision,
    compare,
    onnx_outputs,
    parity_tolerance,
    torch_outputs,
)
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import load_model


def context(data: DataBundle, model: nn.Module | None = None) -> Context:
    teacher = copy.deepcopy(model).eval() if model is not None else None
    return Context(
        data=data,
        teacher=teacher,
        example_inputs=data.example_inputs(2),
        latency_probe=measure_p50,
        profile_probe=measure_costs,
    )


def assert_exports(model: nn.Module, data: DataBundle, tmp_path: Path) -> None:
    result = export_onnx(
        model,
        data.example_inputs(2),
        tmp_path / "pruned.onnx",
        dynamic_sequence=data.dynamic_sequence,
    )
    parity = ort_parity(model, result.path, data.loader("eval", batch_size=64), "fp32")
    assert parity.ok, parity


def ort_parity(model: nn.Module, path: Path, loader: DataLoader, precision: Precision) -> Parity:
    """ONNX Runtime's outputs on ``loader`` against ``model``'s, within the tolerance of
    the precision the exported graph computes in."""
    reference = torch_outputs(model, loader)
    tolerance, min_agreement = parity_tolerance(precision, reference)
    return compare(
        reference, onnx_outputs(path, loader), tolerance=tolerance, min_agreement=min_agreement
    )


def assert_reloads(model: nn.Module, data: DataBundle, tmp_path: Path, factory: str) -> nn.Module:
    path = tmp_path / "pruned.pt"
    save_model(model, path, source={"kind": "arch", "factory": factory})
    reloaded = load_model(path, arch=factory).model  # the test names the code it runs
    inputs = data.example_inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(*inputs), model.eval()(*inputs))
    return reloaded
