"""int8 embedding tables: weight-only, symmetric, one scale per row.

An embedding lookup does no arithmetic, so there is no integer kernel to win; what int8
wins is size. In all-MiniLM-L6-v2 the word-embedding table is 30,522 x 384 floats
(46.9 MB, most of a pruned, int8-Linear model's ONNX file); as int8 rows with a float
scale per row it is 11.8 MB. The module stores only the int8 table and the scales, and
its forward is exactly what the exported graph runs: ``Gather`` on the int8 table,
``Cast`` to float, ``Mul`` by the gathered row scales. So ONNX Runtime and torch agree to
float rounding, and the torch model is as small as the file.

>>> embedding = Int8Embedding.convert_(nn.Embedding(100, 16))    # in place; returns it
>>> embedding.weight_int8.dtype, tuple(embedding(torch.tensor([[1, 2]])).shape)
(torch.int8, (1, 2, 16))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compresskit.kinds import module_kind
from compresskit.quantization.qparams import quantize_symmetric, symmetric_scale


def _restore(cls: type[nn.Module], module: nn.Module, attrs: Mapping[str, Any]) -> nn.Module:
    """Empty int8 buffers of the module's size; the state dict fills them."""
    if not isinstance(module, nn.Embedding):
        raise ValueError(f"an int8 embedding restores from an nn.Embedding, not {module}")
    rows, dim = module.num_embeddings, module.embedding_dim
    Int8Embedding._swap(module, torch.zeros(rows, dim, dtype=torch.int8), torch.ones(rows))
    return module


def _weight_bytes(module: nn.Module) -> int:
    table: Any = module
    return int(table.weight_int8.numel() + 4 * table.row_scale.numel())


# Exported as it runs in torch (Gather on the int8 table, Cast, Mul): float arithmetic.
@module_kind(
    precision="int8",
    export="as-is",
    weight_buffers=("weight_int8",),
    weight_bytes=_weight_bytes,
    restore=_restore,
)
class Int8Embedding(nn.Embedding):
    """An ``nn.Embedding`` whose table is int8 with a per-row scale (swapped in place)."""

    weight_int8: torch.Tensor
    row_scale: torch.Tensor

    @classmethod
    @torch.no_grad()
    def convert_(cls, module: nn.Embedding) -> Int8Embedding:
        if module.max_norm is not None:
            raise ValueError("an embedding with max_norm renormalises rows at lookup; not int8")
        weight = module.weight.detach().float()
        scale = symmetric_scale(weight, eps=1e-12)
        cls._swap(module, quantize_symmetric(weight, scale), scale)
        return module  # type: ignore[return-value]

    @classmethod
    def _swap(cls, module: nn.Embedding, quantized: torch.Tensor, scale: torch.Tensor) -> None:
        del module._parameters["weight"]
        module.__class__ = cls
        module.register_buffer("weight_int8", quantized)
        module.register_buffer("row_scale", scale)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]  # read-only: stored as int8
        """The dequantized table (for code that reads ``.weight``; the forward does not)."""
        return self.weight_int8.float() * self.row_scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[ids].to(torch.float32)
        return rows * self.row_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def int8_embeddings(model: nn.Module) -> list[Int8Embedding]:
    return [m for m in model.modules() if isinstance(m, Int8Embedding)]
