"""Export any checkpoint on its own (``compresskit export``): load, export, check parity.

Example::

    result = export_checkpoint("model.pt", Path("m.onnx"), arch="pkg:build",
                               input_shapes=[(3, 224, 224)])
    result.parity.ok, result.export.exporter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from compresskit.digest import source_digest
from compresskit.errors import CompressKitError, first_line
from compresskit.export.onnx import Exporter, ExportResult, export_onnx
from compresskit.export.verify import Parity, check_parity
from compresskit.paths import check_output_file
from compresskit.tasks import get_task


@dataclass(frozen=True)
class StandaloneExport:
    export: ExportResult
    parity: Parity
    checked_on: str  # what the parity check ran on


MAX_SAMPLE_ELEMENTS = 2**26  # one sample of one input: 256 MB of float32


def check_elements(shape: Sequence[int], *, what: str) -> None:
    """Refuse a per-sample shape too large to allocate batches of (a typo such as
    3,224224 would otherwise end in a memory error)."""
    elements = 1
    for dim in shape:
        elements *= dim
    if elements > MAX_SAMPLE_ELEMENTS:
        raise CompressKitError(
            f"{what}: shape {tuple(shape)} is {elements:,} values per sample, more than "
            f"{MAX_SAMPLE_ELEMENTS:,}; check the shape (without the batch axis)"
        )


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``: one input's shape without the batch axis."""
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise CompressKitError(
            f"--input-shape {text!r}: give positive integers without the batch axis, e.g. 3,224,224"
        )
    check_elements(shape, what=f"--input-shape {text!r}")
    return shape


def random_loader(shapes: Sequence[tuple[int, ...]], *, samples: int = 64) -> DataLoader:
    """``(*inputs, label)`` batches of standard-normal inputs (labels are dummies)."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(samples, *shape, generator=generator) for shape in shapes]
    return DataLoader(TensorDataset(*inputs, torch.zeros(samples, dtype=torch.long)), batch_size=16)


def _check_runs(model: torch.nn.Module, example: tuple[torch.Tensor, ...], name: object) -> None:
    """The model takes the example inputs: else one line naming their shape and the options
    that set it (an exporter's error would not say)."""
    try:
        with torch.no_grad():
            model.eval()(*example)
    except Exception as error:
        shapes = ", ".join(str(tuple(x.shape[1:])) for x in example)
        raise CompressKitError(
            f"{name}: the model cannot run on inputs of shape {shapes} ({first_line(error)}); "
            "check --input-shape or --data"
        ) from None


def export_checkpoint(
    checkpoint: str | Path,
    out: Path,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    trust_factory: bool = False,
    data: str | None = None,
    input_shapes: Sequence[tuple[int, ...]] = (),
    exporter: Exporter = "auto",
    opset: int | None = None,
) -> StandaloneExport:
    """Load ``checkpoint``, export it to ``out`` and check ONNX Runtime against torch on
    the data's evaluation split, or on random inputs of ``input_shapes``."""
    from compresskit.data import load_data
    from compresskit.models.loading import load_model

    if out.suffix != ".onnx":
        raise CompressKitError(f"--out {out}: give a path ending in .onnx")
    source = Path(str(checkpoint))
    check_output_file(out, what="--out", inputs=[source] if source.exists() else [])
    loaded = load_model(
        checkpoint, arch=arch, trust_pickle=trust_pickle, trust_factory=trust_factory
    )
    spec = data or (None if input_shapes else loaded.default_data)
    dynamic_sequence = False
    if spec is not None:
        bundle = load_data(spec)
        example = bundle.example_inputs(2)
        loader = bundle.loader("eval", batch_size=256)
        dynamic_sequence = bundle.dynamic_sequence
        checked_on = f"{bundle.name} evaluation split"
    elif input_shapes:
        loader = random_loader(input_shapes)
        *first, _ = next(iter(loader))
        example = tuple(x[:2] for x in first)
        checked_on = f"{len(loader.dataset)} random inputs"  # type: ignore[arg-type]
    else:
        raise CompressKitError(
            f"{checkpoint}: export needs example inputs: pass --data (e.g. digits) or "
            "--input-shape C,H,W"
        )
    _check_runs(loaded.model, example, checkpoint)
    digest = source_digest(Path(str(checkpoint)), loaded.model)
    metadata = {"source_checkpoint": str(checkpoint), **digest}
    kwargs = {} if opset is None else {"opset": opset}
    try:
        result = export_onnx(
            loaded.model,
            example,
            out,
            exporter=exporter,
            dynamic_sequence=dynamic_sequence,
            metadata=metadata,
            **kwargs,  # type: ignore[arg-type]
        )
    except CompressKitError:
        raise
    except Exception as error:  # e.g. the inputs do not fit the model
        raise CompressKitError(
            f"{checkpoint}: export failed ({type(error).__name__}: {error}); check "
            "--input-shape / --data"
        ) from None
    decisions = get_task(bundle.task).class_outputs if spec is not None else True
    parity = check_parity(loaded.model, out, loader, decisions=decisions)
    return StandaloneExport(result, parity, checked_on)
