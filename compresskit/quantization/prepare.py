"""Prepare a float model for int8: fold BatchNorm, convert layers, fuse ReLU, link quantizers.

torch.fx is used only to *find* patterns by module name (conv -> bn, conv/linear -> relu,
which quant layer feeds which); the edits happen in the user's own module tree, so its
class and ``forward`` stay untouched and the model keeps its names.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from compresskit import interrupts
from compresskit.errors import CompressKitError
from compresskit.kinds import kind_of
from compresskit.models.attention import explicit_attention_
from compresskit.quantization.modules import QUANT_TYPES, QuantConv2d, QuantLinear
from compresskit.quantization.residual_plan import rewrite_residuals
from compresskit.quantization.residuals import ResidualResult

# Ops that keep a quantized tensor on the same (scale, zero point) grid.
_TRANSPARENT_MODULES = (nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Flatten, nn.ReLU)
_TRANSPARENT_FUNCTIONS = {torch.flatten, F.max_pool2d, F.relu, torch.relu, F.dropout}
_TRANSPARENT_METHODS = {"view", "reshape", "flatten", "contiguous", "relu"}


@dataclass
class Preparation:
    """What :func:`prepare` did, for the report."""

    quantized: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    traced: bool = True
    residuals: ResidualResult | None = None  # None: not asked for


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold eval-mode BatchNorm statistics into the conv's weight and bias."""
    assert bn.running_var is not None and bn.running_mean is not None
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = (bias - bn.running_mean) * factor + beta
    if conv.bias is None:
        conv.bias = nn.Parameter(folded)
    else:
        conv.bias.copy_(folded)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with padded convs kept whole (a module, as a Conv2d is)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return is_padded_conv(module) or super().is_leaf_module(module, qualified_name)


class _Graph:
    def __init__(self, model: nn.Module) -> None:
        self.graph_module = fx.GraphModule(model, _Tracer().trace(model))
        self.modules = dict(model.named_modules())
        self.calls = Counter(
            n.target for n in self.graph_module.graph.nodes if n.op == "call_module"
        )

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def transparent(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), _TRANSPARENT_MODULES)
        if node.op == "call_function":
            return node.target in _TRANSPARENT_FUNCTIONS
        return node.op == "call_method" and node.target in _TRANSPARENT_METHODS


# Compute layers this scheme has no int8 kernel mapping for; they must be excluded by name.
_UNSUPPORTED = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.MultiheadAttention,
    nn.RNNBase,
)


# Padding modules a "same padding" conv applies before convolving (EfficientNet's
# Conv2dStaticSamePadding and its copies: a Conv2d subclass with a ``static_padding`` child).
_PADDING = (nn.ZeroPad2d, nn.Identity)


def is_padded_conv(module: nn.Module) -> bool:
    """A Conv2d subclass whose only child is ``static_padding`` (zero padding, applied
    before the convolution): quantized as a Conv2d that pads first."""
    children = dict(module.named_children())
    return (
        isinstance(module, nn.Conv2d)
        and type(module) is not nn.Conv2d
        and set(children) == {"static_padding"}
        and (
            isinstance(children["static_padding"], _PADDING)
            # the model's own Identity class (efficientnet_pytorch defines one)
            or type(children["static_padding"]).__name__ == "Identity"
        )
    )


def plain_layer(module: nn.Module) -> bool:
    """A Conv2d or Linear this pass converts (a padded conv counts as a Conv2d)."""
    return type(module) in (nn.Conv2d, nn.Linear) or is_padded_conv(module)


def excluded(name: str, exclude: list[str]) -> bool:
    """Whether module ``name`` matches one of the ``exclude`` patterns: the name itself, a
    parent of it, or an fnmatch pattern."""
    return any(
        name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)
        for pattern in exclude
    )


def check_supported(model: nn.Module, exclude: list[str], *, what: str = "quantize") -> None:
    """Fail with the layer's name when a compute layer cannot be quantized (and is not
    excluded), instead of leaving it float without a word. ``nn.MultiheadAttention`` is
    supported: :func:`prepare` makes its projections explicit Linear layers."""
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        if not name or excluded(name, exclude):
            continue
        reason = None
        if name in attention or excluded(name, attention):  # made explicit Linear layers
            continue
        if isinstance(module, _UNSUPPORTED):
            reason = f"is a {type(module).__name__}, which this pass cannot quantize"
        elif (
            plain_layer(module) and isinstance(module, nn.Conv2d) and module.padding_mode != "zeros"
        ):
            reason = (
                f"is a Conv2d with padding_mode {module.padding_mode!r}, which int8 kernels lack"
            )
        elif (
            isinstance(module, nn.Conv2d | nn.Linear)
            and not plain_layer(module)
            and kind_of(module) is None
        ):
            base = "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"
            reason = (
                f"is a {type(module).__name__}, a {base} subclass with a forward of its own, "
                "which this pass cannot quantize"
            )
        if reason:
            raise CompressKitError(
                f"{what}: layer {name!r} {reason}; add {name!r} to exclude to keep it float"
            )


def prepare(
    model: nn.Module, *, exclude: list[str] | None = None, residuals: bool = True
) -> Preparation:
    """Convert ``model`` in place for int8; layers matching ``exclude`` stay float. With
    ``residuals``, adds and concatenations between int8 layers take int8 inputs too
    (:mod:`compresskit.quantization.residual_plan`)."""
    exclude = exclude or []
    check_supported(model, exclude)
    result = Preparation()
    explicit = explicit_attention_(model, keep=lambda name: excluded(name, exclude))
    if explicit:
        result.notes.append(
            f"rewrote {len(explicit)} nn.MultiheadAttention with explicit q/k/v/out Linear "
            "layers (quantized like any Linear)"
        )
    model.eval()
    try:
        graph: _Graph | None = _Graph(model)
    except Exception as error:  # dynamic control flow and the like
        interrupts.check(error)
        result.traced = False
        result.notes.append(
            f"torch.fx could not trace the model ({type(error).__name__}); BatchNorm is not "
            "folded and ReLU not fused, so more ops stay float"
        )
        graph = None
        if residuals:
            result.residuals = ResidualResult(
                notes=["the model does not trace: residual adds and concatenations stay float"]
            )
    relu_plan = _fold_and_plan(model, graph, result) if graph else {}
    for name, module in list(model.named_modules()):
        if not plain_layer(module):
            continue
        if excluded(name, exclude):
            result.excluded.append(name)
            continue
        if isinstance(module, nn.Conv2d):
            QuantConv2d.convert_(module)  # type: ignore[arg-type]
        else:
            QuantLinear.convert_(module)  # type: ignore[arg-type]
        result.quantized.append(name)
    if graph is not None:
        fused: Counter[str] = Counter()
        for producer_name, (relu_name, ceiling) in relu_plan.items():
            producer = model.get_submodule(producer_name)
            if not isinstance(producer, QUANT_TYPES):
                continue
            producer.set_fused_relu(True, relu_max=ceiling)
            fused[relu_name] += 1
        # An activation every call of which now sits inside its producer goes (a shared
        # module too: EfficientNet's one ReLU6); one still called on a float path stays,
        # a no-op on the fused outputs.
        for relu_name, count in fused.items():
            if count == graph.calls[relu_name]:
                set_submodule(model, relu_name, nn.Identity())
        _link_quantizers(graph, model, result)
    _float_linear_outputs(model, result)
    if graph is not None and residuals:
        result.residuals = rewrite_residuals(model)
    return result


def _float_linear_outputs(model: nn.Module, result: Preparation) -> None:
    """A Linear whose output no int8 layer consumes keeps it float: ORT runs QGemm with a
    float output, so there is no requantisation step to cost time and precision (in a
    transformer every Linear feeds attention, GELU or a residual LayerNorm, and the uint8
    rounding of those outputs is what made ORT and torch drift apart layer by layer).
    QLinearConv has no float-output form, so conv outputs stay quantized."""
    layers = [model.get_submodule(name) for name in result.quantized]
    read = {layer.act_in.tied_to for layer in layers if isinstance(layer, QUANT_TYPES)}
    count = 0
    for layer in layers:
        if isinstance(layer, QuantLinear) and layer.act_out not in read:
            layer.act_out.enabled = False
            count += 1
    if count:
        result.notes.append(
            f"{count} Linear layer(s) keep a float output (no int8 consumer; QGemm writes float)"
        )


def _relu_ceiling(module: nn.Module | None) -> float | None | Literal[False]:
    """A ReLU fuses with no ceiling (None), a ReLU6 (or a Hardtanh from 0) with its top;
    False: not an activation that fuses."""
    if isinstance(module, nn.ReLU):
        return None
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val > 0:
        return float(module.max_val)  # nn.ReLU6 is Hardtanh(0, 6)
    return False


def _fold_and_plan(
    model: nn.Module, graph: _Graph, result: Preparation
) -> dict[str, tuple[str, float | None]]:
    """Fold conv -> bn pairs; return {producer: (activation, ceiling)} to fuse after
    conversion."""
    nodes = list(graph.graph_module.graph.nodes)
    folded: set[str] = set()
    for node in nodes:
        bn = graph.module(node)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        source = node.args[0]
        conv = graph.module(source) if isinstance(source, fx.Node) else None
        if (
            conv is None
            or not plain_layer(conv)
            or not isinstance(conv, nn.Conv2d)
            or not isinstance(source, fx.Node)
        ):
            result.notes.append(f"{node.target}: BatchNorm not after a Conv2d, left in float")
            continue
        if (
            len(source.users) != 1
            or graph.calls[source.target] != 1
            or graph.calls[node.target] != 1
        ):
            result.notes.append(f"{node.target}: conv output or module shared, not folded")
            continue
        fold_batchnorm(conv, bn)
        set_submodule(model, str(node.target), nn.Identity())
        folded.add(str(node.target))
    plan: dict[str, tuple[str, float | None]] = {}
    for node in nodes:
        ceiling = _relu_ceiling(graph.module(node))
        if ceiling is False:
            continue
        source = node.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module" and source.target in folded:
            if len(source.users) != 1:
                continue
            source = source.args[0]
        producer = graph.module(source) if isinstance(source, fx.Node) else None
        if (
            isinstance(source, fx.Node)
            and producer is not None
            and plain_layer(producer)
            and len(source.users) == 1
            and graph.calls[source.target] == 1
        ):
            plan[str(source.target)] = (str(node.target), ceiling)
    if folded:
        result.notes.append(f"folded {len(folded)} BatchNorm layers into their convs")
    return plan


def _link_quantizers(graph: _Graph, model: nn.Module, result: Preparation) -> None:
    """Consumer input quantizer := producer output quantizer when only grid-preserving
    ops lie between: a direct edge disables the consumer's (no Q-DQ-Q-DQ), a MaxPool or
    reshape between ties their parameters (ORT drops the DQ -> op -> Q pair)."""
    modules = graph.modules = dict(model.named_modules())  # after folding and fusing
    quant_names = {n for n, m in modules.items() if isinstance(m, QUANT_TYPES)}
    for node in graph.graph_module.graph.nodes:
        if (
            node.op != "call_module"
            or node.target not in quant_names
            or graph.calls[node.target] != 1
        ):
            continue
        source, hops = node.args[0], 0
        while (
            isinstance(source, fx.Node)
            and graph.transparent(source)
            and source.target not in quant_names
        ):
            if not isinstance(graph.module(source), nn.Identity | nn.Dropout):
                hops += 1
            source = source.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and source.target in quant_names
            and graph.calls[source.target] == 1
        ):
            continue
        producer = modules[str(source.target)]
        consumer = modules[str(node.target)]
        assert isinstance(producer, QUANT_TYPES) and isinstance(consumer, QUANT_TYPES)
        consumer.act_in.tied_to = producer.act_out
        if hops == 0:
            consumer.act_in.enabled = False
