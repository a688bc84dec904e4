"""Dynamic int8 for Linear-heavy models: ONNX Runtime's ``quantize_dynamic`` per channel.

Static int8 needs a fixed activation range per tensor; transformer activations (attention
scores, the additive mask, softmax) do not have one, and static QDQ on all-MiniLM-L6-v2
collapses (cosine 0.56). Dynamic int8 quantizes each Linear's input at run time from its
own range and keeps everything else float. Linear layers become ``DynamicQuantLinear``:
in torch they fake-quantize as ORT computes; the export is the float graph rewritten by
ORT's ``quantize_dynamic`` on those layers' MatMuls (``ExportResult.post_quantization``).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.attention import explicit_attention_
from compresskit.passes.base import Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import QuantizeDynamicRecord
from compresskit.quantization.dynamic import DynamicQuantLinear, dynamic_layers
from compresskit.quantization.modules import is_quantized
from compresskit.quantization.prepare import excluded

# Recurrent layers (the bulk of a GRU/LSTM net's work) that dynamic int8 would leave
# float: refused unless excluded. Convolutions stay float as before (int8 coverage says so).
UNQUANTIZED = (nn.RNNBase,)


class QuantizeDynamicConfig(PassConfig):
    """Which Linear layers get dynamic int8."""

    bits: int = Field(default=8, description="weight bits; ORT's MatMulInteger takes 8")
    per_channel: bool = Field(
        default=True, description="per-output-channel weight scales (per tensor: not supported)"
    )
    exclude: list[str] = Field(
        default_factory=list, description="module-name patterns (fnmatch) kept in float"
    )
    min_features: int = Field(
        default=1, ge=1, description="leave Linear layers with fewer in_features float"
    )

    @field_validator("bits")
    @classmethod
    def _int8_only(cls, bits: int) -> int:
        if bits != 8:
            raise ValueError(
                f"bits {bits} is not supported: ORT dynamic quantization takes int8 weights; "
                "use bits: 8, or the weight_only pass (nf4/fp4) for 4-bit weights"
            )
        return bits

    @field_validator("per_channel")
    @classmethod
    def _per_channel_only(cls, per_channel: bool) -> bool:
        if not per_channel:
            raise ValueError(
                "per_channel: false is not supported: per-tensor int8 weights lose too much "
                "on transformers; keep per_channel: true"
            )
        return per_channel


def _called_linears(model: nn.Module, example: tuple[torch.Tensor, ...]) -> set[str]:
    """Names of the Linear layers the forward calls (the others never reach the export)."""
    called: set[str] = set()
    handles = [
        module.register_forward_hook(lambda *_, name=name: called.add(name))
        for name, module in model.named_modules()
        if type(module) is nn.Linear
    ]
    try:
        with torch.no_grad():
            model.eval()(*example)
    finally:
        for handle in handles:
            handle.remove()
    return called


@register_pass("quantize_dynamic")
class QuantizeDynamic(Pass[QuantizeDynamicConfig]):
    """int8 Linear layers with activations quantized at run time (no calibration data).

    Example::

        QuantizeDynamic(QuantizeDynamicConfig(exclude=["classifier"])).apply(model, ctx)
    """

    config_cls = QuantizeDynamicConfig
    effects = Effects(quantizes=frozenset({"layers"}))
    record_cls = QuantizeDynamicRecord

    def check(self, model: nn.Module, ctx: Context) -> None:
        for name, module in model.named_modules():
            if isinstance(module, UNQUANTIZED) and not excluded(name, self.config.exclude):
                raise CompressKitError(
                    f"quantize_dynamic: layer {name!r} is a {type(module).__name__}, which "
                    "this pass leaves float (ONNX Runtime's dynamic int8 here covers Linear "
                    f"layers only); add {name!r} to exclude to keep it float"
                )
        linears = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.MultiheadAttention)
            and not excluded(n, self.config.exclude)
        ]
        if not linears:
            raise CompressKitError(
                "quantize_dynamic: no nn.Linear layer to quantize outside `exclude`; use "
                "quantize for conv models"
            )

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if is_quantized(model) or dynamic_layers(model):
            raise CompressKitError(
                "quantize_dynamic: the model is already quantized; remove one quantization node"
            )
        explicit = explicit_attention_(model, keep=lambda n: excluded(n, self.config.exclude))
        called = _called_linears(model, ctx.example_inputs)
        converted, kept, unused = [], [], []
        for name, module in list(model.named_modules()):
            if type(module) is not nn.Linear:
                continue
            if name not in called:  # e.g. BERT's pooler under a custom head: not exported
                unused.append(name)
                continue
            if excluded(name, self.config.exclude):
                kept.append(name)
                continue
            if module.in_features < self.config.min_features:
                kept.append(name)
                continue
            DynamicQuantLinear.convert_(module)
            converted.append(name)
        if not converted:
            raise CompressKitError(
                "quantize_dynamic: no nn.Linear layer to quantize"
                + (f" (all excluded: {kept})" if kept else "; use quantize for conv models")
            )
        model.eval()
        with torch.no_grad():
            model(*ctx.example_inputs)  # fails here, not at export, if something is off
        ctx.record(quantized_layers=len(converted), float_layers=kept, scheme="ort-dynamic")
        if explicit:
            ctx.record(
                notes=[f"rewrote {len(explicit)} nn.MultiheadAttention with explicit projections"]
            )
        if unused:
            ctx.record(unused_layers=unused)
        return model
