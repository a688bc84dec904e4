"""Tiny models built from standard PyTorch layers users bring (``nn.TransformerEncoder``,
timm-style fused-qkv attention, ``nn.GRU`` / ``nn.LSTM``, ``nn.Conv1d``, tied embeddings),
on the 1x8x8 inputs of :func:`compresskit.testing.tiny_data` (8 rows read as 8 tokens)."""

from __future__ import annotations

import torch
from torch import nn


class TinyEncoderClassifier(nn.Module):
    """A linear patch embedding, ``nn.TransformerEncoder`` (``nn.MultiheadAttention``
    inside), mean pooling and a head."""

    def __init__(self, num_classes: int = 4, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.patch(x.flatten(1, 2))).mean(1))


class FusedAttention(nn.Module):
    """timm's ViT attention: one ``qkv`` Linear(d, 3d), reshaped into heads, einsum."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        weights = torch.einsum("bhqd,bhkd->bhqk", q, k).mul(self.scale).softmax(-1)
        out = torch.einsum("bhqk,bhkd->bhqd", weights, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyFusedViT(nn.Module):
    """Two pre-norm blocks of :class:`FusedAttention` and an MLP (the timm ViT layout)."""

    def __init__(self, num_classes: int = 4, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.patch = nn.Linear(8, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "attn": FusedAttention(dim, heads),
                    "norm2": nn.LayerNorm(dim),
                    "fc1": nn.Linear(dim, 2 * dim),
                    "fc2": nn.Linear(2 * dim, dim),
                }
            )
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x.flatten(1, 2))
        for block in self.blocks:
            assert isinstance(block, nn.ModuleDict)
            x = x + block["attn"](block["norm1"](x))
            x = x + block["fc2"](torch.nn.functional.gelu(block["fc1"](block["norm2"](x))))
        return self.head(self.norm(x).mean(1))


class TinyRecurrent(nn.Module):
    """``nn.GRU`` or ``nn.LSTM`` over the 8 rows, the last state into a head."""

    def __init__(self, cell: type[nn.GRU | nn.LSTM] = nn.GRU, num_classes: int = 4) -> None:
        super().__init__()
        self.rnn = cell(8, 16, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return self.head(out[:, -1])


class TinyConv1d(nn.Module):
    """``nn.Conv1d`` over the 8 rows as 8 channels of length 8."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.flatten(1, 2))).mean(-1))


class TinyTiedTokens(nn.Module):
    """Token ids in, one score per vocabulary entry out, through the input embedding
    (tied: ``out.weight is embed.weight``); the classes are the first few tokens."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(torch.tanh(self.fc1(self.embed(ids)))).mean(1))
