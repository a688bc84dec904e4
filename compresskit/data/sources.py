"""Where data comes from: ``digits``, ``fashion-mnist``, a ``.npz`` file, a table of texts
(``.csv``, ``.jsonl``, ``.parquet``), a folder of class folders of images, or
``module:factory``."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from compresskit.data.bundle import DataBundle, split
from compresskit.data.files import TABLE_SUFFIXES, Columns, load_table
from compresskit.data.images import load_image_folder
from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, first_line
from compresskit.imports import call_factory
from compresskit.paths import regular_file

# Debian's dataset-fashion-mnist installs here; $COMPRESSKIT_FASHION_MNIST overrides it.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DATA_SPEC_HELP = (
    "use digits, fashion-mnist, a .npz file with arrays x and y, a .csv/.jsonl/.parquet "
    "table of texts and labels, a folder of class folders of images, or module:factory"
)


def load_data(
    spec: str,
    *,
    seed: int = 0,
    calibration_size: int = 256,
    preprocessing: Preprocessing | None = None,
    columns: Columns | None = None,
    sequence_length: int | None = None,
) -> DataBundle:
    """Load a dataset by spec and split it deterministically (see :class:`DataBundle`).

    Texts and images from files are made into inputs by ``preprocessing`` (the model's
    tokenizer or image processor); texts are tokenized to ``sequence_length`` at most."""
    if spec == "digits":
        return _digits(seed, calibration_size)
    if spec == "fashion-mnist":
        return _fashion_mnist(seed, calibration_size)
    if spec.endswith(TABLE_SUFFIXES):
        return load_table(
            Path(spec),
            preprocessing=preprocessing,
            columns=columns,
            seed=seed,
            calibration_size=calibration_size,
            sequence_length=sequence_length,
        )
    if Path(spec).is_dir():
        return load_image_folder(
            Path(spec), preprocessing=preprocessing, seed=seed, calibration_size=calibration_size
        )
    if spec.endswith(".npz"):
        return _npz(Path(spec), seed, calibration_size)
    if ":" in spec:
        return _factory(spec, seed)
    raise CompressKitError(f"--data {spec!r} is not a known dataset: {DATA_SPEC_HELP}")


def _digits(seed: int, calibration_size: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return split(x, y, name="digits", seed=seed, calibration_size=calibration_size)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not; a damaged file is a one-line
    error naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(regular_file(path, what="IDX file"), "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise CompressKitError(f"{path}: cannot read it ({error}); reinstall the data") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise CompressKitError(f"{path}: not an IDX file (bad header); reinstall the data")
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise CompressKitError(f"{path}: only unsigned-byte IDX files are supported")
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise CompressKitError(f"{path}: not an IDX file ({ndim} dimensions); reinstall the data")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise CompressKitError(
            f"{path}: {len(data):,} bytes where its header promises {expected:,} (truncated or "
            "damaged); reinstall the data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist() -> Path:
    """The directory holding the Fashion-MNIST IDX files of Debian's package."""
    directory = Path(os.environ.get("COMPRESSKIT_FASHION_MNIST", FASHION_MNIST_DIR))
    if list(directory.glob("t10k-labels-idx1-ubyte*")):
        return directory
    raise CompressKitError(
        "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist "
        "(Debian package), then run again"
    )


def _fashion_mnist(seed: int, calibration_size: int) -> DataBundle:
    root = find_fashion_mnist()

    def load(stem: str) -> np.ndarray:
        found = sorted(root.glob(f"{stem}*"))
        if not found:
            raise CompressKitError(
                f"Fashion-MNIST in {root} lacks {stem}: apt-get install --reinstall "
                "dataset-fashion-mnist"
            )
        return read_idx(found[0])

    def images(stem: str) -> torch.Tensor:
        array = load(stem).astype(np.float32) / 255.0
        return (torch.from_numpy(array).unsqueeze(1) - 0.2860) / 0.3530

    return split(
        images("train-images-idx3-ubyte"),
        torch.from_numpy(load("train-labels-idx1-ubyte").astype(np.int64)),
        x_eval=images("t10k-images-idx3-ubyte"),
        y_eval=torch.from_numpy(load("t10k-labels-idx1-ubyte").astype(np.int64)),
        name="fashion-mnist",
        seed=seed,
        calibration_size=calibration_size,
    )


def _npz(path: Path, seed: int, calibration_size: int) -> DataBundle:
    if not path.exists():
        raise CompressKitError(f"--data {path}: no such file")
    regular_file(path, what="--data")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # zip, zlib and numpy each raise their own
        raise CompressKitError(
            f"--data {path}: not a readable .npz file of numeric arrays ({first_line(error)}); "
            "save it with np.savez(path, x=inputs, y=labels)"
        ) from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise CompressKitError(
            f"--data {path}: missing array(s) {sorted(missing)}; save it with "
            "np.savez(path, x=inputs, y=labels)"
        )
    where = f"--data {path}"
    x = _inputs(arrays["x"], f"{where}: x")
    y = _labels(arrays["y"], len(x), f"{where}: y")
    x_eval = y_eval = None
    if {"x_eval", "y_eval"} <= set(arrays):
        x_eval = _inputs(arrays["x_eval"], f"{where}: x_eval")
        y_eval = _labels(arrays["y_eval"], len(x_eval), f"{where}: y_eval")
        if x_eval.shape[1:] != x.shape[1:]:
            raise CompressKitError(
                f"{where}: x_eval samples have shape {tuple(x_eval.shape[1:])} but x samples "
                f"{tuple(x.shape[1:])}; give both the same"
            )
    return split(
        x,
        y,
        name=path.stem,
        seed=seed,
        calibration_size=calibration_size,
        x_eval=x_eval,
        y_eval=y_eval,
    )


def _inputs(array: np.ndarray, where: str) -> torch.Tensor:
    """Model inputs: floats (uint8 images too) as float32; other integers (token ids) kept
    as int64. Refuses what no model can take: strings, objects, NaN, no samples."""
    if array.dtype.kind not in "biuf":
        raise CompressKitError(f"{where}: holds {array.dtype} values; give numeric arrays")
    if array.ndim < 2 or len(array) == 0:
        raise CompressKitError(
            f"{where}: shape {array.shape}; give one row per sample, (samples, features...) "
            "with at least one sample"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CompressKitError(f"{where}: holds NaN or infinite values; clean the data first")
    if array.dtype.kind in "iu" and array.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _labels(array: np.ndarray, samples: int, where: str) -> torch.Tensor:
    """Class labels: one non-negative whole number per sample."""
    if array.dtype.kind not in "biuf":
        raise CompressKitError(f"{where}: holds {array.dtype} values; give integer class labels")
    if array.ndim != 1 or len(array) != samples:
        raise CompressKitError(
            f"{where}: shape {array.shape} but there are {samples} samples; give one label "
            "per sample, shape (samples,)"
        )
    if array.dtype.kind == "f" and not (
        np.isfinite(array).all() and (array == np.round(array)).all()
    ):
        raise CompressKitError(f"{where}: labels must be whole numbers (found NaN or fractions)")
    if len(array) and (array.min() < 0 or array.max() >= 2**31):
        raise CompressKitError(
            f"{where}: labels run from {array.min()} to {array.max()}; class labels are "
            "0 .. classes-1"
        )
    return torch.from_numpy(array.astype(np.int64))


def _factory(spec: str, seed: int) -> DataBundle:
    result = call_factory(spec, what="--data", seed=seed)
    if not isinstance(result, DataBundle):
        raise CompressKitError(
            f"--data {spec}: the factory returned {type(result).__name__}; it must return a "
            "compresskit.data.DataBundle (see compresskit.data.split)"
        )
    return result
