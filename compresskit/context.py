"""What a pass may read besides the model: teacher, data, example inputs, seed, run dir."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compresskit.data.bundle import DataBundle

if TYPE_CHECKING:
    from compresskit.budget import Budget


@dataclass
class Context:
    """Passed explicitly to every ``Pass.apply``; there is no global session.

    ``teacher`` is a frozen copy of the model as it entered the pipeline unless the
    policy names another. ``records`` is where the running pass leaves facts for the
    report (per-layer widths, losses, layers kept in float); the runner gives each node
    a fresh one.

    >>> ctx = Context(data=bundle, teacher=model, example_inputs=bundle.example_inputs())
    ...                                                                 # doctest: +SKIP
    """

    data: DataBundle
    teacher: nn.Module | None
    example_inputs: tuple[torch.Tensor, ...]
    task: str = "classification"
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    run_dir: Path | None = None
    records: dict[str, Any] = field(default_factory=dict)
    # The policy's budget, for training that stops once it is met (train.stop_at_budget).
    budget: Budget | None = None

    def for_node(self) -> Context:
        """A copy with empty records, for one node of the pipeline."""
        return replace(self, records={})

    def record(self, **facts: Any) -> None:
        """Leave facts about what the current pass did for the report."""
        self.records.update(facts)
