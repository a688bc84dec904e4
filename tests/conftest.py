"""Shared fixtures: a private cache, quiet output, and no files left outside tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["COMPRESSKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["COMPRESSKIT_QUIET"] = "1"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _snapshot() -> set[Path]:
    return {
        p
        for p in REPO.rglob("*")
        if ".git" not in p.parts
        and "__pycache__" not in p.parts
        and ".egg-info" not in str(p)
        and not any(
            part.startswith(".") and part not in (".ci",) for part in p.relative_to(REPO).parts
        )
    }


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run each test in its tmp dir and fail it if it writes into the repository."""
    before = _snapshot()
    monkeypatch.chdir(tmp_path)
    yield
    stray = _snapshot() - before
    assert not stray, f"test left files in the repository: {sorted(map(str, stray))[:5]}"


@pytest.fixture
def tiny():
    from compresskit.testing import tiny_data

    return tiny_data()


@pytest.fixture
def trained_tiny_cnn(tiny):
    """A TinyCNN trained for a few epochs on the tiny task (~1 s)."""
    from compresskit.testing import TinyCNN
    from compresskit.training.loop import TrainConfig, train

    torch.manual_seed(0)
    model = TinyCNN()
    train(model, tiny, TrainConfig(epochs=4, lr=1e-2, batch_size=32))
    return model.eval()


@pytest.fixture
def tiny_text():
    from compresskit.testing import tiny_token_data

    return tiny_token_data()


@pytest.fixture
def trained_tiny_transformer(tiny_text):
    """A TinyTokenTransformer trained for a few epochs on the tiny token task (~3 s)."""
    from compresskit.testing import TinyTokenTransformer
    from compresskit.training.loop import TrainConfig, train

    torch.manual_seed(0)
    model = TinyTokenTransformer()
    train(model, tiny_text, TrainConfig(epochs=3, lr=3e-3, batch_size=32))
    return model.eval()
