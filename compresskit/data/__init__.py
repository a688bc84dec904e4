"""Datasets and their calibration / train / eval splits."""

from compresskit.data.bundle import DataBundle, split
from compresskit.data.files import Columns
from compresskit.data.preprocessing import Preprocessing
from compresskit.data.sources import load_data

__all__ = ["Columns", "DataBundle", "Preprocessing", "load_data", "split"]
