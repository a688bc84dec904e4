"""The base of pass configs, below every package that defines one (quantization,
pruning and distillation settings are pass configs too): frozen, strict, and unknown
fields are errors. :mod:`compresskit.passes.base` re-exports it with the pass protocol."""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict


class DataNeed(str, enum.Enum):
    """The data splits a pass may need from the context."""

    CALIBRATION = "calibration"
    TRAIN = "train"
    EVAL = "eval"


class PassConfig(BaseModel):
    """Base of every pass config: frozen, strict, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def data_needs(self) -> frozenset[DataNeed]:
        """The data splits this configured pass reads (none by default)."""
        return frozenset()
