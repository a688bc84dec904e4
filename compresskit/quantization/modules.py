"""Fake-quant conv and linear layers that export to ONNX QDQ and fuse into int8 kernels.

The scheme is the one ONNX Runtime's x86 QDQ fusions accept on AVX2 without VNNI:

* activations: per tensor, uint8, affine (0..255); a Linear output that no int8 layer
  reads stays float (QGemm with a float output)
* weights: per output channel, int8, symmetric (zero point 0, |q| <= 127)
* bias: int32 with scale ``s_in * s_w[c]`` (exported as an int32 DequantizeLinear)

Layers are converted in place by swapping ``__class__`` (like ``torch.ao.nn.qat``), so
module and parameter names stay the same and teachers, hooks and counters still match.

Each quant layer has a mode: ``float`` (quantizers bypassed), ``calib`` (observers record
min/max) and ``quant`` (fake quant with straight-through gradients, usable for QAT).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.errors import CompressKitError
from compresskit.kinds import module_kind
from compresskit.quantization.calibration import choose_range
from compresskit.quantization.observers import CalibrationMethod, observer_for, sample_values
from compresskit.quantization.qparams import (
    affine_qparams,
    fake_quant_weight,
    int8_weight_bytes,
    symmetric_scale,
)

Mode = Literal["float", "calib", "quant"]
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class ActQuant(nn.Module):
    """Per-tensor uint8 affine fake quantizer with a min/max observer.

    ``enabled=False`` makes it an identity: the producer already quantized this tensor,
    and a second Q/DQ pair would only cost time. ``tied_to`` (not a submodule) makes it
    copy a producer's parameters at freeze time, so ``DQ -> MaxPool -> Q`` pairs have equal
    parameters and ONNX Runtime can drop them.
    """

    quant_min, quant_max = 0, 255
    min_val: torch.Tensor
    max_val: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, *, force_zero_point_zero: bool = False) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.mode: Mode = "float"
        self.enabled = True
        self.force_zero_point_zero = force_zero_point_zero  # after a fused ReLU
        self.tied_to: ActQuant | None = None
        # How calibration turns what it saw into a range (an observer, see observers.py);
        # the sample of values it keeps for that is plain Python state, never saved.
        self.method: CalibrationMethod = "minmax"
        self.percentile = 99.99
        self.samples: list[torch.Tensor] = []
        # QAT: follow the range with a moving average while training (until frozen).
        self.tracking = False
        self.momentum = 0.01

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("tied_to", "samples"):  # references, not children or state
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        self.min_val.copy_(torch.minimum(self.min_val, x.detach().min()))
        self.max_val.copy_(torch.maximum(self.max_val, x.detach().max()))
        if observer_for(self.method, percentile=self.percentile).keeps_samples:
            self.samples.append(sample_values(x, seed=len(self.samples)))

    @torch.no_grad()
    def track(self, x: torch.Tensor) -> None:
        """QAT: move the range towards this batch's and refresh scale and zero point."""
        low, high = x.detach().min(), x.detach().max()
        if not torch.isfinite(self.min_val):
            self.min_val.copy_(low)
            self.max_val.copy_(high)
        self.min_val.lerp_(low, self.momentum)
        self.max_val.lerp_(high, self.momentum)
        self._set_range(self.min_val, self.max_val)

    @torch.no_grad()
    def freeze_(self) -> None:
        """Fix scale and zero point from the observed range (or the tied producer)."""
        if self.tied_to is not None:
            self.scale.copy_(self.tied_to.scale)
            self.zero_point.copy_(self.tied_to.zero_point)
            return
        seen_low, seen_high = float(self.min_val), float(self.max_val)
        if seen_low == math.inf and seen_high == -math.inf:
            raise RuntimeError("activation observer saw no data; run calibration first")
        if not (math.isfinite(seen_low) and math.isfinite(seen_high)):
            raise CompressKitError(
                "int8 calibration saw NaN or infinite activations; check the calibration data "
                "and the model's weights for NaN/inf"
            )
        low, high = choose_range(self, self.samples)
        self.samples = []
        self._set_range(low, high)

    @torch.no_grad()
    def _set_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        scale, zero_point = affine_qparams(
            low,
            high,
            qmin=self.quant_min,
            qmax=self.quant_max,
            zero_point_zero=self.force_zero_point_zero,
        )
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) in use: the producer's while training a tied quantizer, so
        both ends of a ``DQ -> MaxPool -> Q`` pair move together during QAT."""
        if self.tied_to is not None and self.training:
            return self.tied_to.qparams()
        return self.scale, self.zero_point

    @property
    def learnable(self) -> bool:
        return isinstance(self.scale, nn.Parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.mode == "float":
            return x
        if self.mode == "calib":
            self.observe(x)
            return x
        if self.training and self.tracking and self.tied_to is None:
            self.track(x)
        scale, zero_point = self.qparams()
        if self.training and isinstance(scale, nn.Parameter) and scale.requires_grad:
            return lsq_fake_quant(x, scale, zero_point, self.quant_min, self.quant_max)
        if isinstance(scale, nn.Parameter):
            scale = scale.detach()
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point, self.quant_min, self.quant_max
        )

    def extra_repr(self) -> str:
        return (
            f"enabled={self.enabled}, mode={self.mode}, scale={float(self.scale):.4g}, "
            f"zero_point={int(self.zero_point)}, tied={self.tied_to is not None}"
        )


def lsq_fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """Fake quant with a learnable scale (LSQ, Esser et al. 2020): straight-through
    rounding, and the scale's gradient damped by 1/sqrt(numel * qmax)."""
    grad_factor = 1.0 / math.sqrt(x.numel() * qmax)
    scale = scale * grad_factor + (scale - scale * grad_factor).detach()
    scaled = x / scale + zero_point
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return (torch.clamp(rounded, qmin, qmax) - zero_point) * scale


class _BiasFakeQuantInt32(torch.autograd.Function):
    """int32 bias fake quant; exports as Div -> Round -> Cast -> DequantizeLinear, and the
    chain on initializers is folded to an int32 initializer after export."""

    @staticmethod
    def forward(ctx: Any, bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(bias / scale), INT32_MIN, INT32_MAX) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None  # straight-through

    @staticmethod
    def symbolic(g: Any, bias: Any, scale: Any) -> Any:
        q = g.op("Cast", g.op("Round", g.op("Div", bias, scale)), to_i=6)  # INT32
        zero = g.op("Constant", value_t=torch.zeros(1, dtype=torch.int32))
        zero = g.op("Expand", zero, g.op("Shape", scale))
        return g.op("DequantizeLinear", q, scale, zero, axis_i=0)


class _QuantMixin:
    """What QuantConv2d and QuantLinear share; mixed in before the float class."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    act_in: ActQuant
    act_out: ActQuant
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    fused_relu: bool
    # The fused activation's ceiling: ReLU6 clamps at 6 (None: a plain ReLU).
    relu_max: float | None
    mode: Mode
    training: bool

    def _init_quant(self, *, fused_relu: bool = False, relu_max: float | None = None) -> None:
        module: Any = self
        object.__setattr__(module, "fused_relu", bool(fused_relu))
        object.__setattr__(module, "relu_max", relu_max)
        module.act_in = ActQuant()
        module.act_out = ActQuant(force_zero_point_zero=fused_relu)
        module.register_buffer("w_scale", symmetric_scale(self.weight))
        module.register_buffer("w_zero_point", torch.zeros(self.weight.shape[0], dtype=torch.int32))
        self.mode = "float"

    def set_fused_relu(self, flag: bool = True, *, relu_max: float | None = None) -> None:
        """Compute the following ReLU (or ReLU6: ``relu_max`` 6) here, so the output grid
        starts at 0 and ends at the ceiling: ORT then drops the activation after the conv."""
        self.fused_relu = flag
        self.relu_max = relu_max if flag else None
        self.act_out.force_zero_point_zero = flag

    @torch.no_grad()
    def freeze_(self) -> None:
        if not bool(torch.isfinite(self.weight).all()):
            raise CompressKitError(
                "int8 quantization found NaN or infinite weights (training diverged?); "
                "lower the learning rate or check the model's weights"
            )
        self.w_scale.copy_(symmetric_scale(self.weight))

    def _fake_quant_weight(self) -> torch.Tensor:
        if self.training:  # QAT: scales follow the weights as they move
            with torch.no_grad():
                self.w_scale.copy_(symmetric_scale(self.weight))
        return fake_quant_weight(self.weight, self.w_scale, self.w_zero_point)

    def _fake_quant_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        # A disabled act_in copied its producer's scale at freeze time (and follows it
        # while training).
        scale: torch.Tensor = self.act_in.qparams()[0].detach() * self.w_scale
        return _BiasFakeQuantInt32.apply(self.bias, scale)  # type: ignore[no-any-return]

    def _quant_forward(
        self,
        x: torch.Tensor,
        op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    ) -> torch.Tensor:
        if self.mode == "quant":
            y = op(self.act_in(x), self._fake_quant_weight(), self._fake_quant_bias())
        else:
            if self.mode == "calib":
                self.act_in(x)
            y = op(x, self.weight, self.bias)
        if self.fused_relu:
            y = F.relu(y) if self.relu_max is None else y.clamp(0.0, self.relu_max)
        return self.act_out(y)


def _structure(module: nn.Module) -> dict[str, Any]:
    quant: Any = module
    return {
        "fused_relu": quant.fused_relu,
        "relu_max": quant.relu_max,
        "act_in_enabled": quant.act_in.enabled,
        "act_out_enabled": quant.act_out.enabled,
        "mode": quant.mode,
    }


def _restore(cls: type[nn.Module], module: nn.Module, attrs: Mapping[str, Any]) -> nn.Module:
    """Turn a freshly built float layer into a quant layer ready for a state dict."""
    quant: Any = module
    quant.__class__ = cls
    relu_max = attrs.get("relu_max")
    quant._init_quant(
        fused_relu=bool(attrs.get("fused_relu", False)),
        relu_max=float(relu_max) if relu_max is not None else None,
    )
    quant.act_in.enabled = bool(attrs.get("act_in_enabled", True))
    quant.act_out.enabled = bool(attrs.get("act_out_enabled", True))
    set_mode(module, attrs.get("mode", "quant"))
    return module


def _weight_bytes(module: nn.Module) -> int:
    quant: Any = module
    return int8_weight_bytes(quant.weight, quant.w_scale, quant.bias)


# Fake quant exports through the TorchScript exporter as QuantizeLinear/DequantizeLinear.
_quant_kind = module_kind(
    precision="int8",
    export="qdq",
    weight_bytes=_weight_bytes,
    structure=_structure,
    restore=_restore,
)


@_quant_kind
class QuantConv2d(_QuantMixin, nn.Conv2d):
    """A Conv2d with int8 fake quant; ``QuantConv2d.convert_(conv)`` converts in place."""

    @classmethod
    def convert_(cls, module: nn.Conv2d, *, fused_relu: bool = False) -> QuantConv2d:
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode {module.padding_mode!r} cannot be quantized")
        module.__class__ = cls
        quant: QuantConv2d = module  # type: ignore[assignment]
        quant._init_quant(fused_relu=fused_relu)
        return quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self._modules.get("static_padding")  # a "same padding" conv pads first
        if padding is not None:
            x = padding(x)
        return self._quant_forward(x, self._conv_forward)


@_quant_kind
class QuantLinear(_QuantMixin, nn.Linear):  # type: ignore[misc]  # bias: Tensor vs Tensor | None
    """A Linear with int8 fake quant. Inputs are flattened to 2-D so export always gives
    Gemm (fused by ORT into QGemm with the int32 bias); an N-D MatMul + Add would put the
    Add between the MatMul and its output quantizer."""

    @classmethod
    def convert_(cls, module: nn.Linear, *, fused_relu: bool = False) -> QuantLinear:
        module.__class__ = cls
        quant: QuantLinear = module  # type: ignore[assignment]
        quant._init_quant(fused_relu=fused_relu)
        return quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        if x.dim() != 2:
            x = x.reshape(-1, self.in_features)
        y = self._quant_forward(x, F.linear)
        if len(leading) != 1:
            y = y.reshape(*leading, self.out_features)
        return y


QUANT_TYPES = (QuantConv2d, QuantLinear)


def quant_layers(model: nn.Module) -> list[QuantConv2d | QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QUANT_TYPES)]


def is_quantized(model: nn.Module) -> bool:
    return bool(quant_layers(model))


def activation_quantizers(model: nn.Module) -> list[ActQuant]:
    """Every activation quantizer of ``model``: its layers' and those outside any layer
    (the quantizers of int8 residual adds)."""
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def set_mode(model: nn.Module, mode: Mode) -> None:
    """Set every quant layer (or the one given) and every quantizer to ``mode``."""
    if isinstance(model, QUANT_TYPES):
        model.mode = model.act_in.mode = model.act_out.mode = mode
        return
    for layer in quant_layers(model):
        layer.mode = mode
    for quantizer in activation_quantizers(model):
        quantizer.mode = mode


@torch.no_grad()
def sync_tied_(model: nn.Module) -> None:
    """Tied quantizers copy their producer's scale and zero point."""
    for quantizer in activation_quantizers(model):
        if quantizer.tied_to is not None:
            quantizer.freeze_()


@torch.no_grad()
def freeze_(model: nn.Module) -> None:
    """Fix all scales: own observers first, then the tied quantizers copy theirs."""
    for layer in quant_layers(model):
        layer.freeze_()
    for quantizer in activation_quantizers(model):
        if quantizer.tied_to is None and quantizer.enabled:
            quantizer.freeze_()
    sync_tied_(model)


def to_float_(layer: QuantConv2d | QuantLinear) -> nn.Module:
    """Turn a quant layer back into its float class in place (weights unchanged)."""
    module: Any = layer
    for name in ("act_in", "act_out"):
        del module._modules[name]
    for name in ("w_scale", "w_zero_point"):
        del module._buffers[name]
    module.__class__ = nn.Conv2d if isinstance(layer, QuantConv2d) else nn.Linear
    return module  # type: ignore[no-any-return]


@torch.no_grad()
def calibrate_(
    model: nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    *,
    unused: list[str] | None = None,
) -> int:
    """Observe activation ranges on ``(*inputs, label)`` batches, freeze scales, then
    switch to ``quant``. Layers the forward never calls (a BERT pooler under a custom
    head) go back to float; their names are appended to ``unused``.

    Returns the number of samples seen.
    """
    was_training = model.training
    model.eval()
    set_mode(model, "calib")
    called: set[nn.Module] = set()
    hooks = [
        layer.register_forward_pre_hook(lambda module, _: called.add(module))
        for layer in quant_layers(model)
    ]
    seen = 0
    try:
        for *inputs, _ in batches:
            model(*inputs)
            seen += len(inputs[0])
    finally:
        for hook in hooks:
            hook.remove()
    if seen:
        for name, module in list(model.named_modules()):
            if isinstance(module, QUANT_TYPES) and module not in called:
                to_float_(module)
                if unused is not None:
                    unused.append(name)
    freeze_(model)
    set_mode(model, "quant")
    model.train(was_training)
    return seen
