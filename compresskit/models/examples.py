"""Built-in example models, trained by code here on first use and cached.

``example:digits-cnn`` is the embedded default: a small CNN on scikit-learn's bundled
digits, trained in a few seconds on CPU.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compresskit.errors import CompressKitError


def conv_bn_relu(c_in: int, c_out: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    """Three conv blocks and a linear classifier for 1x8x8 digit images (~100k params)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            conv_bn_relu(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class Example:
    """A built-in model: how to build it, what data it is trained on, and for how long."""

    name: str
    build: Callable[[], nn.Module]
    data: str
    epochs: int
    lr: float = 3e-3


EXAMPLES: dict[str, Example] = {
    "digits-cnn": Example("digits-cnn", DigitsCNN, data="digits", epochs=12),
}


def cache_dir() -> Path:
    """Where trained examples are cached: $COMPRESSKIT_CACHE or ~/.cache/compresskit."""
    root = os.environ.get("COMPRESSKIT_CACHE") or Path.home() / ".cache" / "compresskit"
    return Path(root)


def load_example(name: str) -> nn.Module:
    """The trained example model, training and caching it on first use."""
    if name not in EXAMPLES:
        raise CompressKitError(
            f"unknown example {name!r}; built-in examples: "
            + ", ".join(f"example:{n}" for n in EXAMPLES)
        )
    example = EXAMPLES[name]
    path = cache_dir() / f"{name}-v2.pt"
    if path.is_file():
        model = example.build()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = _train_example(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a concurrent or interrupted run never sees half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(model.state_dict(), tmp.name)
    os.replace(tmp.name, path)
    return model.eval()


def _train_example(example: Example) -> nn.Module:
    """``example`` built and trained from seed 0: the same weights on every first use."""
    from compresskit.data import load_data
    from compresskit.training.loop import TrainConfig, train

    data = load_data(example.data, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # before building: the initial weights come from this seed too
        model = example.build()
        train(
            model,
            data,
            TrainConfig(epochs=example.epochs, lr=example.lr, batch_size=64),
            description=f"training example:{example.name} (first use, cached)",
        )
    return model
