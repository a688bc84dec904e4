"""The pass protocol: a frozen, typed config and one ``apply(model, ctx) -> model``.

A pass is registered by name with :func:`register_pass` and imported explicitly in
``passes/__init__.py``. What a configured pass needs and does is asked of it before
anything runs: the data splits it reads (``config.data_needs()``, checked against the
data), whether it can handle the model's layers (``check(model, ctx)``, every node on
the input model before the first node runs) and what it does to the model's precision
(:class:`Effects`, checked along every chain of the graph: two passes that quantize the
same layers, or a float-only pass after a quantizing one, are refused when the graph is
validated).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from compresskit.configs import DataNeed, PassConfig
from compresskit.records import PassRecord

if TYPE_CHECKING:
    from torch import nn

    from compresskit.context import Context


@dataclass(frozen=True)
class Effects:
    """What a pass does to the model's precision, checked along every chain of the graph.

    ``quantizes``: the parts it makes low-precision ("layers", "embeddings"); a later pass
    that quantizes a part again is refused, unless it ``refines`` that part (QAT fine-tunes
    an already fake-quantized model). ``float_only``: it needs a float model (pruning
    does). ``trains``: it trains the model, which layers that ``packs`` (bitsandbytes:
    neither trainable nor exportable) forbid.
    """

    quantizes: frozenset[str] = frozenset()
    refines: frozenset[str] = frozenset()  # quantized parts it may take and fine-tune
    float_only: bool = False
    trains: bool = False
    packs: bool = False


ConfigT = TypeVar("ConfigT", bound=PassConfig)


class Pass(ABC, Generic[ConfigT]):
    """A model transformation with a typed config.

    Example::

        @register_pass("halve")
        class Halve(Pass[HalveConfig]):
            config_cls = HalveConfig
            effects = Effects(float_only=True)

            def apply(self, model, ctx):
                ...
                return model
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PassConfig]]
    effects: ClassVar[Effects] = Effects()
    # The facts ``ctx.record`` leaves, validated when the node finishes (compresskit.records).
    record_cls: ClassVar[type[PassRecord]] = PassRecord

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    def data_needs(self) -> frozenset[DataNeed]:
        """The data splits this configured pass reads."""
        return self.config.data_needs()

    def check(self, model: nn.Module, ctx: Context) -> None:
        """Raise a one-line :class:`~compresskit.errors.CompressKitError` naming the layer,
        its type and the option that gets past it when this pass cannot handle ``model``
        (the input model: the runner asks every node before the first one runs, so a
        refusal comes in seconds, not after training). Must not change ``model``."""

    @abstractmethod
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Transform ``model`` (which the pass owns and may change in place)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


_REGISTRY: dict[str, type[Pass[Any]]] = {}

PassT = TypeVar("PassT", bound=type[Pass[Any]])


def register_pass(name: str) -> Callable[[PassT], PassT]:
    """Class decorator: make a pass available to policies under ``name``."""

    def decorate(cls: PassT) -> PassT:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pass name {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_pass(name: str) -> type[Pass[Any]]:
    """The pass class registered as ``name``; KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown pass {name!r}; known passes: {known}") from None


def registered_passes() -> dict[str, type[Pass[Any]]]:
    """All registered passes by name."""
    return dict(sorted(_REGISTRY.items()))
