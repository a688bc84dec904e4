"""Evidence about an exported model: ONNX Runtime agrees with torch, and which kernels run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compresskit.errors import CompressKitError


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime's outputs follow torch's on the same inputs."""

    max_abs_error: float
    mean_abs_error: float
    agreement: float  # top-1 agreement between the two
    samples: int
    tolerance: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance and self.agreement >= self.min_agreement


def onnx_outputs(path: Path, loader: DataLoader, *, threads: int = 0) -> np.ndarray:
    """ORT CPU outputs (the first graph output) over ``(*inputs, label)`` batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = []
    for *inputs, _ in loader:
        feed = {name: x.numpy() for name, x in zip(names, inputs, strict=True)}
        outputs.append(session.run(None, feed)[0])
    return np.concatenate(outputs)


@torch.no_grad()
def torch_outputs(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """torch outputs over ``(*inputs, label)`` batches."""
    model.eval()
    return np.concatenate([model(*inputs).numpy() for *inputs, _ in loader])


def compare(
    reference: np.ndarray, actual: np.ndarray, *, tolerance: float, min_agreement: float
) -> Parity:
    """Error and top-1 agreement of ``actual`` against ``reference``."""
    if reference.shape != actual.shape:
        raise CompressKitError(
            f"ONNX output shape {actual.shape} differs from torch's {reference.shape}"
        )
    diff = np.abs(reference.astype(np.float64) - actual.astype(np.float64))
    agreement = (
        float((reference.argmax(-1) == actual.argmax(-1)).mean()) if reference.ndim > 1 else 1.0
    )
    return Parity(
        max_abs_error=float(diff.max()),
        mean_abs_error=float(diff.mean()),
        agreement=agreement,
        samples=len(reference),
        tolerance=tolerance,
        min_agreement=min_agreement,
    )


def parity_tolerance(quantized: bool, reference: np.ndarray) -> tuple[float, float]:
    """(max abs error, min top-1 agreement) allowed between torch and ORT.

    Float graphs must agree to rounding. Integer kernels round differently from torch's
    fake quant (requantisation, int32 accumulation), so a few quantization steps of the
    output are allowed and a small fraction of near-tie predictions may flip.
    """
    scale = float(np.abs(reference).max()) or 1.0
    if quantized:
        return 0.1 * scale, 0.97
    return 1e-3 * scale, 0.999
