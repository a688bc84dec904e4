"""Block-wise weight quantization (round-to-nearest and GPTQ) in ONNX Runtime's layouts.

A weight is ``[N, K]`` (output rows, input columns; an ONNX MatMul's ``B`` transposed).
Each row is cut into blocks of ``block_size`` input columns (the last one zero-padded);
each block has a scale and, when asymmetric, a zero point (an integer code, or a float:
``float_zero`` keeps each block's minimum exactly, as GGUF's Q4_1 does). Dequantized:
``(q - zero) * scale``, with ``zero = 2**(bits-1)`` when symmetric.
:func:`pack_matmul_nbits` lays the codes out as ``MatMulNBits`` reads them (and
``GatherBlockQuantized`` reads the same bytes as ``[N, padded K * bits / 8]``).

Symmetric blocks use ORT's own trick: the value of largest magnitude maps to the code
``-2**(bits-1)`` exactly (its scale may be negative), so all ``2**bits`` codes are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GPTQ_LAZY_BLOCK = 128  # columns per lazy batch update (a multiple of every block size)


@dataclass(frozen=True)
class BlockQuantized:
    """Integer codes [N, padded K], scales [N, blocks] and zero points [N, blocks] or None."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block_size: int
    k: int  # unpadded input size

    def dequantize(self) -> np.ndarray:
        """The float weight [N, K] these codes stand for."""
        rows, blocks = self.scales.shape
        zero: np.ndarray | np.float32 = np.float32(2 ** (self.bits - 1))
        if self.zero_points is not None:
            zero = self.zero_points.astype(np.float32)[..., None]
        codes = self.codes.astype(np.float32).reshape(rows, blocks, self.block_size)
        values = (codes - zero) * self.scales[..., None]
        return values.reshape(rows, -1)[:, : self.k]


def _grid(
    block: torch.Tensor, bits: int, symmetric: bool, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [rows, 1] for the columns of ``block`` [rows, cols]."""
    top = 2**bits - 1
    if symmetric:
        index = block.abs().argmax(dim=1, keepdim=True)
        extreme = block.gather(1, index)
        scale = extreme / -(2 ** (bits - 1))
        zero = torch.full_like(scale, 2 ** (bits - 1))
    elif float_zero:  # the grid spans exactly [min, max]
        low = block.min(dim=1, keepdim=True).values
        scale = (block.max(dim=1, keepdim=True).values - low) / top
        zero = -low / torch.where(scale == 0, 1, scale)
    else:
        low = block.min(dim=1, keepdim=True).values.clamp(max=0)
        high = block.max(dim=1, keepdim=True).values.clamp(min=0)
        scale = (high - low) / top
        zero = torch.round(-low / torch.where(scale == 0, 1, scale)).clamp(0, top)
    return torch.where(scale == 0, torch.ones_like(scale), scale), zero


def _codes(
    values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    return torch.clamp(torch.round(values / scale + zero), 0, 2**bits - 1)


def _padded(weight: np.ndarray, block_size: int) -> torch.Tensor:
    rows, k = weight.shape
    pad = -k % block_size
    out = torch.zeros(rows, k + pad, dtype=torch.float32)
    out[:, :k] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    return out


def _result(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    *,
    bits: int,
    block_size: int,
    k: int,
    symmetric: bool,
    float_zero: bool,
) -> BlockQuantized:
    zero_points = None
    if not symmetric:
        zero_points = zeros.to(torch.float32 if float_zero else torch.uint8).numpy()
    return BlockQuantized(
        codes=codes.to(torch.uint8).numpy(),
        scales=scales.to(torch.float32).numpy(),
        zero_points=zero_points,
        bits=bits,
        block_size=block_size,
        k=k,
    )


def quantize_rtn(
    weight: np.ndarray,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    float_zero: bool = False,
) -> BlockQuantized:
    """Round-to-nearest codes of ``weight`` [N, K]."""
    w = _padded(weight, block_size)
    rows, cols = w.shape
    blocks = w.reshape(rows * (cols // block_size), block_size)
    scale, zero = _grid(blocks, bits, symmetric, float_zero)
    codes = _codes(blocks, scale, zero, bits).reshape(rows, cols)
    shape = (rows, cols // block_size)
    return _result(
        codes,
        scale.reshape(shape),
        zero.reshape(shape),
        bits=bits,
        block_size=block_size,
        k=weight.shape[1],
        symmetric=symmetric,
        float_zero=float_zero,
    )


def quantize_gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    float_zero: bool = False,
    damp: float = 0.01,
) -> BlockQuantized:
    """GPTQ (Frantar et al. 2022): columns are quantized in order and each one's error is
    spread over the columns not yet quantized, weighted by the inverse of ``hessian``
    [K, K] (the sum of x xᵀ over calibration inputs). A block's grid is fixed from the
    error-updated weights when its first column is reached."""
    w = _padded(weight, block_size)
    rows, cols = w.shape
    k = weight.shape[1]
    h = torch.eye(cols, dtype=torch.float64)
    h[:k, :k] = torch.from_numpy(np.asarray(hessian, dtype=np.float64))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    upper = torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    codes = torch.zeros(rows, cols)
    scales = torch.zeros(rows, cols // block_size)
    zeros = torch.zeros(rows, cols // block_size)
    for start in range(0, cols, GPTQ_LAZY_BLOCK):
        end = min(start + GPTQ_LAZY_BLOCK, cols)
        part = w[:, start:end].clone()
        errors = torch.zeros_like(part)
        local = upper[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % block_size == 0:
                scale, zero = _grid(part[:, i : i + block_size], bits, symmetric, float_zero)
                scales[:, column // block_size] = scale[:, 0]
                zeros[:, column // block_size] = zero[:, 0]
            q = _codes(part[:, i : i + 1], scale, zero, bits)
            codes[:, column] = q[:, 0]
            error = (part[:, i] - ((q - zero) * scale)[:, 0]) / local[i, i]
            part[:, i:] -= error[:, None] * local[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    return _result(
        codes,
        scales,
        zeros,
        bits=bits,
        block_size=block_size,
        k=k,
        symmetric=symmetric,
        float_zero=float_zero,
    )


def pack_matmul_nbits(
    quantized: BlockQuantized,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``MatMulNBits`` inputs: B [N, blocks, block bytes] uint8 (two 4-bit codes a byte,
    low nibble first), scales [N, blocks] and zero points (or None): integer ones packed
    like the codes, float ones as they are [N, blocks]."""
    rows, blocks = quantized.scales.shape
    codes = quantized.codes.reshape(rows, blocks, quantized.block_size)
    if quantized.bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    zero = quantized.zero_points
    if zero is not None and zero.dtype == np.float32:
        return np.ascontiguousarray(codes, dtype=np.uint8), quantized.scales, zero
    if zero is not None and quantized.bits == 4:
        if blocks % 2:
            zero = np.concatenate([zero, np.zeros((rows, 1), np.uint8)], axis=1)
        zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
    return (
        np.ascontiguousarray(codes, dtype=np.uint8),
        np.ascontiguousarray(quantized.scales, dtype=np.float32),
        None if zero is None else np.ascontiguousarray(zero, dtype=np.uint8),
    )
