"""Whole blocks (depth pruning): find blocks that can be bypassed, measure what bypassing
each costs on calibration data, remove the chosen ones.

A block can be bypassed when its output has its input's shape (residual blocks,
transformer layers). Removing one deletes it from its ``ModuleList``/``Sequential``
(indices shift; compresskit's checkpoint records the new length) or, for a block held in
a plain attribute, replaces it with ``nn.Identity``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.pruning.attention import encoder_layers, sync_config
from compresskit.pruning.criteria import CalibrationSet
from compresskit.pruning.scope import match
from compresskit.tasks import first_tensor

BlockCriterion = Literal["loss", "output"]


@dataclass
class Block:
    name: str
    module: nn.Module


@torch.no_grad()
def _shape_preserving(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, bool]:
    """For every module: does its (first) output have its (first) input's shape?"""
    result: dict[str, bool] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = first_tensor(args) if args else first_tensor(list(kwargs.values()))
            y = first_tensor(output)
            result[name] = (
                x is not None
                and y is not None
                and x.shape == y.shape
                and x.is_floating_point()  # not token ids
            )

        return record

    handles = [
        m.register_forward_hook(hook(n), with_kwargs=True) for n, m in model.named_modules() if n
    ]
    try:
        model.eval()(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return result


def find_blocks(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], patterns: list[str]
) -> list[Block]:
    """Blocks that may be removed, in module order: those matching ``patterns``, or by
    default the encoder layers of a transformer, else the composite members of the model
    itself and of every ``ModuleList``/``Sequential`` whose output keeps the input's shape
    (a ResNet's ``layer1`` that is an attribute of the model, as much as ``features.3``)."""
    preserving = _shape_preserving(model, inputs)
    if patterns:
        blocks = []
        for pattern in patterns:
            for name, module in match(model, pattern, what="prune_blocks blocks").items():
                if not preserving.get(name, False):
                    raise CompressKitError(
                        f"prune_blocks: {name} changes the shape of its input (or never runs), "
                        "so it cannot be bypassed; match residual blocks only"
                    )
                blocks.append(Block(name, module))
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        unique = {b.name: b for b in blocks}
        return sorted(unique.values(), key=lambda b: order[b.name])
    layers = encoder_layers(model)
    if layers:
        return [Block(layer.name, layer.module) for layer in layers]
    blocks = []
    for parent_name, parent in model.named_modules():
        if parent is not model and not isinstance(parent, nn.ModuleList | nn.Sequential):
            continue
        for child_name, child in parent.named_children():
            if parent is model and isinstance(child, nn.ModuleList | nn.Sequential):
                continue  # a stack of the model's: its members are the blocks
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            composite = any(True for _ in child.children())
            has_params = any(True for _ in child.parameters())
            if composite and has_params and preserving.get(name, False):
                blocks.append(Block(name, child))
    return blocks


class _Bypass:
    """While active, the block returns its input unchanged."""

    def __init__(self, module: nn.Module) -> None:
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    @staticmethod
    def _hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = first_tensor(args) if args else first_tensor(list(kwargs.values()))
        if isinstance(output, tuple):
            return (x, *output[1:])
        return x

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def block_sensitivity(
    model: nn.Module,
    blocks: list[Block],
    calibration: CalibrationSet,
    criterion: BlockCriterion,
) -> list[float]:
    """Per block: the calibration loss increase (``loss``) or the mean squared change of the
    model's output (``output``) when that block alone is bypassed."""
    if criterion == "loss":
        base = calibration.mean_loss(model)
        cost = calibration.mean_loss
    else:
        base, cost = 0.0, calibration.output_change
    scores = []
    for block in blocks:
        bypass = _Bypass(block.module)
        try:
            scores.append(cost(model) - base)
        finally:
            bypass.remove()
    return scores


def remove_blocks(model: nn.Module, names: list[str]) -> None:
    """Delete the named blocks (from their list, or replaced by ``nn.Identity``)."""
    by_parent: dict[str, list[str]] = {}
    for name in names:
        owner, _, child = name.rpartition(".")
        by_parent.setdefault(owner, []).append(child)
    for parent_name, children in by_parent.items():
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.ModuleList | nn.Sequential) and all(
            c.isdigit() for c, _ in parent.named_children()
        ):
            kept = [m for c, m in parent.named_children() if c not in children]
            if not kept:
                raise CompressKitError(
                    f"prune_blocks: removing {', '.join(children)} would empty {parent_name}; "
                    "remove fewer blocks"
                )
            replacement = (
                nn.ModuleList(kept) if isinstance(parent, nn.ModuleList) else nn.Sequential(*kept)
            )
            if parent_name:
                grand, _, attr = parent_name.rpartition(".")
                setattr(model.get_submodule(grand) if grand else model, attr, replacement)
        else:
            for child in children:
                setattr(parent, child, nn.Identity())
    sync_config(model)
