"""Parameter and multiply-accumulate counts of a model, measured on a real forward."""

from __future__ import annotations

import math

import torch
from torch import nn

from compresskit.kinds import kind_of, kinds_in


def count_params(model: nn.Module) -> int:
    """Parameters, plus weights a module kind keeps as buffers (int8 tables)."""
    stored = sum(
        getattr(module, name).numel()
        for _, module, kind in kinds_in(model)
        for name in kind.weight_buffers
    )
    return sum(p.numel() for p in model.parameters()) + stored


def weight_bytes(model: nn.Module) -> int:
    """Bytes the weights take as the model is deployed: what each module kind says of its
    layers (int8 values and scales, packed 4-bit blocks), float parameters as stored."""
    total = 0
    for module in model.modules():
        kind = kind_of(module)
        if kind is not None and kind.weight_bytes is not None:
            total += kind.weight_bytes(module)
            continue
        tensors = list(module.parameters(recurse=False))
        if kind is not None:
            tensors += [getattr(module, name) for name in kind.weight_buffers]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


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
