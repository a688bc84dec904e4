"""The end of a search: the best front members trained for longer, as one policy run by
:func:`compresskit.compress.run` (export, ONNX parity, evaluation split, latency timed
interleaved with the baseline), shortened to fit the time that is left.

Example::

    train_final(record, plan, loaded, bundle, run_dir, deadline=deadline)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compresskit.bench.report import Entry
from compresskit.compress import run
from compresskit.data import DataBundle
from compresskit.models.loading import LoadedModel
from compresskit.policies import Policy
from compresskit.policy_search.front import Final, SearchRecord, Trial
from compresskit.policy_search.goal import Goal
from compresskit.policy_search.space import (
    Choice,
    SearchSpace,
    Settings,
    choice_nodes,
    search_policy,
)
from compresskit.progress import status


def policy_yaml(policy: Policy) -> str:
    """A policy as the YAML ``compresskit compress --policy`` reads (defaults left out)."""
    data = policy.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    # Where it is measured is part of what was searched: written even where it is a default.
    data.update(targets=policy.targets, batch_sizes=policy.batch_sizes)
    return yaml.safe_dump(data, sort_keys=False, width=100)


def choice_of(trial: Trial) -> Choice:
    params = trial.params
    return Choice(
        tuple(params["stage_ratios"]), int(params["remove_blocks"]), str(params["precision"])
    )


@dataclass(frozen=True)
class Plan:
    """What the final training needs: the space and settings of the search, the epochs
    of the proxy and of the final training, and how many front members to train."""

    space: SearchSpace
    settings: Settings
    goal: Goal
    proxy_epochs: int
    final_epochs: int
    final: int
    slack: float = 0.0  # how far a proxy quality may miss the budget and still be trained

    def policy(self, trial: Trial, *, epochs: int) -> Policy:
        """The re-runnable policy of ``trial``, distilled for ``epochs``."""
        pipeline = choice_nodes(
            self.space, choice_of(trial), trial.name, epochs=epochs, settings=self.settings
        )
        return search_policy(
            f"search-{trial.name}",
            [pipeline],
            settings=self.settings,
            description=f"search trial {trial.number}: {trial.description}",
        )


def ranked(front: list[Trial], slack: float = 0.0) -> list[Trial]:
    """The order in which front members are trained in full: the fastest within budget
    (the safe choice), then the promising ones (see :meth:`Trial.promising`) fastest first, then
    the other members within budget fastest first, then the rest nearest the budget
    first. A short proxy underrates aggressive configurations most, so without the
    promising ones the fastest corner of the space would never be trained."""
    feasible = sorted((t for t in front if t.feasible), key=lambda t: t.latency_ms or 0.0)
    near = sorted((t for t in front if t.promising(slack)), key=lambda t: t.latency_ms or 0.0)
    rest = sorted(
        (t for t in front if not t.feasible and not t.promising(slack)),
        key=lambda t: max(t.violations),
    )
    return feasible[:1] + near + feasible[1:] + rest


def final_seconds(trials: list[Trial], plan: Plan, *, epochs: int | None = None) -> float:
    """What training ``trials`` for ``epochs`` (default: the final epochs) and measuring
    them is expected to take: each trial's own time with its distillation scaled from the
    proxy epochs, plus one more trial's overhead for the baseline."""
    scale = (epochs or plan.final_epochs) / plan.proxy_epochs
    overhead = [t.seconds - t.train_seconds for t in trials]
    train = sum(t.train_seconds * scale for t in trials)
    return sum(overhead) + max(overhead, default=0.0) + train


def fitting(front: list[Trial], plan: Plan, seconds_left: float) -> tuple[list[Trial], int] | None:
    """The front members to train and the epochs that fit in ``seconds_left``: as many
    members as fit at the final epochs, else one at fewer epochs (None: not even that)."""
    best = ranked(front, plan.slack)[: plan.final]
    for count in range(len(best), 0, -1):
        if final_seconds(best[:count], plan) <= seconds_left:
            return best[:count], plan.final_epochs
    for epochs in range(plan.final_epochs - 1, plan.proxy_epochs - 1, -1):
        if best and final_seconds(best[:1], plan, epochs=epochs) <= seconds_left:
            return best[:1], epochs
    return None


def train_final(
    record: SearchRecord,
    plan: Plan,
    loaded: LoadedModel,
    bundle: DataBundle,
    directory: Path,
    *,
    deadline: float,
    latency_seconds: float,
) -> None:
    """Train the chosen front members into ``directory/final`` and note their measurements
    (``trial.final``) in ``record``."""
    if not record.front():
        record.stopped += "; no trial completed, so nothing to train"
        status("search: no trial completed; nothing to train", style="yellow")
        return
    chosen = fitting(record.front(), plan, deadline - time.monotonic())
    if chosen is None:
        record.stopped += "; no time left for the final training"
        status("search: no time left for the final training", style="yellow")
        return
    trials, epochs = chosen
    record.chosen = [t.number for t in trials]
    record.final_epochs = epochs
    status(f"search: training {', '.join(t.name for t in trials)} for {epochs} epochs")
    pipelines = [
        choice_nodes(plan.space, choice_of(t), t.name, epochs=epochs, settings=plan.settings)
        for t in trials
    ]
    policy = search_policy("search-final", pipelines, settings=plan.settings)
    (directory / "final.yaml").write_text(policy_yaml(policy))
    result = run(
        policy,
        model=loaded,
        data=bundle,
        out=directory / "final",
        seed=record.seed,
        latency_seconds=latency_seconds,
        profile=False,
    )
    report = result.report
    record.final_report = "final/report.md"
    base = _measured(report.baseline, record)
    record.final_baseline = Final(
        quality=base[0], latency_ms=base[1], speedup=1.0, meets_budget=True
    )
    by_name = {entry.name: entry for entry in report.candidates}
    for trial in trials:
        entry = by_name.get(trial.name)
        if entry is None or base[0] is None or base[1] is None:
            trial.final = Final(quality=None, latency_ms=None, speedup=None, meets_budget=False)
            continue
        quality, latency = _measured(entry, record)
        speedup = base[1] / latency if latency else None
        meets = (
            quality is not None
            and latency is not None
            and (entry.parity is None or entry.parity.ok)
            and all(
                v <= 0
                for v in plan.goal.violations(
                    quality, base[0], latency_ms=latency, baseline_ms=base[1]
                )
            )
        )
        trial.final = Final(
            quality=quality, latency_ms=latency, speedup=speedup, meets_budget=meets
        )


def _measured(entry: Entry, record: SearchRecord) -> tuple[Any, Any]:
    """An entry's metric and its p50 at the search's target and batch."""
    latency = next(
        (
            x.p50_ms
            for x in entry.latency
            if x.target == record.target and x.batch == record.batch and x.workload is None
        ),
        None,
    )
    return entry.metrics.get(record.metric), latency
