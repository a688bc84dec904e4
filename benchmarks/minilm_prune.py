"""Torch-Pruning on the BertModel inside all-MiniLM-L6-v2: attention heads, then FFN neurons.

Hidden size stays 384 (the residual stream and embeddings are left alone); heads keep
their 32 dims. Torch-Pruning traces through :class:`minilm.SentenceEncoder`, so the unused
pooler is not part of any group.
"""

from __future__ import annotations

import torch
from minilm import SentenceEncoder
from torch import nn


def _set_attention_shape(attention: nn.Module, num_heads: int, head_dim: int) -> None:
    """BertSelfAttention's bookkeeping after its q/k/v rows were removed."""
    attention.num_attention_heads = num_heads
    attention.attention_head_size = head_dim
    attention.all_head_size = num_heads * head_dim
    attention.scaling = head_dim**-0.5


def prune_heads(
    bert: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, ratio: float
) -> list[int]:
    """Remove ``ratio`` of the heads of every layer by L2 magnitude. Returns heads per layer.

    Torch-Pruning 1.6 prunes heads only inside its width loop, so ``pruning_ratio`` must be
    > 0 to trigger it; with prune_head_dims=False it removes no head dims."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    num_heads: dict[nn.Module, int] = {}
    ignored: list[nn.Module] = []
    for module in bert.modules():
        if isinstance(module, BertSelfAttention):
            for linear in (module.query, module.key, module.value):
                num_heads[linear] = module.num_attention_heads
    for layer in bert.encoder.layer:
        ignored += [layer.attention.output.dense, layer.intermediate.dense, layer.output.dense]
    if getattr(bert, "pooler", None) is not None:
        ignored.append(bert.pooler)
    with torch.enable_grad():  # tracing needs autograd
        pruner = tp.pruner.MetaPruner(
            SentenceEncoder(bert).eval(),
            example_inputs,
            importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False,
            pruning_ratio=0.5,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        pruner.step()
    kept = []
    for module in bert.modules():
        if isinstance(module, BertSelfAttention):
            heads = pruner.num_heads[module.query]
            _set_attention_shape(module, heads, module.query.out_features // heads)
            kept.append(heads)
    return kept


def prune_ffn(
    bert: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, ratio: float
) -> list[int]:
    """Remove ``ratio`` of each layer's FFN neurons by L2 magnitude. Returns widths."""
    import torch_pruning as tp

    ignored: list[nn.Module] = []
    for layer in bert.encoder.layer:
        attention = layer.attention.self
        ignored += [
            attention.query,
            attention.key,
            attention.value,
            layer.attention.output.dense,
            layer.output.dense,
        ]
    if getattr(bert, "pooler", None) is not None:
        ignored.append(bert.pooler)
    with torch.enable_grad():
        pruner = tp.pruner.MetaPruner(
            SentenceEncoder(bert).eval(),
            example_inputs,
            importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False,
            pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        pruner.step()
    widths = [layer.intermediate.dense.out_features for layer in bert.encoder.layer]
    bert.config.intermediate_size = widths[0]
    return widths
