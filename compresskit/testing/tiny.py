"""Tiny models and a tiny dataset built in code, for fast and deterministic tests."""

from __future__ import annotations

import dataclasses
import math

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


class TinyTransformer(nn.Module):
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


def tiny_text_data(
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
    bundle = split(ids, y, name="tiny-text", seed=seed, calibration_size=64)
    return dataclasses.replace(bundle, dynamic_sequence=True)
