"""Evidence about an exported model: ONNX Runtime agrees with torch, and which kernels run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from compresskit.errors import CompressKitError
from compresskit.kinds import kinds_in


@dataclass(frozen=True)
class Parity:
    """How closely ONNX Runtime's outputs follow torch's on the same inputs."""

    max_abs_error: float
    mean_abs_error: float
    agreement: float  # top-1 agreement between the two
    samples: int
    tolerance: float
    min_agreement: float
    precision: str = "fp32"
    nonfinite: int = 0  # values NaN or infinite in one output and not the same in the other
    # int8: mean |torch's fake-quant output - the float baseline's|, when the baseline ran
    # on the same inputs: the size of the quantization noise itself.
    quantization_error: float | None = None

    @property
    def within_noise(self) -> bool:
        """ORT differs from torch no more than two roundings of one int8 model do.

        In a deep int8 network a tiny float difference (an erf, a sum's order) moves a value
        across a rounding boundary; with per-tensor scales widened by outlier features, the
        flips grow layer by layer until ORT's and torch's outputs are two draws of the same
        quantization noise (all-MiniLM-L6-v2 int8: max error just past the tolerance, mean
        error half torch's own int8 error). Such draws differ by about sqrt(2) times the
        noise; a broken export by far more."""
        return (
            self.quantization_error is not None
            and self.mean_abs_error <= NOISE_FACTOR * self.quantization_error
            and self.max_abs_error <= NOISE_MAX_FACTOR * self.tolerance
        )

    @property
    def ok(self) -> bool:
        return (
            self.nonfinite == 0
            and (self.max_abs_error <= self.tolerance or self.within_noise)
            and self.agreement >= self.min_agreement
        )


def onnx_outputs(path: Path, loader: DataLoader, *, threads: int = 0) -> np.ndarray:
    """ORT CPU outputs (the first graph output) over ``(*inputs, label)`` batches."""
    session = ort_session(path, threads=threads)
    return np.concatenate([run_session(session, inputs) for *inputs, _ in loader])


@torch.no_grad()
def torch_outputs(model: nn.Module, loader: DataLoader) -> np.ndarray:
    """torch outputs over ``(*inputs, label)`` batches."""
    model.eval()
    return np.concatenate([model(*inputs).numpy() for *inputs, _ in loader])


def compare(
    reference: np.ndarray,
    actual: np.ndarray,
    *,
    tolerance: float,
    min_agreement: float,
    precision: str = "fp32",
) -> Parity:
    """Error and top-1 agreement of ``actual`` against ``reference``."""
    if reference.shape != actual.shape:
        raise CompressKitError(
            f"ONNX output shape {actual.shape} differs from torch's {reference.shape}"
        )
    diff, nonfinite, _ = output_errors(reference, actual)
    agreement = (
        float((reference.argmax(-1) == actual.argmax(-1)).mean()) if reference.ndim > 1 else 1.0
    )
    return Parity(
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        agreement=agreement,
        samples=len(reference),
        tolerance=tolerance,
        min_agreement=min_agreement,
        precision=precision,
        nonfinite=nonfinite,
    )


Precision = Literal["fp32", "fp16", "int8"]

# (max abs error as a fraction of the largest |output|, min top-1 agreement) by the
# precision the exported graph computes in. Float graphs must agree to rounding; fp16
# keeps ~3 decimal digits; integer kernels round differently from torch's fake quant
# (requantisation, int32 accumulation), so a few quantization steps of the output are
# allowed and a small fraction of near-tie predictions may flip.
PARITY_TOLERANCES: dict[Precision, tuple[float, float]] = {
    "fp32": (1e-3, 0.999),
    "fp16": (1e-2, 0.99),
    "int8": (0.1, 0.97),
}
# int8 outputs beyond the tolerance still agree when ORT's mean error to torch is within
# NOISE_FACTOR times torch's own quantization error and no value is off by more than
# NOISE_MAX_FACTOR tolerances (see Parity.within_noise).
NOISE_FACTOR, NOISE_MAX_FACTOR = 2.0, 3.0
# The scale a relative tolerance multiplies is capped here: float32 holds integers exactly
# only up to 2**24, so outputs beyond it (int64 or bool weights cast to float, a broken
# model) cannot widen the allowed error to match (1e-3 of 8.7e18 would pass 2e15 errors).
MAX_TOLERANCE_SCALE = float(2**24)


def output_errors(reference: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(absolute errors where both are finite, how many values are non-finite in one and
    not equal in the other, the largest finite |reference|)."""
    ref = reference.astype(np.float64)
    act = actual.astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(act)
    nonfinite = int((~finite & (ref != act)).sum())  # equal infinities agree; NaN never
    diff = np.abs(ref[finite] - act[finite])
    scale = float(np.abs(ref[finite]).max()) if diff.size else 0.0
    return diff, nonfinite, scale


def tolerance_for(precision: Precision, scale: float, *, exact: bool = False) -> float:
    """The max abs error allowed for outputs whose largest |value| is ``scale``: none for
    integer outputs (``exact``), else the precision's fraction of the capped scale."""
    if exact:
        return 0.0
    relative = PARITY_TOLERANCES[precision][0]
    return relative * (min(scale, MAX_TOLERANCE_SCALE) or 1.0)


def model_precision(model: nn.Module) -> Precision:
    """What the exported graph computes in: int8 when a module's kind runs in integer
    kernels once exported (QDQ fake quant, dynamic int8), fp16 when its weights are half,
    else fp32. Weight-only int8 that computes in float (int8 embeddings) stays fp32."""
    if any(kind.integer_kernels for _, _, kind in kinds_in(model)):
        return "int8"
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes & {torch.float16, torch.bfloat16}:
        return "fp16"
    return "fp32"


class ParityCheck:
    """ONNX Runtime against torch, batch by batch (outputs of any size are never kept).

    The allowed error is a fraction (by ``precision``) of the largest |torch output|,
    capped at :data:`MAX_TOLERANCE_SCALE`; integer or bool outputs must match exactly, and
    a NaN or infinity in one output that the other does not have fails the check. Top-1
    agreement is checked only where the output's top-1 is a decision (``decisions``:
    class or token logits, not embeddings). Given the float baseline's outputs on the same
    inputs (``update(..., baseline=)``), an int8 check also measures the quantization
    noise, and ORT may differ from torch by as much as it (:attr:`Parity.within_noise`).

    >>> torch_batch = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    >>> ort_batch = torch_batch + np.float32(0.001)
    >>> check = ParityCheck("int8", decisions=True)
    >>> check.update(torch_batch, ort_batch); check.result().ok
    True
    """

    def __init__(self, precision: Precision, *, decisions: bool = True) -> None:
        if precision not in PARITY_TOLERANCES:
            raise ValueError(
                f"precision {precision!r}: expected one of {', '.join(PARITY_TOLERANCES)}"
            )
        self.precision = precision
        self.decisions = decisions
        self.exact = False
        self.max_error = self.error_sum = self.scale = self.noise_sum = 0.0
        self.values = self.agree = self.rows = self.samples = self.nonfinite = 0
        self.noise_values = 0

    def update(self, reference: np.ndarray, actual: np.ndarray, *, baseline: Any = None) -> None:
        """One batch: torch's outputs (``reference``), ONNX Runtime's (``actual``) and,
        when at hand, the float baseline's on the same inputs (used for int8 only)."""
        if reference.shape != actual.shape:
            raise CompressKitError(
                f"ONNX output shape {actual.shape} differs from torch's {reference.shape}"
            )
        self.exact = self.exact or reference.dtype.kind in "biu"
        diff, nonfinite, scale = output_errors(reference, actual)
        self.nonfinite += nonfinite
        if diff.size:
            self.max_error = max(self.max_error, float(diff.max()))
            self.scale = max(self.scale, scale)
        self.error_sum += float(diff.sum())
        self.values += diff.size
        self.samples += len(reference)
        if reference.ndim > 1:
            same = reference.argmax(-1) == actual.argmax(-1)
            self.agree += int(same.sum())
            self.rows += same.size
        if (
            self.precision == "int8"
            and isinstance(baseline, np.ndarray)
            and baseline.shape == reference.shape
        ):
            noise, _, _ = output_errors(baseline, reference)
            self.noise_sum += float(noise.sum())
            self.noise_values += noise.size

    def result(self) -> Parity:
        min_agreement = PARITY_TOLERANCES[self.precision][1]
        return Parity(
            max_abs_error=self.max_error,
            mean_abs_error=self.error_sum / max(self.values, 1),
            agreement=self.agree / self.rows if self.rows else 1.0,
            samples=self.samples,
            tolerance=tolerance_for(self.precision, self.scale, exact=self.exact),
            min_agreement=min_agreement if self.decisions else 0.0,
            precision=self.precision,
            nonfinite=self.nonfinite,
            quantization_error=self.noise_sum / self.noise_values if self.noise_values else None,
        )


def check_parity(
    model: nn.Module,
    path: Path,
    batches: Iterable[Sequence[torch.Tensor]],
    *,
    precision: Precision | None = None,
    decisions: bool = True,
) -> Parity:
    """Run ``model`` in torch and ``path`` in ONNX Runtime on the same ``(*inputs, label)``
    batches and compare them (precision: the model's own unless given)."""
    check = ParityCheck(precision or model_precision(model), decisions=decisions)
    session = ort_session(path)
    model.eval()
    with torch.no_grad():
        for *inputs, _ in batches:
            check.update(model(*inputs).numpy(), run_session(session, inputs))
    return check.result()


def ort_session(path: Path, *, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session on ``path`` (quiet; ``threads`` 0: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: Any, inputs: Sequence[torch.Tensor]) -> np.ndarray:
    """The first output of ``session`` on torch ``inputs`` (fed in the graph's input order)."""
    names = [i.name for i in session.get_inputs()]
    feed = {name: x.numpy() for name, x in zip(names, inputs, strict=True)}
    return np.asarray(session.run(None, feed)[0])


def parity_tolerance(precision: Precision | bool, reference: np.ndarray) -> tuple[float, float]:
    """(max abs error, min top-1 agreement) allowed between torch and ORT.

    ``precision`` is fp32, fp16 or int8 (a bool is read as "quantized?", as before)."""
    if isinstance(precision, bool):
        precision = "int8" if precision else "fp32"
    if precision not in PARITY_TOLERANCES:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PARITY_TOLERANCES)}")
    finite = reference[np.isfinite(reference)] if reference.dtype.kind == "f" else reference
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    exact = reference.dtype.kind in "biu"
    return tolerance_for(precision, scale, exact=exact), PARITY_TOLERANCES[precision][1]
