"""Export a torch model to ONNX with a dynamic batch axis, metadata and one file.

The dynamo exporter is used by default and the legacy TorchScript exporter when it
fails, or when the model holds fake-quant modules (which only the legacy exporter turns
into QuantizeLinear/DequantizeLinear). Which one was used is returned, never hidden.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compresskit import interrupts
from compresskit.errors import CompressKitError, first_line
from compresskit.kinds import kinds_in

Exporter = Literal["auto", "dynamo", "legacy"]
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


# A protobuf file cannot exceed 2 GiB: above this many bytes of weights, they go to one
# external data file beside the .onnx (``model.onnx.data``).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file is, which exporter wrote it, and why if it fell back."""

    path: Path
    exporter: Literal["dynamo", "legacy"]
    seconds: float
    fallback_reason: str | None = None
    data_path: Path | None = None  # external weights, only for models over 2 GiB
    metadata: dict[str, str] = field(default_factory=dict)
    # What rewrote the written graph afterwards (ORT dynamic int8), never silently.
    post_quantization: str | None = None

    @property
    def bytes(self) -> int:
        """Size on disk, external data included."""
        size = self.path.stat().st_size
        return size + (self.data_path.stat().st_size if self.data_path else 0)


def needs_legacy_exporter(model: nn.Module) -> bool:
    """True when a module's kind needs the legacy exporter (fake quant does)."""
    return any(kind.legacy_exporter for _, _, kind in kinds_in(model))


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    exporter: Exporter = "auto",
    opset: int = DEFAULT_OPSET,
    dynamic_sequence: bool = False,
    metadata: Mapping[str, str] | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    input_names: Sequence[str] | None = None,
) -> ExportResult:
    """Write ``model`` to ``path`` (atomically) with a dynamic batch axis, and a dynamic
    second axis on every input when ``dynamic_sequence`` (token ids, masks).

    The result is one ``.onnx`` file, checked with ``onnx.checker``, unless its weights
    exceed ``external_data_threshold`` bytes: then they go to ``<path>.data`` beside it.
    ``metadata`` (e.g. policy, source checkpoint hash) is written to the model's
    ``metadata_props`` with the compresskit version and the exporter used. ``input_names``
    name the graph's inputs (default ``input``, or ``input_0``, ``input_1`` ...)."""
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
    large = _weight_bytes(model) > external_data_threshold
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exporters may write external data files beside their output: work in a private
    # directory and move the finished files into place at the end.
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    raw = workdir / "raw.onnx"
    names = list(input_names) if input_names else _input_names(len(example_inputs))
    post_quantization = None
    try:
        with export_preparation(model) as post_process:
            if chosen == "dynamo":
                try:
                    _export_dynamo(
                        model, example_inputs, raw, opset, dynamic_sequence, large, names
                    )
                except Exception as error:
                    interrupts.check(error)
                    if exporter == "dynamo":
                        raise CompressKitError(
                            f"ONNX export with the dynamo exporter failed: {first_line(error)}; "
                            "try exporter 'legacy'"
                        ) from None
                    fallback_reason = f"dynamo exporter failed: {first_line(error)}"
                    chosen = "legacy"
                    for stale in workdir.iterdir():
                        stale.unlink()
            if chosen == "legacy":
                try:
                    _export_legacy(
                        model, example_inputs, raw, min(opset, 17), dynamic_sequence, names
                    )
                except Exception as error:
                    interrupts.check(error)
                    raise CompressKitError(f"ONNX export failed: {first_line(error)}") from None
            post_quantization = post_process(raw)
        from compresskit._version import __version__

        props = {"compresskit_version": __version__, "exporter": chosen}
        if fallback_reason:
            props["exporter_fallback_reason"] = fallback_reason
        props.update(metadata or {})
        data_name = _finish(
            raw, workdir / path.name, props, external_data_threshold=external_data_threshold
        )
        data_path = path.parent / data_name if data_name else None
        if data_name:
            os.replace(workdir / data_name, path.parent / data_name)
        else:
            (path.parent / f"{path.name}.data").unlink(missing_ok=True)  # stale, from before
        os.replace(workdir / path.name, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportResult(
        path,
        chosen,
        time.perf_counter() - start,
        fallback_reason,
        data_path,
        props,
        post_quantization,
    )


def _weight_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _finish(
    raw: Path, out: Path, metadata: dict[str, str], *, external_data_threshold: int
) -> str | None:
    """Fold constant quantization of weights (int8 on disk), quantize each activation
    once for all the layers that read it, write ``metadata``, save to
    ``out`` (weights in ``<out>.data`` when too large for one file) and run the ONNX
    checker. Returns the external data file's name, if any."""
    import onnx

    from compresskit.export.qdq import fold_constants, share_quantizers

    model = onnx.load(str(raw))  # loads external data written by the exporter too
    if any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        fold_constants(model)
        share_quantizers(model)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    weights = sum(
        len(t.raw_data) or 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data)
        for t in model.graph.initializer
    )
    data_name = f"{out.name}.data" if weights > external_data_threshold else None
    if data_name:
        onnx.save_model(
            model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(out))
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except onnx.checker.ValidationError as error:
        raise CompressKitError(f"exported ONNX fails onnx.checker: {first_line(error)}") from None
    return data_name


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading its weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _export_dynamo(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic_sequence: bool,
    large: bool,
    names: list[str],
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
            input_names=names,
            output_names=[OUTPUT_NAME],
        )
        assert program is not None
        program.save(str(path), external_data=large)
    onnx_logger.setLevel(level)


def _export_legacy(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    dynamic_sequence: bool,
    names: list[str],
) -> None:
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
