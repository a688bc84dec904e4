"""Shared fixtures: a private cache, quiet output, and no files left outside tmp dirs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private cache, quiet output, and a private temp dir (``$TMPDIR``, inherited by
    subprocesses) that the stray-file guard watches."""
    os.environ["COMPRESSKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["COMPRESSKIT_QUIET"] = "1"
    # torch's compiler (the dynamo exporter) caches in $TMPDIR/torchinductor_$USER.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor"))
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmpdir"))
    tempfile.tempdir = None  # re-read $TMPDIR
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
    tempfile.tempdir = None


# Caches that live in the repository by design (gitignored): benchmark artifacts.
_IGNORED = ("benchmarks/artifacts",)
# What dependencies leave in the temp dir by design: onnxruntime's session-id file.
_TEMP_IGNORED = frozenset({".ses"})


def _snapshot() -> set[Path]:
    """Files of the repository, without dot folders (.git, .venv, tool caches)."""
    files = set()
    for root, folders, names in os.walk(REPO):
        relative = Path(root).relative_to(REPO)
        folders[:] = [
            f
            for f in folders
            if not (f.startswith(".") and f != ".ci")
            and f != "__pycache__"
            and not f.endswith(".egg-info")
            and not str(relative / f).startswith(_IGNORED)
        ]
        files.update(Path(root) / name for name in names)
    return files


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in its tmp dir; fail it if it leaves files in the repository or in
    the temp dir (a temporary file or folder it did not clean up)."""
    temp = Path(tempfile.gettempdir())
    before, temp_before = _snapshot(), set(temp.iterdir())
    monkeypatch.chdir(tmp_path)
    yield
    stray = _snapshot() - before
    assert not stray, f"test left files in the repository: {sorted(map(str, stray))[:5]}"
    left = {p for p in set(temp.iterdir()) - temp_before if p.name not in _TEMP_IGNORED}
    assert not left, f"test left files in the temp dir: {sorted(map(str, left))[:5]}"


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
