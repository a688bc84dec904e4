"""Heads and FFN neurons of BERT-family encoder layers (Hugging Face ``BertLayer`` and its
relatives: ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``).

Scores are collected once per step (:func:`head_scores`, :func:`ffn_scores`); pruning
then slices the linear layers (:func:`keep_heads`, :func:`keep_neurons`) and fixes the
attention module's ``num_attention_heads`` / ``all_head_size`` so the model runs, saves,
reloads (compresskit's checkpoint records those attributes per module) and exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compresskit.pruning.criteria import CalibrationSet


@dataclass
class EncoderLayer:
    """One encoder layer and the linear layers its heads and FFN neurons live in."""

    name: str
    module: Any  # a BertLayer-like module; typed loosely, its layout is checked on discovery

    @property
    def attention(self) -> Any:
        return self.module.attention.self

    @property
    def heads(self) -> int:
        return int(self.attention.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def projections(self) -> list[nn.Linear]:
        return [self.attention.query, self.attention.key, self.attention.value]

    @property
    def attention_out(self) -> nn.Linear:
        return self.module.attention.output.dense  # type: ignore[no-any-return]

    @property
    def ffn_in(self) -> nn.Linear:
        return self.module.intermediate.dense  # type: ignore[no-any-return]

    @property
    def ffn_out(self) -> nn.Linear:
        return self.module.output.dense  # type: ignore[no-any-return]


def _is_encoder_layer(module: nn.Module) -> bool:
    attention = getattr(getattr(module, "attention", None), "self", None)
    return (
        attention is not None
        and all(
            isinstance(getattr(attention, p, None), nn.Linear) for p in ("query", "key", "value")
        )
        and hasattr(attention, "num_attention_heads")
        and hasattr(attention, "attention_head_size")
        and isinstance(getattr(getattr(module.attention, "output", None), "dense", None), nn.Linear)
        and isinstance(getattr(getattr(module, "intermediate", None), "dense", None), nn.Linear)
        and isinstance(getattr(getattr(module, "output", None), "dense", None), nn.Linear)
    )


def encoder_layers(model: nn.Module) -> list[EncoderLayer]:
    """Every BERT-style encoder layer of ``model``, in module order."""
    return [EncoderLayer(n, m) for n, m in model.named_modules() if _is_encoder_layer(m)]


def _slice_linear(
    linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias)
    return new


def _head_index(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in sorted(heads)])


def keep_heads(layer: EncoderLayer, heads: Sequence[int]) -> None:
    """Keep only ``heads`` (indices) of the layer's self-attention."""
    index = _head_index(heads, layer.head_dim)
    attention = layer.attention
    for proj in ("query", "key", "value"):
        setattr(attention, proj, _slice_linear(getattr(attention, proj), rows=index))
    layer.module.attention.output.dense = _slice_linear(layer.attention_out, cols=index)
    attention.num_attention_heads = len(heads)
    attention.all_head_size = len(heads) * layer.head_dim
    attention.scaling = layer.head_dim**-0.5  # unchanged: head size stays


def keep_neurons(layer: EncoderLayer, neurons: Sequence[int]) -> None:
    """Keep only ``neurons`` (indices) of the layer's feed-forward block."""
    index = torch.as_tensor(sorted(neurons), dtype=torch.long)
    layer.module.intermediate.dense = _slice_linear(layer.ffn_in, rows=index)
    layer.module.output.dense = _slice_linear(layer.ffn_out, cols=index)


def sync_config(model: nn.Module) -> None:
    """Write what the HF config can express: layer count and a uniform FFN width. Per-layer
    head counts cannot be expressed in a ``BertConfig``; compresskit's checkpoint keeps them."""
    layers = encoder_layers(model)
    config = getattr(layers[0].attention, "config", None) if layers else None
    if config is None:
        return
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(layers)
    widths = {layer.ffn_in.out_features for layer in layers}
    if len(widths) == 1 and hasattr(config, "intermediate_size"):
        config.intermediate_size = widths.pop()


def _head_view(layer: EncoderLayer, use_grad: bool, p: float) -> torch.Tensor:
    """Per head: the p-norm of q/k/v rows and attention-out columns, or |w * grad| (p=0)."""
    h, d = layer.heads, layer.head_dim
    total = torch.zeros(h)
    for linear, axis in [(x, 0) for x in layer.projections] + [(layer.attention_out, 1)]:
        w = linear.weight.detach()
        if use_grad:
            g = linear.weight.grad
            w = (w * g).abs() if g is not None else torch.zeros_like(w)
        per = w.reshape(h, d, -1) if axis == 0 else w.reshape(w.shape[0], h, d).transpose(0, 1)
        total += per.abs().pow(p).sum(dim=(1, 2)) if not use_grad else per.sum(dim=(1, 2))
    return total


def _ffn_view(layer: EncoderLayer, use_grad: bool, p: float) -> torch.Tensor:
    rows, cols = layer.ffn_in.weight.detach(), layer.ffn_out.weight.detach().t()
    if use_grad:
        gr, gc = layer.ffn_in.weight.grad, layer.ffn_out.weight.grad
        rows = (rows * gr).abs() if gr is not None else torch.zeros_like(rows)
        cols = (cols * gc.t()).abs() if gc is not None else torch.zeros_like(cols)
        return rows.sum(1) + cols.sum(1)
    return rows.abs().pow(p).sum(1) + cols.abs().pow(p).sum(1)


def head_scores(
    model: nn.Module,
    layers: list[EncoderLayer],
    criterion: str,
    calibration: CalibrationSet,
    seed: int,
) -> list[torch.Tensor]:
    """Importance of every head of every layer (higher is kept)."""
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed)
        return [torch.rand(layer.heads, generator=generator) for layer in layers]
    if criterion in ("l1", "l2"):
        return [_head_view(layer, False, 1.0 if criterion == "l1" else 2.0) for layer in layers]
    if criterion == "taylor":
        return [_head_view(layer, True, 1.0) for layer in layers]
    return _head_ablation(model, layers, calibration)


@torch.no_grad()
def _head_ablation(
    model: nn.Module, layers: list[EncoderLayer], calibration: CalibrationSet
) -> list[torch.Tensor]:
    """Loss increase on calibration data when each head alone is removed (its columns of
    the attention output projection zeroed): one forward pass per head."""

    def loss() -> float:
        return calibration.mean_loss(model)

    base = loss()
    scores = []
    for layer in layers:
        weight = layer.attention_out.weight
        d = layer.head_dim
        score = torch.zeros(layer.heads)
        for head in range(layer.heads):
            saved = weight[:, head * d : (head + 1) * d].clone()
            weight[:, head * d : (head + 1) * d] = 0
            score[head] = loss() - base
            weight[:, head * d : (head + 1) * d] = saved
        scores.append(score)
    return scores


def ffn_scores(
    model: nn.Module,
    layers: list[EncoderLayer],
    criterion: str,
    calibration: CalibrationSet,
    seed: int,
) -> list[torch.Tensor]:
    """Importance of every FFN neuron of every layer (higher is kept). ``sensitivity`` is
    the measured first-order loss change of removing the neuron, |activation x gradient|
    summed over calibration tokens (ablating thousands of neurons one by one costs too much)."""
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed + 1)
        return [torch.rand(layer.ffn_in.out_features, generator=generator) for layer in layers]
    if criterion in ("l1", "l2"):
        return [_ffn_view(layer, False, 1.0 if criterion == "l1" else 2.0) for layer in layers]
    if criterion == "taylor":
        return [_ffn_view(layer, True, 1.0) for layer in layers]
    return _ffn_activation_taylor(model, layers, calibration)


def _ffn_activation_taylor(
    model: nn.Module, layers: list[EncoderLayer], calibration: CalibrationSet
) -> list[torch.Tensor]:
    scores = [torch.zeros(layer.ffn_in.out_features) for layer in layers]
    captured: dict[int, torch.Tensor] = {}

    def capture(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            args[0].retain_grad()
            captured[index] = args[0]

        return hook

    handles = [
        layer.ffn_out.register_forward_pre_hook(capture(i)) for i, layer in enumerate(layers)
    ]
    model.eval()
    try:
        with torch.enable_grad():
            for index in range(len(calibration.batches)):
                captured.clear()
                calibration.loss(model, index).backward()
                for i, activation in captured.items():
                    if activation.grad is not None:
                        product = (activation * activation.grad).detach()
                        scores[i] += product.reshape(-1, product.shape[-1]).sum(0).abs()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return scores


def choose(
    scores: list[torch.Tensor], ratio: float, *, minimum: int, multiple: int, global_ranking: bool
) -> list[list[int]]:
    """Indices to keep per layer: the top ``1 - ratio`` by score (per layer, or across
    layers with scores normalised by each layer's mean), at least ``minimum`` per layer,
    widths a multiple of ``multiple`` where the layer allows."""
    sizes = [len(s) for s in scores]
    if not global_ranking:
        keeps = [_round_keep(n - int(n * ratio + 1e-6), n, minimum, multiple) for n in sizes]
    else:
        normalised = torch.cat([s / s.abs().mean().clamp(min=1e-12) for s in scores])
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        removed = [0] * len(sizes)
        budget = int(sum(sizes) * ratio + 1e-6)
        for index in torch.argsort(normalised).tolist():
            if budget == 0:
                break
            layer = int(owner[index])
            if sizes[layer] - removed[layer] > minimum:
                removed[layer] += 1
                budget -= 1
        keeps = [
            _round_keep(n - r, n, minimum, multiple) for n, r in zip(sizes, removed, strict=True)
        ]
    return [sorted(torch.topk(s, k).indices.tolist()) for s, k in zip(scores, keeps, strict=True)]


def _round_keep(keep: int, size: int, minimum: int, multiple: int) -> int:
    if multiple > 1:
        keep = max(multiple, int(round(keep / multiple)) * multiple)
    return max(minimum, min(size, keep))
