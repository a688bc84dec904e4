"""Static int8 post-training quantization that ends in ONNX Runtime's integer kernels.

Conv and Linear layers get int8 per-channel weights and uint8 per-tensor activations
(the scheme ORT fuses into QLinearConv / QGemm on x86), BatchNorm is folded and ReLU
fused; activation ranges come from the calibration split. The result is a torch model
with fake quant: it trains (QAT) and exports to QDQ ONNX.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Pass, PassConfig, Stage, register_pass
from compresskit.quantization.modules import calibrate_, is_quantized
from compresskit.quantization.prepare import prepare


class QuantizeConfig(PassConfig):
    calibration: Literal["minmax"] = "minmax"
    calibration_batches: int = Field(default=8, ge=1, description="batches of 32 samples")
    exclude: list[str] = Field(
        default_factory=list, description="module-name patterns (fnmatch) kept in float"
    )


@register_pass("quantize")
class Quantize(Pass[QuantizeConfig]):
    """int8 weights and activations, calibrated on real data.

    >>> Quantize(QuantizeConfig(exclude=["classifier"])).apply(model, ctx)  # doctest: +SKIP
    """

    config_cls = QuantizeConfig
    stage = Stage.QUANTIZATION
    needs = frozenset({DataNeed.CALIBRATION})

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if is_quantized(model):
            raise CompressKitError(
                "quantize: the model is already quantized; remove one quantize node"
            )
        preparation = prepare(model, exclude=list(self.config.exclude))
        if not preparation.quantized:
            raise CompressKitError(
                "quantize: no Conv2d or Linear layer to quantize"
                + (f" (all excluded by {self.config.exclude})" if preparation.excluded else "")
            )
        loader = ctx.data.loader("calibration", batch_size=32)
        batches = itertools.islice(loader, self.config.calibration_batches)
        torch.manual_seed(ctx.seed)
        seen = calibrate_(model, batches)
        if seen == 0:
            raise CompressKitError("quantize: the calibration split is empty; give more data")
        ctx.record(
            quantized_layers=len(preparation.quantized),
            float_layers=preparation.excluded,
            calibration_samples=seen,
            notes=preparation.notes,
        )
        return model
