"""What a search aims at: one quality limit, one or two speed limits, and a time limit;
checked before any work, and turned into the constraints optuna's sampler reads.

>>> goal = Goal(max_accuracy_drop=0.01, min_speedup=2.0)
>>> goal.violations(0.90, 0.905, latency_ms=1.0, baseline_ms=2.5)
[-0.005, -0.5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresskit.budget import Budget
from compresskit.errors import CompressKitError
from compresskit.export.targets import builtin_target_names, load_target, target_available

# Below this no trial (prune, distil, export, time) finishes even on a tiny model.
MIN_TIME_LIMIT = 20.0
# The metric each quality limit is about.
QUALITY_METRICS = {"max_accuracy_drop": "accuracy", "min_cosine": "cosine"}


@dataclass(frozen=True)
class Goal:
    """A quality limit (``max_accuracy_drop`` or ``min_cosine``) and a speed limit
    (``min_speedup`` over the baseline and/or ``max_latency_ms``), at the target's batch."""

    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    min_speedup: float | None = None
    max_latency_ms: float | None = None

    def check(self) -> None:
        """Raise a one-line :class:`CompressKitError` unless the goal is complete and sane."""
        quality = [k for k in QUALITY_METRICS if getattr(self, k) is not None]
        if len(quality) != 1:
            raise CompressKitError(
                "search needs one quality budget: --max-accuracy-drop (classification) or "
                "--min-cosine (embeddings)" + (" (not both)" if quality else "")
            )
        if self.min_speedup is None and self.max_latency_ms is None:
            raise CompressKitError(
                "search needs a speed budget: --min-speedup (over the baseline) or "
                "--max-latency-ms (p50 at --batch on --target)"
            )
        for name, low, high in (
            ("max_accuracy_drop", 0.0, 1.0),
            ("min_cosine", 0.0, 1.0),
            ("min_speedup", 1e-3, 1e6),
            ("max_latency_ms", 1e-6, 1e9),
        ):
            value = getattr(self, name)
            if value is not None and (math.isnan(value) or not low <= value <= high):
                raise CompressKitError(
                    f"search --{name.replace('_', '-')} {value}: give a number from {low:g} "
                    f"to {high:g}"
                )

    @property
    def quality_field(self) -> str:
        return next(k for k in QUALITY_METRICS if getattr(self, k) is not None)

    @property
    def metric(self) -> str:
        """The task metric the quality limit is about."""
        return QUALITY_METRICS[self.quality_field]

    def budget(self) -> Budget:
        """The quality limit as a policy budget (the report judges candidates by it)."""
        return Budget.model_validate({self.quality_field: getattr(self, self.quality_field)})

    def default_slack(self) -> float:
        """How far a proxy's quality may miss the budget and still be trained in full, by
        default: as much again as the budget allows to lose."""
        if self.max_accuracy_drop is not None:
            return self.max_accuracy_drop
        assert self.min_cosine is not None
        return 1.0 - self.min_cosine

    def limits(self) -> dict[str, float]:
        return {
            k: v
            for k, v in vars(self).items()
            if v is not None  # the limits given, by their option names
        }

    def violations(
        self, quality: float, baseline_quality: float, *, latency_ms: float, baseline_ms: float
    ) -> list[float]:
        """How far each limit is missed (<= 0: met), quality first: optuna's constraints."""
        if self.max_accuracy_drop is not None:
            missed = [baseline_quality - quality - self.max_accuracy_drop]
        else:
            assert self.min_cosine is not None
            missed = [self.min_cosine - quality]
        if self.min_speedup is not None:
            missed.append(self.min_speedup - baseline_ms / latency_ms)
        if self.max_latency_ms is not None:
            missed.append(latency_ms - self.max_latency_ms)
        return [round(x, 12) for x in missed]


def check_time_limit(seconds: float) -> None:
    if math.isnan(seconds) or seconds < MIN_TIME_LIMIT:
        raise CompressKitError(
            f"search --time-limit {seconds:g} s is too short for one trial (prune, distil, "
            f"export, time); give at least {MIN_TIME_LIMIT:g} s"
        )


def check_target(target: str, batch: int) -> None:
    if target not in builtin_target_names() and not (
        target.endswith((".yaml", ".yml")) and Path(target).is_file()
    ):
        raise CompressKitError(
            f"search --target {target!r}: unknown target; known: "
            f"{', '.join(builtin_target_names())} (or a target .yaml file)"
        )
    reason = target_available(load_target(target))
    if reason:
        raise CompressKitError(f"search --target {target}: {reason}; choose another target")
    if not 1 <= batch <= 4096:
        raise CompressKitError(f"search --batch {batch}: give 1 to 4096")


@dataclass(frozen=True)
class SearchOptions:
    """How long to search and train, and what the space holds.

    ``trials``: at most this many (None: until the time limit); ``final``: front members
    trained for ``final_epochs`` at the end; ``proxy_epochs``: distillation per trial."""

    trials: int | None = None
    final: int = 3
    proxy_epochs: int = 1
    final_epochs: int = 8
    lr: float = 0.003
    latency_seconds: float = 0.2
    max_stages: int = 3
    quantize: bool = True
    precision_by_latency: bool = True
    depth: bool = True
    round_to: int | None = None
    proxy_slack: float | None = None  # None: Goal.default_slack()

    def check(self) -> None:
        for name in ("final", "proxy_epochs", "final_epochs", "max_stages"):
            if getattr(self, name) < 1:
                raise CompressKitError(f"search {name} {getattr(self, name)}: give at least 1")
        if self.trials is not None and self.trials < 1:
            raise CompressKitError(f"search trials {self.trials}: give at least 1")
        if self.proxy_slack is not None and not 0 <= self.proxy_slack <= 1:
            raise CompressKitError(f"search proxy_slack {self.proxy_slack}: give 0 to 1")
        if not 0.01 <= self.latency_seconds <= 3600:
            raise CompressKitError("search latency_seconds: give 0.01 to 3600 seconds")


def require_optuna() -> Any:  # noqa: ANN401
    try:
        import optuna
    except ImportError:
        raise CompressKitError("search needs optuna: pip install 'compresskit[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_request(
    goal: Goal,
    *,
    time_limit: float,
    target: str,
    batch: int,
    seed: int,
    options: SearchOptions,
) -> Any:  # noqa: ANN401
    """Refuse a search that cannot run, before any work; returns the optuna module."""
    goal.check()
    check_time_limit(time_limit)
    options.check()
    check_target(target, batch)
    if not 0 <= seed < 2**63:
        raise CompressKitError(f"search --seed {seed}: give an integer from 0 to 2**63-1")
    return require_optuna()
