"""``nn.MultiheadAttention`` rewritten with its projections as ``nn.Linear`` layers.

``nn.MultiheadAttention`` keeps q, k and v in one ``in_proj_weight`` and calls
``F.multi_head_attention_forward`` on it, so no pass sees a Linear layer to quantize, and
its width is tied to ``embed_dim`` so no head can be removed. :class:`ExplicitAttention`
computes the same thing with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` Linear
layers (the layout of most hand-written and Hugging Face attention), takes the same call
(``nn.TransformerEncoderLayer`` calls it unchanged) and may hold fewer heads than
``embed_dim / num_heads``. :func:`explicit_attention_` swaps it in, in place.

>>> layer = nn.TransformerEncoderLayer(32, 4, batch_first=True)
>>> model = nn.TransformerEncoder(layer, num_layers=2)
>>> names = explicit_attention_(model)       # every nn.MultiheadAttention
>>> names
['layers.0.self_attn', 'layers.1.self_attn']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from compresskit.errors import CompressKitError
from compresskit.kinds import module_kind


def _structure(module: nn.Module) -> dict[str, Any]:
    assert isinstance(module, ExplicitAttention)
    return {"num_heads": module.num_heads, "head_dim": module.head_dim}


def _restore(cls: type[nn.Module], module: nn.Module, attrs: Mapping[str, Any]) -> nn.Module:
    if not isinstance(module, nn.MultiheadAttention):
        raise CompressKitError(
            f"explicit attention restores from nn.MultiheadAttention, not {module}"
        )
    restored = ExplicitAttention.from_multihead(module)
    restored.num_heads = int(attrs.get("num_heads", restored.num_heads))
    return restored


@module_kind(precision="fp32", export="as-is", structure=_structure, restore=_restore)
class ExplicitAttention(nn.Module):
    """Multi-head attention with explicit Linear projections, called like
    ``nn.MultiheadAttention``: ``(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True, is_causal=False)`` ->
    ``(output, weights or None)``.

    >>> attention = ExplicitAttention.from_multihead(nn.MultiheadAttention(32, 4))
    >>> attention(torch.zeros(5, 2, 32), torch.zeros(5, 2, 32), torch.zeros(5, 2, 32))[0].shape
    torch.Size([5, 2, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int,
        vdim: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # What nn.TransformerEncoderLayer reads to choose its fused fast path: off.
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> ExplicitAttention:
        """The same attention as ``mha`` (weights copied)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise CompressKitError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn has no explicit form"
            )
        bias = mha.in_proj_bias is not None
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            kdim=mha.kdim,
            vdim=mha.vdim,
            bias=bias,
            batch_first=mha.batch_first,
            dropout=mha.dropout,
        )
        d = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.split(d)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for linear, weight, index in zip(
                (new.q_proj, new.k_proj, new.v_proj), weights, range(3), strict=True
            ):
                linear.weight.copy_(weight)
                if bias and mha.in_proj_bias is not None:
                    linear.bias.copy_(mha.in_proj_bias[index * d : (index + 1) * d])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias and mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if not self.batch_first or not batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, length, _ = query.shape
        source = key.shape[1]

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query), length)
        k = heads(self.k_proj(key), source)
        v = heads(self.v_proj(value), source)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(b, -1, length, source)
            scores = _masked(scores, mask)
        if key_padding_mask is not None:
            scores = _masked(scores, key_padding_mask.reshape(b, 1, 1, source))
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: not attended) or an additive float mask, applied."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def explicit_attention_(
    model: nn.Module, *, keep: Callable[[str], bool] | None = None
) -> list[str]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (but those ``keep(name)``
    leaves as they are) by :class:`ExplicitAttention`, in place; returns their names."""
    swapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.MultiheadAttention):
            continue
        if keep is not None and keep(name):
            continue
        try:
            explicit = ExplicitAttention.from_multihead(module)
        except CompressKitError as error:
            raise CompressKitError(
                f"layer {name!r} (MultiheadAttention): {error}; exclude it"
            ) from None
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, explicit)
        swapped.append(name)
    return swapped
