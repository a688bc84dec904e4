"""int8 embedding tables: weight-only, symmetric, one scale per row.

An embedding lookup does no arithmetic, so there is no integer kernel to win; what int8
wins is size. In all-MiniLM-L6-v2 the word-embedding table is 30,522 x 384 floats
(46.9 MB, most of a pruned, int8-Linear model's ONNX file); as int8 rows with a float
scale per row it is 11.8 MB. The module stores only the int8 table and the scales, and
its forward is exactly what the exported graph runs: ``Gather`` on the int8 table,
``Cast`` to float, ``Mul`` by the gathered row scales. So ONNX Runtime and torch agree to
float rounding, and the torch model is as small as the file.

>>> Int8Embedding.convert_(model.embeddings.word_embeddings)     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compresskit.models.checkpoint import restorable


@restorable
class Int8Embedding(nn.Embedding):
    """An ``nn.Embedding`` whose table is int8 with a per-row scale (swapped in place)."""

    weight_int8: torch.Tensor
    row_scale: torch.Tensor
    # Buffers that hold the layer's weights (counted as parameters in size reports).
    weight_buffers = ("weight_int8",)

    @classmethod
    @torch.no_grad()
    def convert_(cls, module: nn.Embedding) -> Int8Embedding:
        if module.max_norm is not None:
            raise ValueError("an embedding with max_norm renormalises rows at lookup; not int8")
        weight = module.weight.detach().float()
        scale = torch.clamp(weight.abs().amax(dim=1) / 127.0, min=1e-12)
        quantized = torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8)
        cls._swap(module, quantized, scale)
        return module  # type: ignore[return-value]

    @classmethod
    def _swap(cls, module: nn.Embedding, quantized: torch.Tensor, scale: torch.Tensor) -> None:
        del module._parameters["weight"]
        module.__class__ = cls
        module.register_buffer("weight_int8", quantized)
        module.register_buffer("row_scale", scale)

    @classmethod
    def restore_structure(cls, module: nn.Module, attrs: dict[str, Any]) -> None:
        """Empty int8 buffers of the module's size; the state dict fills them."""
        assert isinstance(module, nn.Embedding)
        rows, dim = module.num_embeddings, module.embedding_dim
        cls._swap(module, torch.zeros(rows, dim, dtype=torch.int8), torch.ones(rows))

    def structure_attributes(self) -> dict[str, Any]:
        return {}

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
