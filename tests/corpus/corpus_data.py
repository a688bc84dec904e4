"""Data: .npz files, data factories and a damaged Fashion-MNIST."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
from corpus_kit import Case, Kit, fifo, mkdir, npz_bytes

# -- data ----------------------------------------------------------------------------------


def data_cases() -> Iterator[Case]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 64)  # the tiny task's 4 classes

    def npz_case(case_id: str, content: Callable[[], bytes], *expect: str) -> Case:
        def build(kit: Kit) -> list[str]:
            path = kit.file("bad.npz", content())
            return kit.with_option(kit.compress(), "--data", str(path))

        return Case(case_id, build, ("bad", *expect))

    good = npz_bytes(x=x, y=y)
    nan_x = x.copy()
    nan_x[3, 0, 0, 0] = np.nan
    inf_x = x.copy()
    inf_x[0, 0, 1, 1] = np.inf
    yield npz_case("data-zero-byte", lambda: b"", "npz")
    yield npz_case("data-junk", lambda: b"junk" * 100, "npz")
    yield npz_case("data-truncated", lambda: good[: len(good) // 2], "npz")
    yield npz_case("data-object-array", lambda: npz_bytes(x=np.array([{"a": 1}] * 64), y=y), "npz")
    yield npz_case("data-strings-x", lambda: npz_bytes(x=np.array(["a"] * 64), y=y), "x")
    yield npz_case("data-strings-y", lambda: npz_bytes(x=x, y=np.array(["cat"] * 64)), "y")
    yield npz_case("data-missing-x", lambda: npz_bytes(y=y), "missing", "x")
    yield npz_case("data-missing-y", lambda: npz_bytes(x=x), "missing", "y")
    yield npz_case("data-no-arrays", lambda: npz_bytes(), "missing")
    yield npz_case("data-mismatched", lambda: npz_bytes(x=x, y=y[:50]), "y", "64")
    yield npz_case("data-nan-x", lambda: npz_bytes(x=nan_x, y=y), "NaN")
    yield npz_case("data-inf-x", lambda: npz_bytes(x=inf_x, y=y), "infinite")
    yield npz_case("data-nan-labels", lambda: npz_bytes(x=x, y=np.where(y > 1, np.nan, y)), "NaN")
    yield npz_case("data-negative-labels", lambda: npz_bytes(x=x, y=y - 5), "labels")
    yield npz_case("data-fraction-labels", lambda: npz_bytes(x=x, y=y + 0.5), "whole")
    yield npz_case("data-huge-labels", lambda: npz_bytes(x=x, y=y * 10**12), "labels")
    yield npz_case("data-labels-2d", lambda: npz_bytes(x=x, y=y.reshape(8, 8)), "y")
    yield npz_case("data-empty", lambda: npz_bytes(x=x[:0], y=y[:0]), "sample")
    yield npz_case("data-one-sample", lambda: npz_bytes(x=x[:1], y=y[:1]), "at least")
    yield npz_case("data-two-samples", lambda: npz_bytes(x=x[:2], y=y[:2]), "at least")
    yield npz_case("data-x-1d", lambda: npz_bytes(x=x.reshape(-1)[:64], y=y), "x")
    yield npz_case("data-x-scalar", lambda: npz_bytes(x=np.float32(1), y=y), "x")
    yield npz_case("data-labels-out-of-range", lambda: npz_bytes(x=x, y=y + 40), "classes")
    yield npz_case(
        "data-wrong-shape", lambda: npz_bytes(x=np.zeros((64, 3, 5), np.float32), y=y), "shape"
    )  # noqa: E501
    yield npz_case(
        "data-eval-shape", lambda: npz_bytes(x=x, y=y, x_eval=x[:, :, :4], y_eval=y), "x_eval"
    )  # noqa: E501
    yield npz_case(
        "data-eval-mismatch", lambda: npz_bytes(x=x, y=y, x_eval=x, y_eval=y[:3]), "y_eval"
    )
    yield npz_case("data-complex", lambda: npz_bytes(x=x.astype(np.complex64), y=y), "complex")
    yield Case(
        "data-missing-file",
        lambda kit: kit.with_option(kit.compress(), "--data", str(kit.dir / "absent.npz")),
        ("no such file",),
    )
    yield Case(
        "data-directory",
        lambda kit: kit.with_option(kit.compress(), "--data", str(mkdir(kit.dir / "d.npz"))),
        ("directory",),
    )
    yield Case(
        "data-fifo",
        lambda kit: kit.with_option(kit.compress(), "--data", str(fifo(kit.dir / "f.npz"))),
        ("not a regular file",),
    )
    yield Case(
        "data-unknown-spec",
        lambda kit: kit.with_option(kit.compress(), "--data", "imagenet"),
        ("imagenet", "digits"),
    )
    yield from _factory_data_cases()
    yield from _fashion_cases()


DATA_MODULE = """
import sys
import torch
from torch.utils.data import TensorDataset
from compresskit.data import DataBundle

def raises(seed):
    raise RuntimeError("data factory broke")

def wrong_type(seed):
    return [1, 2, 3]

def no_seed():
    return None

def exits(seed):
    sys.exit(0)

NOT_CALLABLE = "x"

def empty(seed):
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    return DataBundle("empty", 10, (1, 8, 8), empty, empty, empty, empty)

def nan_inputs(seed):
    from compresskit.data import split
    x = torch.full((40, 1, 8, 8), float("nan"))
    return split(x, torch.arange(40) % 4, name="nan-data", seed=seed)

def inf_inputs(seed):
    from compresskit.data import split
    x = torch.full((40, 1, 8, 8), float("inf"))
    return split(x, torch.arange(40) % 4, name="inf-data", seed=seed)
"""


def _factory_data_cases() -> Iterator[Case]:
    for name, expect in [
        ("raises", "data factory broke"),
        ("wrong_type", "list"),
        ("no_seed", "seed"),
        ("exits", "SystemExit"),
        ("NOT_CALLABLE", "not a function"),
        ("empty", "empty"),
        ("nan_inputs", "NaN"),
        ("inf_inputs", "infinite"),
        ("absent", "absent"),
    ]:

        def build(kit: Kit, name: str = name) -> list[str]:
            kit.file("datas.py", DATA_MODULE)
            return kit.with_option(kit.compress(), "--data", f"{kit.dir}/datas.py:{name}")

        yield Case(f"data-factory-{name}", build, (expect,))


def _fashion_cases() -> Iterator[Case]:
    def idx(images: bytes, labels: bytes) -> Callable[[Kit], list[str]]:
        def build(kit: Kit) -> list[str]:
            root = mkdir(kit.dir / "fmnist")
            for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
                kit.file(f"fmnist/{stem}", images)
            for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
                kit.file(f"fmnist/{stem}", labels)
            os.environ["COMPRESSKIT_FASHION_MNIST"] = str(root)
            return kit.with_option(kit.compress(), "--data", "fashion-mnist")

        return build

    header3 = b"\x00\x00\x08\x03" + (20).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    labels = b"\x00\x00\x08\x01" + (20).to_bytes(4, "big") + bytes(20)
    images = header3 + bytes(20 * 28 * 28)
    yield Case("fmnist-truncated", idx(images[:-100], labels), ("truncated",))
    yield Case("fmnist-junk", idx(b"junk" * 30, labels), ("IDX",))
    yield Case("fmnist-empty", idx(b"", labels), ("IDX",))
    yield Case("fmnist-wrong-type", idx(b"\x00\x00\x0d\x03" + images[4:], labels), ("unsigned",))
    yield Case("fmnist-bad-gzip", _gz_case(), ("reinstall",))
    yield Case("fmnist-count-mismatch", idx(images, labels[:-5]), ("fmnist",))


def _gz_case() -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        root = mkdir(kit.dir / "fmnistgz")
        for stem in (
            "train-images-idx3-ubyte",
            "t10k-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            kit.file(f"fmnistgz/{stem}.gz", b"\x1f\x8b" + b"not gzip" * 10)
        os.environ["COMPRESSKIT_FASHION_MNIST"] = str(root)
        return kit.with_option(kit.compress(), "--data", "fashion-mnist")

    return build
