"""Datasets and their calibration / train / eval splits."""

from compresskit.data.bundle import DataBundle, split
from compresskit.data.sources import load_data

__all__ = ["DataBundle", "load_data", "split"]
