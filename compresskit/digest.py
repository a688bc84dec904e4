"""sha256 digests of what a run reads: checkpoint files (or folders) and state dicts.

>>> import tempfile
>>> model = nn.Linear(4, 2)
>>> source_digest(None, model)["source_sha256_of"]
'state_dict'
>>> with tempfile.TemporaryDirectory() as tmp:
...     torch.save(model.state_dict(), Path(tmp, "weights.pt"))
...     source_digest(Path(tmp, "weights.pt"), model)["source_sha256_of"]
'file'
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def source_digest(path: Path | None, model: nn.Module) -> dict[str, str]:
    """The digest of a run's source: of its checkpoint file when there is one, else of the
    loaded model's state dict; ``source_sha256_of`` says which."""
    if path is not None and path.exists():
        return {"source_sha256": file_sha256(path), "source_sha256_of": "file"}
    return {"source_sha256": state_dict_sha256(model), "source_sha256_of": "state_dict"}
