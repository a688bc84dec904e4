"""The corpus's shared pieces: the valid inputs a case starts from (:class:`Kit`), the
case itself (:class:`Case`), and the helpers that write bad files (FIFOs, links, pickles
that would run code, .npz and torch files in memory)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ARCH = "compresskit.testing.tiny:TinyCNN"

BASE_POLICY: dict[str, Any] = {
    "version": 1,
    "name": "corpus",
    "description": "bad-input corpus",
    "teacher": "input",
    "nodes": [
        {"id": "prune", "pass": "prune_channels", "config": {"ratio": 0.5}},
        {
            "id": "ft",
            "pass": "distill",
            "after": "prune",
            "config": {"alpha": 0.5, "train": {"epochs": 1, "lr": 0.001, "batch_size": 32}},
        },
        {"id": "int8", "pass": "quantize", "after": "ft"},
    ],
    "targets": ["cpu-ort"],
    "batch_sizes": [1, 8],
    "budget": {"max_accuracy_drop": 0.02},
}


@dataclass
class Kit:
    """The valid inputs each case starts from, and the directory it writes into."""

    dir: Path
    weights: Path
    data: Path
    policy: Path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def compress(self, *extra: str, weights: Path | None = None) -> list[str]:
        """A compress command that would run, but for what ``extra`` breaks."""
        args = ["compress", str(weights or self.weights), "--arch", ARCH]
        args += ["--data", str(self.data), "--policy", str(self.policy)]
        args += ["--out", str(self.dir / "out"), "--latency-seconds", "0.05"]
        return args + list(extra)

    def with_option(self, args: list[str], option: str, value: str) -> list[str]:
        """``args`` with ``option``'s value replaced (or the option added)."""
        args = list(args)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
        return args


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Kit], list[str]]
    expect: tuple[str, ...]
    markers: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def make_kit(directory: Path) -> Kit:
    from compresskit.testing import TinyCNN, tiny_data

    bundle = tiny_data()
    x, y = bundle.train.tensors
    np.savez(directory / "data.npz", x=x.numpy()[:64], y=y.numpy()[:64])
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), directory / "w.pt")
    (directory / "policy.yaml").write_text(yaml.safe_dump(BASE_POLICY, sort_keys=False))
    return Kit(directory, directory / "w.pt", directory / "data.npz", directory / "policy.yaml")


class Marker:
    """Unpickling this runs ``touch`` on the marker: what a malicious model file does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def fifo(path: Path) -> Path:
    if not path.exists():
        os.mkfifo(path)
    return path


def link(kit: Kit, target: str, name: str) -> Path:
    link = kit.dir / name
    if target != "absent-target":
        kit.file(target, "x")
    link.symlink_to(kit.dir / target)
    return link


def read_only(kit: Kit) -> Path:
    directory = mkdir(kit.dir / "ro")
    directory.chmod(0o500)
    return directory
