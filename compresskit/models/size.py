"""Parameter and multiply-accumulate counts of a model, measured on a real forward."""

from __future__ import annotations

import math
from typing import Any

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


def layer_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """MACs per sample of every module (by ``named_modules`` name; a module's count
    includes its children's), measured on one real sample.

    Every matrix product torch runs is counted (``torch.utils.flop_counter``): convolutions
    of any dimension, Linear and Hugging Face ``Conv1D`` layers, attention's
    activation-activation matmuls, GRU/RNN cells. It runs with autograd on, so that
    inference fast paths (``nn.TransformerEncoder``'s fused kernel) take the counted ops;
    LSTM's fused CPU kernel is counted by its size, as is any Linear whose kernel the
    counter cannot see (bitsandbytes).
    """
    from torch.utils.flop_counter import FlopCounterMode

    sample = tuple(x[:1] for x in example_inputs)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def hook(name: str) -> Any:  # noqa: ANN401
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:  # noqa: ANN401
            first = output[0] if isinstance(output, tuple) else output
            if args and isinstance(args[0], torch.Tensor) and isinstance(first, torch.Tensor):
                shapes[name] = (tuple(args[0].shape), tuple(first.shape))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.LSTM | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.enable_grad():
            model(*sample)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    root = type(model).__name__
    macs: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key.removeprefix(root + ".")
        macs[name] = sum(ops.values()) // 2
    for name, module in model.named_modules():
        if name in shapes and not macs.get(name):
            extra = _unseen_macs(module, *shapes[name])
            for prefix in _ancestors(name):
                macs[prefix] = macs.get(prefix, 0) + extra
    return macs


def _unseen_macs(module: nn.Module, input_shape: tuple[int, ...], output: tuple[int, ...]) -> int:
    if isinstance(module, nn.LSTM):
        steps = input_shape[1] if module.batch_first else input_shape[0]
        directions = 2 if module.bidirectional else 1
        total, width = 0, module.input_size
        for _ in range(module.num_layers):
            total += directions * steps * 4 * module.hidden_size * (width + module.hidden_size)
            width = module.hidden_size * directions
        return total
    assert isinstance(module, nn.Linear)
    return math.prod(output) * module.in_features


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["", "a", "a.b", "a.b.c"]``."""
    parts = name.split(".") if name else []
    return [".".join(parts[:k]) for k in range(len(parts) + 1)]


def count_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """MACs per sample of ``model`` (every matrix product; see :func:`layer_macs`)."""
    return layer_macs(model, example_inputs).get("", 0)


def position_limit(model: nn.Module) -> int | None:
    """The longest sequence ``model`` accepts, where it says: a Hugging Face model's
    positions (config and tokenizer), else the rows of a position table, an
    ``nn.Embedding`` or a 2-D parameter named like ``pos`` (None: no limit found)."""
    from compresskit.models.hf import HuggingFaceModel, max_positions

    if isinstance(model, HuggingFaceModel):
        known = model.preprocessing.max_length if model.preprocessing else None
        return known or max_positions(model.config)
    limits = [
        module.num_embeddings
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and "pos" in name.rpartition(".")[2].lower()
    ]
    limits += [
        int(parameter.shape[0])
        for name, parameter in model.named_parameters()
        if parameter.dim() == 2 and "pos" in name.rpartition(".")[2].lower()
    ]
    return min(limits) if limits else None
