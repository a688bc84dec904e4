"""Module kinds: what compresskit knows about each module class a pass swaps in.

One registry keyed by class (by its qualified name, ``module.QualName``), in the spirit of
torchao's handler table and Torch-Pruning's ``register_customized_layer``. A kind says,
for its class: the precision of its weights; how the exporter treats it (``export``); the
hooks export runs around it; what its weights take in bytes; which structure attributes
a saved model records; and how a freshly built float module is turned into it when a
saved model is restored.

Export, size counting and checkpoints ask this registry; nothing reads ad hoc attributes
of modules. Restoring never unpickles: a saved model names classes as strings, and a name
that is not registered yet is imported only under an allowlisted prefix (torchao's
``config_from_dict`` with ``ALLOWED_AO_MODULES``), after which it must be a registered
kind. A new kind registers with the class decorator::

    @module_kind(precision="int8", export="qdq", structure=..., restore=...)
    class MyQuantLinear(nn.Linear): ...

Classes compresskit does not define (bitsandbytes) register by name with
:func:`register_kind`, so that nothing has to import their package to ask about them.
Kinds defined outside ``compresskit.quantization`` restore in a fresh process once their
package is allowed with :func:`allow_prefix`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from torch import nn

from compresskit.errors import CompressKitError

# fp32: a float module a pass swaps in for another (explicit attention projections).
WeightPrecision = Literal["int8", "int4", "nf4", "fp4", "fp32"]
# How the exporter treats a kind:
#   qdq: fake quant that the legacy TorchScript exporter turns into Q/DQ (int8 kernels);
#   ort-dynamic: exported as float, then rewritten by ORT dynamic quantization (int8);
#   as-is: its forward is exported like any float module (e.g. int8 table + Cast + Mul);
#   none: no ONNX form (``reason`` says why).
ExportRoute = Literal["qdq", "ort-dynamic", "as-is", "none"]
INTEGER_KERNEL_ROUTES: frozenset[ExportRoute] = frozenset({"qdq", "ort-dynamic"})

Structure = Callable[[nn.Module], dict[str, Any]]
Restore = Callable[[type[nn.Module], nn.Module, Mapping[str, Any]], nn.Module]
PrepareExport = Callable[[nn.Module, bool], None]
PostExport = Callable[[Path, Sequence[nn.Module]], str]
# (model, name, structure attrs): add a module a pass added (a fresh build lacks it).
Attach = Callable[[nn.Module, str, Mapping[str, Any]], None]

# Saved class names that may be imported to find their kind: prefix -> the module that
# registers kinds for names under it (None: the module part of the name itself).
ALLOWED_PREFIXES: dict[str, str | None] = {
    "compresskit.quantization.": None,
    "compresskit.models.attention.": "compresskit.models.attention",
    "bitsandbytes.": "compresskit.quantization.bnb_kinds",
}


def _no_structure(module: nn.Module) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ModuleKind:
    """What compresskit knows about one module class (see the module docstring).

    ``precision`` is a value or, where it depends on the instance (bitsandbytes 4-bit
    layers hold nf4 or fp4), a function of the module. ``restore`` is None for kinds that
    cannot be rebuilt from a saved state dict; ``restore_refusal`` then says why and what
    to do instead. ``attach`` adds a module that a pass added to the tree (it is not a
    fresh build's module swapped in) back to a fresh build, from its structure attrs.

    Example::

        kind_of(model.features[0]).export
        # -> 'qdq'
    """

    name: str
    precision: WeightPrecision | Callable[[nn.Module], WeightPrecision]
    export: ExportRoute
    label: str = ""
    reason: str = ""  # export == "none": why, as a clause after the layer's name
    prepare_export: PrepareExport | None = None  # (module, on) around the export trace
    post_export: PostExport | None = None  # rewrites the written file; says what it did
    weight_buffers: tuple[str, ...] = ()  # buffers that hold weights (counted as params)
    weight_bytes: Callable[[nn.Module], int] | None = None
    structure: Structure = _no_structure
    restore: Restore | None = None
    restore_refusal: str = ""
    attach: Attach | None = None

    def precision_of(self, module: nn.Module) -> WeightPrecision:
        return self.precision(module) if callable(self.precision) else self.precision

    @property
    def integer_kernels(self) -> bool:
        """Whether the exported graph runs this module in integer kernels."""
        return self.export in INTEGER_KERNEL_ROUTES

    @property
    def legacy_exporter(self) -> bool:
        """Only the TorchScript exporter turns fake quant into QuantizeLinear/DequantizeLinear."""
        return self.export == "qdq"


_KINDS: dict[str, ModuleKind] = {}
_CLASSES: dict[str, type[nn.Module]] = {}

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_kind(kind: ModuleKind, cls: type[nn.Module] | None = None) -> ModuleKind:
    """Register ``kind`` under ``kind.name`` (and its class, when it is at hand)."""
    if kind.export == "none" and not kind.reason:
        raise ValueError(f"kind {kind.name}: a kind that cannot be exported must say why")
    if kind.restore is None and not kind.restore_refusal:
        raise ValueError(f"kind {kind.name}: a kind without restore must say why")
    if kind.restore is not None and cls is None:
        raise ValueError(f"kind {kind.name}: restore needs the class; use @module_kind")
    _KINDS[kind.name] = kind
    if cls is not None:
        _CLASSES[kind.name] = cls
    return kind


def module_kind(
    *,
    precision: WeightPrecision | Callable[[nn.Module], WeightPrecision],
    export: ExportRoute,
    reason: str = "",
    prepare_export: PrepareExport | None = None,
    post_export: PostExport | None = None,
    weight_buffers: tuple[str, ...] = (),
    weight_bytes: Callable[[nn.Module], int] | None = None,
    structure: Structure = _no_structure,
    restore: Restore | None = None,
    restore_refusal: str = "",
    attach: Attach | None = None,
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: register the decorated ``nn.Module`` class as a kind."""

    def register(cls: ModuleT) -> ModuleT:
        name = qualified_name(cls)
        kind = ModuleKind(
            name=name,
            precision=precision,
            export=export,
            label=cls.__name__,
            reason=reason,
            prepare_export=prepare_export,
            post_export=post_export,
            weight_buffers=weight_buffers,
            weight_bytes=weight_bytes,
            structure=structure,
            restore=restore,
            restore_refusal=restore_refusal,
            attach=attach,
        )
        register_kind(kind, cls)
        return cls

    return register


def allow_prefix(prefix: str, provider: str | None = None) -> None:
    """Let restoring import saved class names under ``prefix`` (e.g. ``"mypkg.layers."``),
    from ``provider`` or, when None, from the module part of each name."""
    if not prefix.endswith("."):
        raise ValueError(f"prefix {prefix!r} must end with '.' (a package, not a name start)")
    ALLOWED_PREFIXES[prefix] = provider


def kind_of(module: nn.Module) -> ModuleKind | None:
    """The kind of ``module``'s class, or None for a module no pass swaps in.

    Kinds registered by name for another package's classes (bitsandbytes) are looked up
    through the allowlist, so asking never depends on what happened to be imported."""
    name = qualified_name(type(module))
    kind = _KINDS.get(name)
    if kind is None and _provider(name) is not None:
        _import_provider(name)
        kind = _KINDS.get(name)
    return kind


def kinds_in(model: nn.Module) -> list[tuple[str, nn.Module, ModuleKind]]:
    """(name, module, kind) for every module of ``model`` that has a kind."""
    found = []
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            found.append((name, module, kind))
    return found


def kind_named(name: str) -> tuple[ModuleKind, type[nn.Module] | None]:
    """The kind a saved model names, and its class when compresskit defines it.

    Refuses (one-line :class:`UnknownKindError`) a name outside the allowlist without
    importing anything, and a name under it that imports but is not a registered kind."""
    if name not in _KINDS:
        if _provider(name) is None:
            raise UnknownKindError(
                f"{name} is not a module kind compresskit can restore (only classes under "
                f"{', '.join(ALLOWED_PREFIXES)} are looked up); save the model from a "
                "compresskit pass, or load a state dict with --arch"
            )
        _import_provider(name)
    kind = _KINDS.get(name)
    if kind is None:
        raise UnknownKindError(
            f"{name} is not a registered compresskit module kind; it cannot be restored"
        )
    return kind, _CLASSES.get(name)


class UnknownKindError(CompressKitError):
    """A saved model names a module class that is not an allowed, registered kind."""


def _provider(name: str) -> str | None:
    for prefix, provider in ALLOWED_PREFIXES.items():
        if name.startswith(prefix):
            return provider or name.rpartition(".")[0]
    return None


def _import_provider(name: str) -> None:
    provider = _provider(name)
    assert provider is not None
    try:
        importlib.import_module(provider)
    except (ImportError, ValueError):  # ValueError: an empty module name part
        raise UnknownKindError(
            f"{name}: cannot import {provider} to restore it; is this compresskit older than "
            "the one that saved the model?"
        ) from None
