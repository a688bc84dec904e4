"""What a pass may read besides the model: teacher, data, example inputs, seed, run dir."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from compresskit.budget import Budget
from compresskit.data.bundle import DataBundle
from compresskit.tasks import Task


class LatencyProbe(Protocol):
    """Measures a model's p50 latency in ms on an export target at one batch size.

    The run hands one to the passes (:func:`compresskit.bench.probe.measure_p50`: export,
    then time in the benchmark worker), so that a pass sized by latency measures the real
    thing without importing the benchmark harness."""

    def __call__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        target: str,
        batch: int,
        seconds: float,
        dynamic_sequence: bool,
    ) -> float: ...


@dataclass(frozen=True)
class ModelCost:
    """One model measured on an export target at one batch size: the p50 of whole calls,
    and the kernel time per call of each torch module (ONNX Runtime's profiler; '' is the
    top-level forward; quantizers count to the layer or block that owns them)."""

    p50_ms: float
    modules: dict[str, float] = field(default_factory=dict)

    def cost_of(self, prefix: str) -> float:
        """Kernel ms of module ``prefix`` and everything inside it."""
        return sum(
            ms
            for name, ms in self.modules.items()
            if name == prefix or not prefix or name.startswith(prefix + ".")
        )


class ProfileProbe(Protocol):
    """Measures several models on an export target at one batch size, interleaved in one
    benchmark worker: each one's p50 and where its time goes, per torch module.

    The run hands one to the passes (:func:`compresskit.bench.probe.measure_costs`: every
    model exported with the same exporter, so that their module names match), so that a
    pass choosing precisions or widths by speed measures the real thing. Models on a
    target without a profiler (torch) come back with empty ``modules``."""

    def __call__(
        self,
        models: Sequence[nn.Module],
        example_inputs: tuple[torch.Tensor, ...],
        *,
        target: str,
        batch: int,
        seconds: float,
        dynamic_sequence: bool,
    ) -> list[ModelCost]: ...


@dataclass
class Context:
    """Passed explicitly to every ``Pass.apply``; there is no global session.

    ``teacher`` is a frozen copy of the model as it entered the pipeline unless the
    policy names another. ``records`` is where the running pass leaves facts for the
    report (per-layer widths, losses, layers kept in float); the runner gives each node
    a fresh one.

    Example::

        ctx = Context(data=bundle, teacher=model, example_inputs=bundle.example_inputs())
    """

    data: DataBundle
    teacher: nn.Module | None
    example_inputs: tuple[torch.Tensor, ...]
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run_dir: Path | None = None
    records: dict[str, Any] = field(default_factory=dict)
    # The policy's budget, for training that stops once it is met (train.stop_at_budget).
    budget: Budget | None = None
    # How passes measure latency on a target (pruning to a latency target); the run sets it.
    latency_probe: LatencyProbe | None = None
    # How passes compare models per module on a target (precision by latency, widths).
    profile_probe: ProfileProbe | None = None
    # A teacher file may rebuild itself with the factory it records (the user allowed it).
    trust_factory: bool = False

    @property
    def task(self) -> Task:
        """The task contract of the data: what the model outputs and how it is judged."""
        return self.data.contract

    def for_node(self) -> Context:
        """A copy with empty records, for one node of the pipeline."""
        return replace(self, records={})

    def record(self, **facts: Any) -> None:
        """Leave facts about what the current pass did for the report."""
        self.records.update(facts)
