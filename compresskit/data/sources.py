"""Where data comes from: ``digits``, ``fashion-mnist``, a ``.npz`` file, a table of texts
(``.csv``, ``.jsonl``, ``.parquet``), a folder of class folders of images, or
``module:factory``."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from compresskit.data.bundle import DataBundle, split
from compresskit.data.files import TABLE_SUFFIXES, Columns, load_table
from compresskit.data.images import load_image_folder
from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError
from compresskit.imports import import_object

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
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise CompressKitError(f"{path}: only unsigned-byte IDX files are supported")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
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
        return read_idx(next(iter(sorted(root.glob(f"{stem}*")))))

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
    if not path.is_file():
        raise CompressKitError(f"--data {path}: no such file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CompressKitError(f"--data {path}: not a readable .npz file ({error})") from None
    missing = {"x", "y"} - set(arrays.files)
    if missing:
        raise CompressKitError(
            f"--data {path}: missing array(s) {sorted(missing)}; save it with "
            "np.savez(path, x=inputs, y=labels)"
        )
    x = torch.from_numpy(np.asarray(arrays["x"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(arrays["y"]).astype(np.int64))
    x_eval = y_eval = None
    if {"x_eval", "y_eval"} <= set(arrays.files):
        x_eval = torch.from_numpy(np.asarray(arrays["x_eval"], dtype=np.float32))
        y_eval = torch.from_numpy(np.asarray(arrays["y_eval"]).astype(np.int64))
    return split(
        x,
        y,
        name=path.stem,
        seed=seed,
        calibration_size=calibration_size,
        x_eval=x_eval,
        y_eval=y_eval,
    )


def _factory(spec: str, seed: int) -> DataBundle:
    factory = import_object(spec, what="--data")
    result = factory(seed=seed)
    if not isinstance(result, DataBundle):
        raise CompressKitError(
            f"--data {spec}: the factory returned {type(result).__name__}; it must return a "
            "compresskit.data.DataBundle (see compresskit.data.split)"
        )
    return result
