"""Loading models: built-in examples, state dicts with an architecture factory, full
pickles on explicit opt-in, Hugging Face directories, and compresskit's own saved models."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, first_line
from compresskit.imports import import_object
from compresskit.models.checkpoint import RestoreError, is_saved_model, restore_model
from compresskit.models.examples import EXAMPLES, load_example

DEFAULT_CHECKPOINT = "example:digits-cnn"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadedModel:
    """A model in eval mode, where it came from (to rebuild it), and its usual data."""

    model: nn.Module
    source: dict[str, Any]
    default_data: str | None = None
    notes: list[str] = field(default_factory=list)
    # How raw text or images become its inputs (a Hugging Face tokenizer or processor).
    preprocessing: Preprocessing | None = None

    @classmethod
    def of(cls, model: LoadedModel | nn.Module | str | Path | None) -> LoadedModel:
        """``model`` as given to the Python API: loaded already, a module built in code,
        or a checkpoint reference for :func:`load_model`."""
        if isinstance(model, LoadedModel):
            return model
        if isinstance(model, nn.Module):
            return cls(model.eval(), {"kind": "python"})
        return load_model(model)

    @property
    def path(self) -> Path | None:
        """The checkpoint file or directory it was read from, if any."""
        path = self.source.get("path")
        return Path(path) if path else None

    def describe(self) -> str:
        """Where it came from, for reports: ``example:NAME``, a path, or a factory."""
        kind = self.source.get("kind")
        if kind == "example":
            return f"example:{self.source['name']}"
        return str(self.source.get("path") or self.source.get("factory") or kind)


def load_model(
    checkpoint: str | Path | None = None,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    task: str | None = None,
) -> LoadedModel:
    """Load ``checkpoint``; see the module docstring for the accepted forms.

    >>> load_model("example:digits-cnn").model                    # doctest: +SKIP
    >>> load_model("weights.pt", arch="mypkg.nets:resnet18")       # doctest: +SKIP
    """
    ref = str(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if ref.startswith("example:"):
        name = ref.removeprefix("example:")
        model = load_example(name)
        return LoadedModel(model, {"kind": "example", "name": name}, EXAMPLES[name].data)
    path = Path(ref)
    if not path.exists():
        raise CompressKitError(
            f"checkpoint {ref}: no such file or directory "
            f"(built-in examples: {', '.join('example:' + n for n in EXAMPLES)})"
        )
    if path.is_dir():
        return _load_hf(path, task)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CompressKitError(
            f"checkpoint {path}: unknown file type {path.suffix!r}; expected one of "
            f"{', '.join(STATE_DICT_SUFFIXES)} or a Hugging Face model directory"
        )
    obj = _read(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), {"kind": "pickle", "path": str(path)})
    if isinstance(obj, dict) and is_saved_model(obj):
        return _restore(obj, path, arch=arch)
    state = _state_dict_of(obj, path)
    if arch is None:
        raise CompressKitError(
            f"checkpoint {path} is a state dict: give its architecture with "
            "--arch MODULE:FACTORY (a function returning the nn.Module)"
        )
    model = build_arch(arch)
    _load_strict(model, state, path, arch)
    return LoadedModel(model.eval(), {"kind": "arch", "factory": arch})


def build_arch(spec: str) -> nn.Module:
    """Call the ``module:factory`` architecture and check it returns a module."""
    factory = import_object(spec, what="--arch")
    model = factory()
    if not isinstance(model, nn.Module):
        raise CompressKitError(
            f"--arch {spec}: returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _read(path: Path, *, trust_pickle: bool) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own untyped errors
            raise CompressKitError(
                f"checkpoint {path}: not a readable safetensors file ({error})"
            ) from None
    if not _looks_like_torch_file(path):
        raise CompressKitError(
            f"checkpoint {path}: not a readable torch file (neither torch.save's zip format "
            "nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        if not trust_pickle and "weights_only" in str(error):
            raise CompressKitError(
                f"checkpoint {path} contains pickled Python objects (a full model?); loading it "
                "runs code from the file: pass --trust-pickle only if you trust its source"
            ) from None
        raise CompressKitError(f"checkpoint {path}: not a readable torch file ({error})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CompressKitError(
            f"checkpoint {path}: not a readable torch file ({first_line(error)})"
        ) from None


def _looks_like_torch_file(path: Path) -> bool:
    import zipfile

    with path.open("rb") as f:
        first = f.read(1)
    return zipfile.is_zipfile(path) or first == b"\x80"  # zip, or a pickle's PROTO opcode


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CompressKitError(
        f"checkpoint {path}: holds a {type(obj).__name__}, not a state dict or model; save "
        "it with torch.save(model.state_dict(), path)"
    )


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{k} is {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} in the "
            f"architecture" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    if problems:
        raise CompressKitError(
            f"checkpoint {path} does not match --arch {arch}: {'; '.join(problems)}; "
            "check that the factory builds the same architecture the weights were saved from"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _restore(payload: dict[str, Any], path: Path, *, arch: str | None) -> LoadedModel:
    source = payload["source"]
    build: Callable[[], nn.Module]
    if source["kind"] == "example":
        build = EXAMPLES[source["name"]].build
    elif source["kind"] == "arch":
        factory = arch or source["factory"]

        def build() -> nn.Module:
            return build_arch(factory)
    elif source["kind"] == "hf":
        from compresskit.models.hf import builder

        build = builder(source)
    else:
        raise CompressKitError(
            f"checkpoint {path}: saved from a {source['kind']} model, which cannot be rebuilt "
            "from data alone; load the .onnx file instead"
        )
    try:
        model = restore_model(payload, build)
    except (ValueError, RuntimeError, RestoreError) as error:
        raise CompressKitError(f"checkpoint {path}: cannot restore ({error})") from None
    default = EXAMPLES[source["name"]].data if source["kind"] == "example" else None
    return LoadedModel(model, source, default)


def _load_hf(path: Path, task: str | None) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise CompressKitError(
            f"checkpoint {path} is a directory without config.json; give a Hugging Face model "
            "directory (save_pretrained) or a file"
        )
    from compresskit.models.hf import load_hf_directory

    loaded = load_hf_directory(path, task=task)
    return LoadedModel(
        loaded.model, loaded.source, notes=loaded.notes, preprocessing=loaded.preprocessing
    )
