"""Static int8 post-training quantization that ends in ONNX Runtime's integer kernels.

Conv and Linear layers get int8 per-channel weights and uint8 per-tensor activations
(the scheme ORT fuses into QLinearConv / QGemm on x86), BatchNorm is folded and ReLU
fused; activation ranges come from the calibration split (min/max, a percentile, or the
clipping with least squared error). With ``mixed_precision`` the layers most sensitive
to quantization stay float under a budget. The result is a torch model with fake quant:
it trains (QAT) and exports to QDQ ONNX.
"""

from __future__ import annotations

from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import DataNeed, Effects, Pass, register_pass
from compresskit.passes.records import StaticQuantRecord
from compresskit.quantization.modules import is_quantized
from compresskit.quantization.prepare import check_supported, excluded, plain_layer
from compresskit.quantization.static import (
    StaticQuantConfig,
    check_mixed_precision,
    quantize_static,
)


class QuantizeConfig(StaticQuantConfig):
    """Static PTQ settings (see :class:`StaticQuantConfig`)."""

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION})


@register_pass("quantize")
class Quantize(Pass[QuantizeConfig]):
    """int8 weights and activations, calibrated on real data.

    Example::

        Quantize(QuantizeConfig(exclude=["classifier"])).apply(model, ctx)
        Quantize(QuantizeConfig(calibration="mse",
                 mixed_precision={"max_accuracy_drop": 0.005})).apply(model, ctx)
    """

    config_cls = QuantizeConfig
    effects = Effects(quantizes=frozenset({"layers"}))
    record_cls = StaticQuantRecord

    def check(self, model: nn.Module, ctx: Context) -> None:
        check_supported(model, list(self.config.exclude), what="quantize")
        check_mixed_precision(self.config, ctx, what="quantize")
        layers = [
            name
            for name, m in model.named_modules()
            if plain_layer(m) and not excluded(name, self.config.exclude)
        ]
        if not layers and not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            raise CompressKitError(
                "quantize: no Conv2d or Linear layer to quantize outside `exclude`; "
                "remove the node or narrow `exclude`"
            )

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if is_quantized(model):
            raise CompressKitError(
                "quantize: the model is already quantized; remove one quantize node"
            )
        ctx.record(**quantize_static(model, ctx, self.config, what="quantize"))
        return model
