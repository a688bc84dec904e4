"""Parameter and multiply-accumulate counts of a model, measured on a real forward."""

from __future__ import annotations

import math

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters, plus weights a quantization pass keeps as buffers (int8 tables)."""
    stored = sum(
        getattr(module, name).numel()
        for module in model.modules()
        for name in getattr(module, "weight_buffers", ())
    )
    return sum(p.numel() for p in model.parameters()) + stored


def state_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in the state dict (quantized tables and scales included)."""
    return sum(
        t.numel() * t.element_size()
        for t in module.state_dict().values()
        if isinstance(t, torch.Tensor)
    )


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """MACs per sample of the conv and linear layers (the work pruning and int8 change).

    Attention's activation-activation matmuls are not counted.
    """
    total = 0

    def conv_hook(
        module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        assert isinstance(module, nn.modules.conv._ConvNd)
        kernel = math.prod(module.kernel_size)
        per_output = kernel * module.in_channels // module.groups
        total += output[0].numel() * per_output

    def linear_hook(
        module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(*(x[:1] for x in example_inputs))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)
