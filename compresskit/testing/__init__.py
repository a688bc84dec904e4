"""Tiny models and data for tests: a few KB of parameters, CPU, seconds each."""

from compresskit.testing.tiny import (
    TinyCNN,
    TinyResidualCNN,
    TinyTransformer,
    tiny_data,
    tiny_text_data,
)

__all__ = ["TinyCNN", "TinyResidualCNN", "TinyTransformer", "tiny_data", "tiny_text_data"]
