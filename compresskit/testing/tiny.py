"""Tiny models and a tiny dataset built in code, for fast and deterministic tests."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from compresskit.data.bundle import DataBundle, split


class TinyCNN(nn.Module):
    """Conv-BN-ReLU x2, pool, linear: ~5k parameters on 1x8x8 inputs."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinyReLU6CNN(nn.Module):
    """conv -> bn -> ReLU6 twice through one shared ReLU6 module, the MobileNet /
    EfficientNet-Lite pattern (EfficientNet's ``_swish``), on 1x8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class TinyResidualCNN(nn.Module):
    """A stem and one residual block (Add) sharing a ReLU module, like torchvision ResNets."""

    def __init__(self, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = self.relu(x + y)
        return self.head(torch.flatten(self.pool(x), 1))


def tiny_data(*, num_classes: int = 4, samples: int = 512, seed: int = 0) -> DataBundle:
    """A learnable 1x8x8 task: each class is a fixed random pattern plus noise."""
    generator = torch.Generator().manual_seed(1234)
    patterns = torch.randn(num_classes, 1, 8, 8, generator=generator)
    y = torch.randint(0, num_classes, (samples,), generator=generator)
    x = patterns[y] + 0.8 * torch.randn(samples, 1, 8, 8, generator=generator)
    return split(x, y, name="tiny", seed=seed, calibration_size=64)


class TinyBranchyCNN(nn.Module):
    """Every coupling channel pruning must respect: a residual add, a concatenation,
    a depthwise conv, a grouped conv and BatchNorm, on 1x8x8 inputs (~3k parameters)."""

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        half = width // 2
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width))
        self.res = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.branch_a = nn.Conv2d(width, half, 1)
        self.branch_b = nn.Conv2d(width, half, 3, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pointwise = nn.Conv2d(width, width, 1)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = torch.relu(self.pointwise(self.depthwise(x)))
        x = torch.relu(self.bn(self.grouped(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class TinySelfAttention(nn.Module):
    """Multi-head self-attention written out by hand (not nn.MultiheadAttention): the kind
    of custom module whose head count pruning must be told per projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.o(out)


class TinyTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TinySelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """A 1x8x8 image read as 8 tokens of 8 features: embed, ``depth`` pre-norm blocks with
    custom attention, mean pool, linear head (~10k parameters)."""

    def __init__(
        self, num_classes: int = 4, dim: int = 16, num_heads: int = 4, depth: int = 3
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.blocks = nn.ModuleList(
            [TinyTransformerBlock(dim, num_heads, 2 * dim) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1, 2))  # (batch, 8 rows, 8 columns)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


TINY_BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 40,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


class TinyBertClassifier(nn.Module):
    """A Hugging Face ``BertModel`` from a small random config with a mean-pooled linear head:
    ``(input_ids, attention_mask) -> logits``. Needs ``transformers``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(**TINY_BERT_CONFIG)
        config._attn_implementation = "eager"
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class TinyBertEmbedder(nn.Module):
    """A sentence embedder like all-MiniLM-L6-v2, tiny: a Hugging Face ``BertModel`` from
    a small random config, masked mean pooling and L2 normalisation:
    ``(input_ids, attention_mask) -> (batch, 32)`` unit vectors. Needs ``transformers``.

    Initialised 10x wider than BERT's default so that, untrained, its layers move the
    embedding (as a trained model's do): removing heads then costs cosine."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(**{**TINY_BERT_CONFIG, "initializer_range": 0.2})
        config._attn_implementation = "eager"
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)


def tiny_text_data(
    *, num_classes: int = 4, samples: int = 512, length: int = 12, seed: int = 0
) -> DataBundle:
    """Token ids and masks whose class is the token that recurs most (ids 4..4+classes),
    with padded tails of random length."""
    from torch.utils.data import Subset, TensorDataset

    generator = torch.Generator().manual_seed(4321)
    y = torch.randint(0, num_classes, (samples,), generator=generator)
    ids = torch.randint(
        4 + num_classes, TINY_BERT_CONFIG["vocab_size"], (samples, length), generator=generator
    )
    marks = torch.rand(samples, length, generator=generator) < 0.35
    ids = torch.where(marks, (4 + y).unsqueeze(1).expand(-1, length), ids)
    ids[:, 0] = 2  # a CLS-like first token
    lengths = torch.randint(length // 2, length + 1, (samples,), generator=generator)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = ids * mask
    dataset = TensorDataset(ids, mask, y)
    n_eval, n_val = samples // 5, samples // 10
    eval_set = Subset(dataset, list(range(n_eval)))
    val = Subset(dataset, list(range(n_eval, n_eval + n_val)))
    train = Subset(dataset, list(range(n_eval + n_val, samples)))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    calibration = Subset(train, order[:64].tolist())
    return DataBundle(
        name="tiny-text",
        num_classes=num_classes,
        input_shape=(length,),
        train=train,
        val=val,
        calibration=calibration,
        eval=eval_set,
        seed=seed,
        dynamic_sequence=True,
    )


class TinyTokenTransformer(nn.Module):
    """One pre-norm encoder block over token ids (q/k/v/out and a 4x FFN as nn.Linear,
    eager attention with MatMul + Softmax), mean pooling and a linear head: ~25k parameters.

    Most of its MACs are in Linear layers, as in BERT-style models, so int8 coverage can
    pass 0.9 while the two attention MatMuls stay float.
    """

    def __init__(
        self,
        num_classes: int = 4,
        *,
        vocab: int = 32,
        dim: int = 32,
        heads: int = 2,
        max_length: int = 64,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        x = self.embed(ids) + self.position[:length]
        h = self.norm1(x)
        dim = x.shape[-1]
        head_dim = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.out(attended)
        x = x + self.ffn_out(self.act(self.ffn_in(self.norm2(x))))
        return self.head(x.mean(dim=1))


def tiny_token_data(
    *, num_classes: int = 4, samples: int = 512, length: int = 16, vocab: int = 32, seed: int = 0
) -> DataBundle:
    """Token sequences whose class is the key token (ids 0..num_classes-1) seen most often:
    three times, against a distractor key seen twice, among random filler tokens. The
    sequence axis is dynamic on export."""
    generator = torch.Generator().manual_seed(4321)
    ids = torch.randint(num_classes, vocab, (samples, length), generator=generator)
    y = torch.randint(0, num_classes, (samples,), generator=generator)
    for index in range(samples):
        positions = torch.randperm(length, generator=generator)[:5]
        label = int(y[index])
        distractor = label + 1 + int(torch.randint(0, num_classes - 1, (1,), generator=generator))
        ids[index, positions[:3]] = label
        ids[index, positions[3:]] = distractor % num_classes
    bundle = split(ids, y, name="tiny-tokens", seed=seed, calibration_size=64)
    return dataclasses.replace(bundle, dynamic_sequence=True)
