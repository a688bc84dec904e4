"""The pass protocol: a frozen, typed config and one ``apply(model, ctx) -> model``.

A pass is registered by name with :func:`register_pass` and imported explicitly in
``passes/__init__.py``. Passes that need data declare it in ``needs``; the runner checks
that the context provides it before anything runs.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from compresskit.records import PassRecord

if TYPE_CHECKING:
    from torch import nn

    from compresskit.context import Context


class PassConfig(BaseModel):
    """Base of every pass config: frozen, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DataNeed(str, enum.Enum):
    """The data splits a pass may need from the context."""

    CALIBRATION = "calibration"
    TRAIN = "train"
    EVAL = "eval"


class Stage(enum.IntEnum):
    """Where a pass may sit in a chain. A pass may not follow one of a later stage:
    pruning after quantization, for instance, has nothing left to prune."""

    STRUCTURE = 0
    TRAINING = 1
    QUANTIZATION = 2


ConfigT = TypeVar("ConfigT", bound=PassConfig)


class Pass(ABC, Generic[ConfigT]):
    """A model transformation with a typed config.

    Example::

        @register_pass("halve")
        class Halve(Pass[HalveConfig]):
            config_cls = HalveConfig
            stage = Stage.STRUCTURE

            def apply(self, model, ctx):
                ...
                return model
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[PassConfig]]
    stage: ClassVar[Stage]
    needs: ClassVar[frozenset[DataNeed]] = frozenset()
    # The facts ``ctx.record`` leaves, validated when the node finishes (compresskit.records).
    record_cls: ClassVar[type[PassRecord]] = PassRecord
    # Stages this pass may follow even though they come later (e.g. QAT fine-tuning).
    may_follow: ClassVar[frozenset[Stage]] = frozenset()

    def __init__(self, config: ConfigT) -> None:
        self.config = config

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
