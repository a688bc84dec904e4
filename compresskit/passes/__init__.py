"""Passes, imported explicitly so each registers its name (no discovery by naming)."""

from compresskit.passes import distill, prune_channels, quantize  # noqa: F401
from compresskit.passes.base import (
    DataNeed,
    Pass,
    PassConfig,
    Stage,
    get_pass,
    register_pass,
    registered_passes,
)

__all__ = [
    "DataNeed",
    "Pass",
    "PassConfig",
    "Stage",
    "get_pass",
    "register_pass",
    "registered_passes",
]
