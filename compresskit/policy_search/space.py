"""What a search may change in a model, and the policy each choice is.

A :class:`SearchSpace` is read off the model once: its prunable layers grouped into
stages (the top-level modules that hold them, else runs of consecutive layers), how many
residual blocks ``prune_blocks`` may remove, and whether int8 (and int8 chosen per layer
by measured latency) is tried. A trial's :class:`Choice` becomes a chain of compresskit
passes, ``prune_channels -> prune_blocks -> distill -> quantize``; :func:`search_policy`
writes chains as a policy that ``compresskit compress --policy`` runs as it is.

Example::

    space = SearchSpace.of(model, example_inputs)
    chain = choice_nodes(space, space.suggest(trial), "t0", epochs=1, settings=settings)
    policy = search_policy("search-t0", [chain], settings=settings)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compresskit.budget import Budget
from compresskit.distill.losses import OutputLoss
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_blocks import PruneBlocks, PruneBlocksConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.pipeline import Pipeline
from compresskit.policies import Policy, policy_of
from compresskit.pruning.depth import find_blocks
from compresskit.pruning.scope import ignored_modules, prunable_widths
from compresskit.quantization.latency_plan import LatencyPrecisionConfig
from compresskit.training.loop import TrainConfig

# Channel ratios a stage may lose: 0 (kept whole) to 0.75 in steps of 0.05.
MAX_RATIO, RATIO_STEP = 0.75, 0.05


@dataclass(frozen=True)
class Choice:
    """One trial's configuration: a channel ratio per stage, blocks removed, precision
    (``float``, ``int8``, or ``int8-by-latency``: int8 only where measured faster)."""

    stage_ratios: tuple[float, ...]
    remove_blocks: int
    precision: str

    def describe(self) -> str:
        parts = ["channels " + "/".join(f"{r:.2f}" for r in self.stage_ratios)]
        if self.remove_blocks:
            parts.append(f"-{self.remove_blocks} blocks")
        return ", ".join([*parts, self.precision])

    def params(self) -> dict[str, Any]:
        return {
            "stage_ratios": list(self.stage_ratios),
            "remove_blocks": self.remove_blocks,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class SearchSpace:
    """Stages of prunable layers (by name), removable blocks and precisions to try."""

    stages: tuple[tuple[str, tuple[str, ...]], ...]
    removable_blocks: int
    precisions: tuple[str, ...]
    round_to: int | None = None
    blocks: tuple[str, ...] = ()  # the blocks prune_blocks ranks (module names)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        max_stages: int = 3,
        quantize: bool = True,
        precision_by_latency: bool = True,
        depth: bool = True,
        round_to: int | None = None,
    ) -> SearchSpace:
        """The space of ``model``: at most ``max_stages`` stages; ``quantize`` adds int8
        (and ``precision_by_latency`` int8 chosen per layer); ``depth``: prune_blocks."""
        # The classifier and embeddings keep their widths, as prune_channels keeps them.
        ignored = ignored_modules(model, [], defaults=True, what="search")
        layers = [name for name in prunable_widths(model) if name not in ignored]
        # Every block of a stack but one may go, by sensitivity (the first too: a ResNet's
        # one identity block is often the cheapest to lose); a lone block may go.
        found = tuple(b.name for b in find_blocks(model, example_inputs, [])) if depth else ()
        blocks = len(found) - 1 if len(found) > 1 else len(found)
        precisions = ["float"]
        if quantize:
            precisions.append("int8")
            if precision_by_latency:
                precisions.append("int8-by-latency")
        return cls(
            stages=tuple(_stages(layers, max_stages)),
            removable_blocks=blocks,
            precisions=tuple(precisions),
            round_to=round_to,
            blocks=found,
        )

    def boldest(self) -> dict[str, Any] | None:
        """The optuna parameters of the most aggressive choice (every stage at the highest
        ratio, every removable block gone, the last precision), or None in a space with
        nothing to prune."""
        if not self.stages and not self.removable_blocks:
            return None
        params: dict[str, Any] = {f"ratio_{name}": MAX_RATIO for name, _ in self.stages}
        if self.removable_blocks:
            params["remove_blocks"] = self.removable_blocks
        if len(self.precisions) > 1:
            params["precision"] = self.precisions[-1]
        return params

    def suggest(self, trial: Any) -> Choice:  # noqa: ANN401  (an optuna Trial)
        """The choice an optuna trial samples from this space."""
        ratios = tuple(
            round(trial.suggest_float(f"ratio_{name}", 0.0, MAX_RATIO, step=RATIO_STEP), 4)
            for name, _ in self.stages
        )
        blocks = (
            trial.suggest_int("remove_blocks", 0, self.removable_blocks)
            if self.removable_blocks
            else 0
        )
        precision = (
            trial.suggest_categorical("precision", list(self.precisions))
            if len(self.precisions) > 1
            else self.precisions[0]
        )
        return Choice(ratios, blocks, str(precision))


def _stages(layers: Sequence[str], max_stages: int) -> list[tuple[str, tuple[str, ...]]]:
    """Layers grouped by the top-level module that holds them when that gives 2 to
    ``max_stages`` groups (a ResNet's layer1..layer4), else in runs of consecutive layers."""
    by_parent: dict[str, list[str]] = {}
    for name in layers:
        by_parent.setdefault(name.split(".")[0], []).append(name)
    if 2 <= len(by_parent) <= max_stages:
        return [(parent, tuple(names)) for parent, names in by_parent.items()]
    count = max(1, min(max_stages, len(layers)))
    size = -(-len(layers) // count) if layers else 0
    chunks = [tuple(layers[i : i + size]) for i in range(0, len(layers), size)] if size else []
    return [(f"stage{i + 1}", chunk) for i, chunk in enumerate(chunks)]


@dataclass(frozen=True)
class Settings:
    """What every trial's policy shares: the target, batch, budget and distillation."""

    target: str
    batch: int
    budget: Budget
    lr: float = 0.003
    latency_seconds: float = 0.2
    # The task's outputs are class logits (KD on labels and logits), else embeddings
    # (the cosine of the outputs to the teacher's).
    class_outputs: bool = True


def choice_nodes(
    space: SearchSpace, choice: Choice, prefix: str, *, epochs: int, settings: Settings
) -> Pipeline:
    """The chain of passes of ``choice``; the last node's id is ``prefix`` (the name the
    report gives the candidate), the others ``prefix-<step>``."""
    steps: list[tuple[str, Any]] = []
    ratios = {
        layer: ratio
        for (_, layers), ratio in zip(space.stages, choice.stage_ratios, strict=True)
        for layer in layers
    }
    if any(ratios.values()):
        config = PruneChannelsConfig(
            ratio=max(ratios.values()), layer_ratios=ratios, round_to=space.round_to
        )
        steps.append(("prune", PruneChannels(config)))
    # Blocks go after the channels: removing one renames the layers after it in its list.
    if choice.remove_blocks:
        blocks = PruneBlocksConfig(
            remove=choice.remove_blocks, blocks=list(space.blocks), protect_first=0
        )
        steps.append(("blocks", PruneBlocks(blocks)))
    train = TrainConfig(epochs=epochs, lr=settings.lr)
    distill = (
        DistillConfig(alpha=0.5, temperature=4.0, train=train)
        if settings.class_outputs
        else DistillConfig(losses=[OutputLoss(metric="cosine")], train=train)
    )
    steps.append(("distill", Distill(distill)))
    if choice.precision != "float":
        by_latency = (
            LatencyPrecisionConfig(
                export_target=settings.target,
                batch=settings.batch,
                measure_seconds=settings.latency_seconds,
            )
            if choice.precision == "int8-by-latency"
            else None
        )
        steps.append(("int8", Quantize(QuantizeConfig(precision_by_latency=by_latency))))
    pipeline = Pipeline()
    previous: str | None = None
    for index, (step, pass_) in enumerate(steps):
        node = prefix if index == len(steps) - 1 else f"{prefix}-{step}"
        pipeline.add(node, pass_, after=previous)
        previous = node
    return pipeline


def search_policy(
    name: str, pipelines: Sequence[Pipeline], *, settings: Settings, description: str = ""
) -> Policy:
    """One policy running ``pipelines`` side by side (their node ids are distinct)."""
    combined = Pipeline()
    for pipeline in pipelines:
        for node in pipeline.nodes:
            combined.add(node.id, node.pass_, after=node.after, candidate=node.candidate)
    batches = sorted({1, settings.batch})
    return policy_of(
        combined,
        name,
        description=description,
        targets=[settings.target],
        batch_sizes=batches,
        budget=settings.budget,
    )
