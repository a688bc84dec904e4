"""Export a torch model to ONNX with a dynamic batch axis.

The dynamo exporter is used by default and the legacy TorchScript exporter when it
fails, or when the model holds fake-quant modules (which only the legacy exporter turns
into QuantizeLinear/DequantizeLinear). Which one was used is returned, never hidden.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compresskit.errors import CompressKitError

Exporter = Literal["auto", "dynamo", "legacy"]
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file is, which exporter wrote it, and why if it fell back."""

    path: Path
    exporter: Literal["dynamo", "legacy"]
    seconds: float
    fallback_reason: str | None = None
    # What rewrote the written graph afterwards (ORT dynamic int8), never silently.
    post_quantization: str | None = None


def needs_legacy_exporter(model: nn.Module) -> bool:
    """True when a module asks for the legacy exporter (fake quant does)."""
    return any(getattr(m, "requires_legacy_export", False) for m in model.modules())


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    exporter: Exporter = "auto",
    opset: int = DEFAULT_OPSET,
    dynamic_sequence: bool = False,
) -> ExportResult:
    """Write ``model`` to ``path`` (atomically) with a dynamic batch axis, and a dynamic
    second axis on every input when ``dynamic_sequence`` (token ids, masks)."""
    from compresskit.export.qdq import NotExportableError, export_preparation, not_exportable_reason

    reason = not_exportable_reason(model)
    if reason:
        raise NotExportableError(f"cannot export to ONNX: {reason}")
    model = model.eval()
    start = time.perf_counter()
    fallback_reason = None
    chosen: Literal["dynamo", "legacy"]
    if exporter == "legacy" or (exporter == "auto" and needs_legacy_exporter(model)):
        chosen = "legacy"
    else:
        chosen = "dynamo"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    post_quantization = None
    try:
        with export_preparation(model) as post_process:
            if chosen == "dynamo":
                try:
                    _export_dynamo(model, example_inputs, tmp, opset, dynamic_sequence)
                except Exception as error:
                    if exporter == "dynamo":
                        raise CompressKitError(
                            f"ONNX export with the dynamo exporter failed: {_first_line(error)}; "
                            "try exporter 'legacy'"
                        ) from None
                    fallback_reason = f"dynamo exporter failed: {_first_line(error)}"
                    chosen = "legacy"
            if chosen == "legacy":
                try:
                    _export_legacy(model, example_inputs, tmp, min(opset, 17), dynamic_sequence)
                except Exception as error:
                    raise CompressKitError(f"ONNX export failed: {_first_line(error)}") from None
            post_quantization = post_process(tmp)
        _finish(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for extra in tmp.parent.glob(tmp.name + "*"):
            extra.unlink()
    return ExportResult(
        path, chosen, time.perf_counter() - start, fallback_reason, post_quantization
    )


def _finish(path: Path) -> None:
    """Fold constant quantization of weights (int8 on disk) and run the ONNX checker."""
    import onnx

    from compresskit.export.qdq import fold_constants

    model = onnx.load(str(path))
    if any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        fold_constants(model)
        onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise CompressKitError(f"exported ONNX fails onnx.checker: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _export_dynamo(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic_sequence: bool,
) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    axes: dict[int, Any] = {0: batch}
    if dynamic_sequence:
        axes[1] = torch.export.Dim("sequence", min=2, max=8192)
    dynamic_shapes = tuple(dict(axes) for _ in example_inputs)
    # At least two samples so the exporter does not specialise the batch axis to 1.
    inputs = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # e.g. "torchvision is not installed" on every export
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            input_names=_input_names(len(inputs)),
            output_names=[OUTPUT_NAME],
            external_data=False,
        )
        assert program is not None
        program.save(str(path))
    onnx_logger.setLevel(level)


def _export_legacy(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic_sequence: bool,
) -> None:
    names = _input_names(len(example_inputs))
    input_axes = {0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"}
    axes: dict[str, dict[int, str]] = {name: dict(input_axes) for name in names}
    axes[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example_inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
        )


def _input_names(count: int) -> list[str]:
    return [INPUT_NAME] if count == 1 else [f"{INPUT_NAME}_{i}" for i in range(count)]
