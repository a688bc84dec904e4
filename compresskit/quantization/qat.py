"""Quantization-aware training on top of a calibrated fake-quant model.

``prepare_qat`` makes the quantizers trainable: activation ranges either follow a moving
average of what training sees (``track_ranges``) or become learnable scales (LSQ,
``learn_scales``); weights are fake-quantized per channel with scales that follow them,
and every rounding passes gradients straight through. ``freeze_qat`` fixes ranges, scales
and the statistics of any BatchNorm that could not be folded (late in training, as in
torch.ao's QAT recipes), and ``convert_qat`` turns the result back into the fixed-scale
model that exports to int8 QDQ.

Example::

    quantize_static(model, ctx, config, what="qat")
    prepare_qat(model, learn_scales=True); train(model, ...); convert_qat(model)
"""

from __future__ import annotations

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.quantization.modules import (
    ActQuant,
    freeze_,
    quant_layers,
    set_mode,
    sync_tied_,
)


def _quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def _require_quantized(model: nn.Module, what: str) -> None:
    if not quant_layers(model):
        raise CompressKitError(
            f"qat {what}: the model has no fake-quant layers; prepare and calibrate it first "
            "(the quantize pass, or quantize_static) and then call prepare_qat"
        )


def prepare_qat(model: nn.Module, *, learn_scales: bool = False, track_ranges: bool = True) -> None:
    """Make a calibrated fake-quant ``model`` trainable in place."""
    _require_quantized(model, "prepare")
    set_mode(model, "quant")
    for quantizer in _quantizers(model):
        if not quantizer.enabled or quantizer.tied_to is not None:
            continue  # follows its producer
        quantizer.tracking = track_ranges and not learn_scales
        if learn_scales and not quantizer.learnable:
            value = quantizer.scale.detach().clone()
            del quantizer._buffers["scale"]
            quantizer.scale = nn.Parameter(value)  # type: ignore[assignment]


def freeze_qat(model: nn.Module) -> None:
    """Stop range tracking and scale learning, and freeze unfolded BatchNorm statistics."""
    for quantizer in _quantizers(model):
        quantizer.tracking = False
        if quantizer.learnable:
            quantizer.scale.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Fixed scales again (buffers, positive), tied quantizers synced, weight scales from
    the trained weights; the model is ready to export."""
    _require_quantized(model, "convert")
    for quantizer in _quantizers(model):
        quantizer.tracking = False
        if quantizer.learnable:
            value = quantizer.scale.detach().abs().clamp(min=1e-8)
            del quantizer._parameters["scale"]
            quantizer.register_buffer("scale", value)
    for layer in quant_layers(model):
        layer.freeze_()
    sync_tied_(model)
    set_mode(model, "quant")
    return model.eval()


def is_frozen(model: nn.Module) -> bool:
    return not any(
        q.tracking or (q.learnable and q.scale.requires_grad) for q in _quantizers(model)
    )


__all__ = ["convert_qat", "freeze_", "freeze_qat", "is_frozen", "prepare_qat"]
