"""Tiny models and data for tests: a few KB of parameters, CPU, seconds each."""

from compresskit.testing.tiny import (
    TinyBertClassifier,
    TinyBertEmbedder,
    TinyBranchyCNN,
    TinyCNN,
    TinyReLU6CNN,
    TinyResidualCNN,
    TinyTokenTransformer,
    TinyTransformer,
    tiny_data,
    tiny_text_data,
    tiny_token_data,
)

__all__ = [
    "TinyBertClassifier",
    "TinyBertEmbedder",
    "TinyBranchyCNN",
    "TinyCNN",
    "TinyReLU6CNN",
    "TinyResidualCNN",
    "TinyTokenTransformer",
    "TinyTransformer",
    "tiny_data",
    "tiny_text_data",
    "tiny_token_data",
]
