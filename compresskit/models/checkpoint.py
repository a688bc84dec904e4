"""Saving compressed models so they reload with their new shapes, without pickled code.

The file holds plain data (loadable with ``torch.load(weights_only=True)``): where the
architecture comes from, the structure that differs from a fresh build (widths, swapped
module classes, shortened layer lists) and the state dict. Reloading rebuilds the
architecture, replays the structure and loads the weights strictly.

A swapped-in class is restored by its module kind (:mod:`compresskit.kinds`), looked up by
the qualified name in the file: only allowlisted, registered kinds, in any process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.kinds import UnknownKindError, kind_named, kind_of, qualified_name

FORMAT = "compresskit-model"
FORMAT_VERSION = 1

# Attributes that describe a layer's size; restored before the weights are loaded.
SIZE_ATTRIBUTES = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "embed_dim",
    "num_heads",
    "head_dim",
    # Hugging Face attention (BertSelfAttention and relatives), per layer after head pruning
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "num_embeddings",
    "embedding_dim",
)


class RestoreError(CompressKitError):
    """A saved model names a module that a fresh build cannot be turned into."""


def _qualname(module: nn.Module) -> str:
    return qualified_name(type(module))


def describe_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Class, size attributes and list lengths of every module."""
    structure: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        entry: dict[str, Any] = {"class": _qualname(module)}
        attrs = {a: getattr(module, a) for a in SIZE_ATTRIBUTES if hasattr(module, a)}
        kind = kind_of(module)
        if kind is not None:
            attrs.update(kind.structure(module))
        if attrs:
            entry["attrs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
        if isinstance(module, nn.ModuleList | nn.Sequential):
            entry["length"] = len(module)
        structure[name] = entry
    return structure


def save_model(model: nn.Module, path: Path, *, source: dict[str, Any]) -> None:
    """Write ``model`` atomically to ``path`` with the recipe to rebuild it."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": source,
        "structure": describe_structure(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(payload, tmp.name)
    os.replace(tmp.name, path)


def is_saved_model(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def restore_model(payload: dict[str, Any], build: Callable[[], nn.Module]) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` from a fresh ``build()``."""
    model = build()
    structure: dict[str, dict[str, Any]] = payload["structure"]
    _apply_structure(model, structure)
    state = payload["state_dict"]
    _resize_to(model, state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    # Shorten layer lists first (depth pruning), then swap classes and sizes.
    for name, entry in structure.items():
        length = entry.get("length")
        if length is None:
            continue
        container = model.get_submodule(name) if name else model
        while isinstance(container, nn.ModuleList | nn.Sequential) and len(container) > length:
            del container[len(container) - 1]
    added = []
    for name, entry in structure.items():
        try:  # looked up afresh: a restored parent brings new children (explicit attention)
            module = model.get_submodule(name) if name else model
        except AttributeError:
            added.append((name, entry))
            continue
        attrs = entry.get("attrs", {})
        if entry["class"] == _qualname(nn.Identity()) and not isinstance(module, nn.Identity):
            _set_submodule(model, name, nn.Identity())  # folded or fused away
            continue
        if _qualname(module) != entry["class"]:
            module = _restore_kind(model, name, module, entry["class"], attrs)
        for attr, value in attrs.items():
            if attr in SIZE_ATTRIBUTES and hasattr(module, attr):
                current = getattr(module, attr)
                setattr(module, attr, tuple(value) if isinstance(current, tuple) else value)
    _attach_added(model, added)


def _attach_added(model: nn.Module, added: list[tuple[str, dict[str, Any]]]) -> None:
    """Modules a pass added to the tree (int8 residual quantizers) that a fresh build
    lacks: their kind adds them back. Others are left for the strict state dict to name."""
    for name, entry in added:
        try:
            kind, _ = kind_named(entry["class"])
        except UnknownKindError:
            continue
        if kind.attach is not None:
            kind.attach(model, name, entry.get("attrs", {}))


def _restore_kind(
    model: nn.Module, name: str, module: nn.Module, saved: str, attrs: dict[str, Any]
) -> nn.Module:
    """Turn the freshly built ``module`` into the kind the file names (never unpickling)."""
    made = _qualname(module)
    try:
        kind, cls = kind_named(saved)
    except CompressKitError as error:
        raise RestoreError(
            f"module {name!r} was saved as {saved}, which a fresh build does not make "
            f"({made}): {error}"
        ) from None
    if kind.restore is None or cls is None:
        raise RestoreError(
            f"module {name!r} was saved as a {kind.label}, which {kind.restore_refusal}"
        )
    restored = kind.restore(cls, module, attrs)
    if restored is not module:
        _set_submodule(model, name, restored)
    return restored


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer the shape it has in ``state`` (values come later)."""
    for key, value in state.items():
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue  # load_state_dict(strict=True) names it
        current = getattr(owner, attr, None)
        if current is None and attr in owner._parameters:  # e.g. a bias added by BN folding
            setattr(owner, attr, nn.Parameter(torch.empty(value.shape, dtype=value.dtype)))
            continue
        if not isinstance(current, torch.Tensor) or current.shape == value.shape:
            continue
        empty = torch.empty(value.shape, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(owner, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(attr, empty)
