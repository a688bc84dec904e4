"""Attention blocks found by their layout, and whole heads removed from them.

A block is an attention module whose head count is an attribute (``num_heads``,
``n_heads``, ``num_attention_heads``) and whose projections are Linear layers:
separate q / k / v (``q``/``k``/``v``, ``query``/``key``/``value``, ``q_proj``...,
``q_lin``...; the output projection beside them, or in the sibling ``output.dense`` of
BERT-style models) or one fused ``Linear(d, 3 * heads * head_dim)`` split by
``chunk`` / ``split`` / ``reshape`` into q, k, v (``qkv``, the timm ViT layout;
``c_attn``, GPT-2's). ``nn.MultiheadAttention`` is made explicit first
(:mod:`compresskit.models.attention`).

Removing a head cuts its rows from q, k and v (from each third of a fused projection)
and its columns from the output projection; the width of the residual stream stays.
Scores are computed once (:func:`head_scores`), then applied to copies by name
(:func:`keep_heads`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEAD_COUNTS = ("num_heads", "n_heads", "num_attention_heads", "n_head")
HEAD_DIMS = ("head_dim", "attention_head_size", "head_size")
# Attributes holding heads * head_dim that the forward reads (reshapes, splits).
HEAD_WIDTHS = ("all_head_size", "inner_dim", "split_size")
SEPARATE = (
    ("q", "k", "v"),
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("to_q", "to_k", "to_v"),
)
FUSED = ("qkv", "c_attn", "Wqkv", "qkv_proj", "in_proj")
OUTPUTS = ("out_proj", "o_proj", "proj", "o", "out", "out_lin", "c_proj", "to_out", "dense")


@dataclass(frozen=True)
class AttentionBlock:
    """One attention module: where its heads live (module names within the model)."""

    name: str
    projections: tuple[str, ...]  # q, k, v; or one fused projection
    output: str
    heads: int
    head_dim: int

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    @property
    def linears(self) -> tuple[str, ...]:
        return (*self.projections, self.output)


def _linear(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), nn.Linear)


def _head_count(module: nn.Module) -> int | None:
    return next(
        (int(v) for a in HEAD_COUNTS if isinstance(v := getattr(module, a, None), int)), None
    )


def _block(name: str, module: nn.Module, parent: nn.Module | None) -> AttentionBlock | None:
    heads = _head_count(module)
    if heads is None or heads < 1:
        return None
    prefix = f"{name}." if name else ""
    projections: tuple[str, ...] | None = None
    for names in SEPARATE:
        if all(_linear(module, n) for n in names):
            projections = tuple(prefix + n for n in names)
            width = getattr(module, names[0]).out_features
            break
    else:
        fused = next((n for n in FUSED if _linear(module, n)), None)
        if fused is None:
            return None
        projections = (prefix + fused,)
        width, rest = divmod(getattr(module, fused).out_features, 3)
        if rest:
            return None
    output = next((prefix + n for n in OUTPUTS if _linear(module, n)), None)
    sibling = getattr(parent, "output", None)
    if output is None and isinstance(sibling, nn.Module) and _linear(sibling, "dense"):
        output = f"{name.rpartition('.')[0]}.output.dense"  # BERT: BertSelfOutput
    if output is None or width % heads:
        return None
    return AttentionBlock(name, projections, output, heads, width // heads)


def attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Every attention block of ``model`` whose layout is known, in module order."""
    modules = dict(model.named_modules())
    blocks = []
    for name, module in modules.items():
        parent = modules.get(name.rpartition(".")[0]) if name else None
        block = _block(name, module, parent)
        if block is not None:
            blocks.append(block)
    return blocks


def _head_index(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in sorted(heads)])


def _rows(block: AttentionBlock, heads: list[int]) -> torch.Tensor:
    """The rows of ``heads`` in the q/k/v projection(s): in each third when fused."""
    index = _head_index(heads, block.head_dim)
    if not block.fused:
        return index
    width = block.heads * block.head_dim
    return torch.cat([index + part * width for part in range(3)])


def head_scores(model: nn.Module, block: AttentionBlock, criterion: str, seed: int) -> torch.Tensor:
    """Importance of each head (higher is kept): the p-norm of its q/k/v rows and output
    columns (l1, l2), or of weight x gradient (taylor; gradients must be accumulated)."""
    if criterion == "random":
        return torch.rand(block.heads, generator=torch.Generator().manual_seed(seed))
    p = 1.0 if criterion in ("l1", "taylor") else 2.0
    scores = torch.zeros(block.heads)
    for name in block.linears:
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        weight = layer.weight.detach()
        if criterion == "taylor":
            grad = layer.weight.grad
            weight = weight * grad if grad is not None else torch.zeros_like(weight)
        if name == block.output:
            per_head = weight.reshape(weight.shape[0], block.heads, block.head_dim).transpose(0, 1)
        elif block.fused:
            per_head = weight.reshape(3, block.heads, block.head_dim, -1).transpose(0, 1)
        else:
            per_head = weight.reshape(block.heads, block.head_dim, -1)
        scores += per_head.abs().pow(p).flatten(1).sum(1)
    return scores


def _slice(
    linear: nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> None:
    weight = linear.weight.data
    if rows is not None:
        weight = weight[rows]
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data[rows].clone())
        linear.out_features = len(rows)
    if cols is not None:
        weight = weight[:, cols]
        linear.in_features = len(cols)
    linear.weight = nn.Parameter(weight.clone())


def keep_heads(model: nn.Module, block: AttentionBlock, heads: list[int]) -> None:
    """Keep only ``heads`` (indices) of ``block`` in ``model``, in place."""
    rows = _rows(block, heads)
    for name in block.projections:
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        _slice(layer, rows=rows)
    output = model.get_submodule(block.output)
    assert isinstance(output, nn.Linear)
    _slice(output, cols=_head_index(heads, block.head_dim))
    module = model.get_submodule(block.name) if block.name else model
    for attr in HEAD_COUNTS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, len(heads))
    for attr in HEAD_WIDTHS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, len(heads) * block.head_dim)


def heads_to_keep(scores: torch.Tensor, ratio: float) -> list[int]:
    """The top ``1 - ratio`` heads by score, at least one."""
    keep = max(1, len(scores) - int(len(scores) * ratio + 1e-6))
    return sorted(torch.topk(scores, keep).indices.tolist())
