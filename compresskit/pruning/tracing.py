"""Naming the module at fault when torch-pruning cannot trace a model, or a pruned model
no longer runs, so the error can say what to ignore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compresskit import interrupts
from compresskit.errors import first_line

# Layer types torch-pruning knows how to cut; a module with its own parameters outside
# these is where tracing or pruning goes wrong.
_KNOWN = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Embedding,
    nn.PReLU,
    nn.MultiheadAttention,
    nn.LSTM,
)


def unknown_parameter_owners(model: nn.Module) -> list[str]:
    """Modules holding parameters directly that torch-pruning has no rule for."""
    return [
        f"{name or '<model>'} ({type(module).__name__})"
        for name, module in model.named_modules()
        if not isinstance(module, _KNOWN) and any(True for _ in module.parameters(recurse=False))
    ]


@dataclass
class Failure:
    """Where a forward pass failed: the innermost running module, the conv/linear layer
    that ran last before it (usually the one feeding it), and the error."""

    module: str
    producer: str | None
    error: BaseException


def failing_module(model: nn.Module, inputs: tuple[Any, ...]) -> Failure | None:
    """Run ``model``; on an exception, say where it happened."""
    stack: list[str] = []
    layers: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name)

    def leave(name: str, is_layer: bool) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            stack.pop()
            if is_layer:
                layers.append(name)

        return hook

    handles = []
    for name, module in model.named_modules():
        is_layer = isinstance(module, nn.modules.conv._ConvNd | nn.Linear)
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave(name, is_layer)))
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    except Exception as error:
        interrupts.check(error)
        return Failure(stack[-1] if stack else "", layers[-1] if layers else None, error)
    finally:
        for handle in handles:
            handle.remove()
    return None


def describe(error: BaseException) -> str:
    return first_line(error)
