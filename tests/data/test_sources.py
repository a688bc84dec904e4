from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compresskit.data import DataBundle, load_data
from compresskit.errors import CompressKitError


def test_digits_splits_are_deterministic_and_disjoint() -> None:
    a, b = load_data("digits", seed=0), load_data("digits", seed=0)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.eval) == 1797
    assert len(a.calibration) == 256
    torch.testing.assert_close(a.eval.tensors[0], b.eval.tensors[0])
    assert a.calibration.indices == b.calibration.indices
    other = load_data("digits", seed=1)
    torch.testing.assert_close(other.eval.tensors[0], a.eval.tensors[0])  # eval is fixed
    assert other.calibration.indices != a.calibration.indices  # the seed moves calibration
    train = {tuple(x.flatten().tolist()) for x in a.train.tensors[0]}
    assert not any(tuple(x.flatten().tolist()) in train for x in a.eval.tensors[0][:50])


def test_npz(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((100, 3, 4, 4)).astype(np.float32)
    y = np.arange(100) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    bundle = load_data(str(tmp_path / "d.npz"))
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 4, 4)
    assert len(bundle.eval) == 20


def test_npz_token_ids_stay_integers_and_images_become_floats(tmp_path: Path) -> None:
    ids = np.random.default_rng(0).integers(0, 30_000, (40, 12))
    np.savez(tmp_path / "t.npz", x=ids, y=np.arange(40) % 2)
    tokens = load_data(str(tmp_path / "t.npz"))
    assert tokens.train.tensors[0].dtype == torch.int64
    assert set(tokens.train.tensors[0].flatten().tolist()) <= set(ids.flatten().tolist())
    pixels = np.full((40, 1, 4, 4), 200, dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=pixels, y=np.arange(40) % 2)
    images = load_data(str(tmp_path / "p.npz"))
    assert images.train.tensors[0].dtype == torch.float32


def test_npz_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 2)))
    with pytest.raises(CompressKitError, match=r"missing array\(s\) \['x', 'y'\]"):
        load_data(str(tmp_path / "d.npz"))


def test_factory(tmp_path: Path) -> None:
    (tmp_path / "mydata.py").write_text(
        "from compresskit.testing import tiny_data\n\n"
        "def make(seed):\n    return tiny_data(seed=seed)\n"
    )
    bundle = load_data(f"{tmp_path}/mydata.py:make", seed=3)
    assert isinstance(bundle, DataBundle) and bundle.seed == 3


def test_fashion_mnist_absent_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPRESSKIT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(CompressKitError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


def test_unknown_spec() -> None:
    with pytest.raises(CompressKitError, match="digits, fashion-mnist"):
        load_data("imagenet")
