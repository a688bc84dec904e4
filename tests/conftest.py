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


# Caches that live in the repository by design (gitignored): benchmark artifacts.
_IGNORED = ("benchmarks/artifacts",)


def _snapshot() -> set[Path]:
    files = set()
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO)
        if any(part.startswith(".") and part != ".ci" for part in relative.parts):
            continue  # .git, .venv, tool caches
        if "__pycache__" in relative.parts or ".egg-info" in str(relative):
            continue
        if str(relative).startswith(_IGNORED):
            continue
        files.add(path)
    return files


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


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (grouped-query attention) with its tokenizer, as a Hugging Face dir."""
    from compresskit.testing.tiny_lm_export import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "hf", "llama")


@pytest.fixture(scope="session")
def tiny_lm_onnx(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_lm_dir`` exported with its KV cache (fp32 onnxruntime-genai folder, ~5 s)."""
    from compresskit.export.decoder import export_decoder

    return export_decoder(tiny_lm_dir, tmp_path_factory.mktemp("tiny-lm-onnx") / "fp32").path
