"""Tiny models and data for tests: a few KB of parameters, CPU, seconds each."""

from compresskit.testing.tiny import TinyCNN, TinyResidualCNN, tiny_data

__all__ = ["TinyCNN", "TinyResidualCNN", "tiny_data"]
