"""Tiny models and a tiny dataset built in code, for fast and deterministic tests."""

from __future__ import annotations

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
