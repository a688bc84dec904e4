"""Passes, imported explicitly so each registers its name (no discovery by naming)."""

from compresskit.passes import (  # noqa: F401
    distill,
    prune_blocks,
    prune_channels,
    prune_decoder,
    prune_transformer,
    qat,
    quantize,
    quantize_dynamic,
    quantize_embeddings,
    quantize_int4,
    weight_only,
)
from compresskit.passes.base import (
    DataNeed,
    Effects,
    Pass,
    PassConfig,
    get_pass,
    register_pass,
    registered_passes,
)

__all__ = [
    "DataNeed",
    "Pass",
    "PassConfig",
    "Effects",
    "get_pass",
    "register_pass",
    "registered_passes",
]
