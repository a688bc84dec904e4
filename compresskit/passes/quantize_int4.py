"""Int4 weights for a causal LM, applied where ONNX Runtime runs them: at export.

The pass leaves the torch model float and records the int4 settings; the run exports the
candidate's KV-cache ONNX folder in float, checks it against torch, then rewrites every
weight MatMul as ``MatMulNBits`` (round-to-nearest or GPTQ on calibration windows) and the
LM head / tied embedding as the ``head`` format says (:mod:`compresskit.export.lowbit`).
Why not fake-quantize in torch: the int4 kernel, its block grid and GPTQ's error
feedback live in the ONNX graph; torch would only approximate them.

Example::

    QuantizeInt4(QuantizeInt4Config(algorithm="rtn")).apply(model, ctx)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from compresskit.context import Context
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.pruning.decoder import find_decoder
from compresskit.records import Line, PassRecord, Table

Algorithm = Literal["rtn", "gptq"]
HeadFormat = Literal["int8", "int4", "float"]
BlockSize = Literal[16, 32, 64, 128]
AccuracyLevel = Literal[0, 1, 2, 3, 4]


class QuantizeInt4Config(PassConfig):
    """Block-wise int4 weights at export (the fields of ``export.lowbit.Int4Config``).

    >>> QuantizeInt4Config(algorithm="gptq", block_size=32, head="int8").block_size
    32
    """

    algorithm: Algorithm = Field(
        default="gptq", description="rtn: round to nearest; gptq: calibrated on windows"
    )
    block_size: BlockSize = Field(default=32, description="weights per scale along the input axis")
    symmetric: bool = Field(default=True, description="no zero points")
    head: HeadFormat = Field(
        default="int8", description="LM head and tied embedding: 8-bit blocks, 4-bit, or float"
    )
    accuracy_level: AccuracyLevel = Field(
        default=4, description="MatMulNBits compute: 4 = int8 activations (fastest on CPU)"
    )
    calibration_windows: int = Field(
        default=16, ge=1, le=4096, description="gptq: calibration windows for the Hessians"
    )

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION} if self.algorithm == "gptq" else ())


class Int4Record(PassRecord):
    """The int4 settings the export applies (the torch model stays float)."""

    algorithm: Algorithm = "gptq"
    block_size: BlockSize = 32
    symmetric: bool = True
    head: HeadFormat = "int8"
    accuracy_level: AccuracyLevel = 4
    calibration_windows: int = 16

    def summary(self) -> list[Line | Table]:
        return [
            Line(
                text=f"int4 weights at export: MatMulNBits ({self.algorithm}, block "
                f"{self.block_size}, {'symmetric' if self.symmetric else 'asymmetric'}), "
                f"head {self.head}; the torch model stays float"
            )
        ] + super().summary()


@register_pass("quantize_int4")
class QuantizeInt4(Pass[QuantizeInt4Config]):
    """Mark a decoder LM for int4 weights in its exported ONNX folder (see module doc)."""

    config_cls = QuantizeInt4Config
    # Nothing may prune, train or quantize after it: the export quantizes what it is given.
    effects = Effects(quantizes=frozenset({"layers", "embeddings"}))
    record_cls = Int4Record

    def check(self, model: nn.Module, ctx: Context) -> None:
        find_decoder(model, what="quantize_int4")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        find_decoder(model, what="quantize_int4")
        ctx.record(**self.config.model_dump())
        return model


__all__ = ["Int4Record", "QuantizeInt4", "QuantizeInt4Config"]
