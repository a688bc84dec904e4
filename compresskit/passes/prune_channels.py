"""Structured channel pruning through torch-pruning's dependency graph.

Layers become physically smaller (no masks): every layer coupled to a pruned channel
(BatchNorm, the next conv's input, residual partners) is cut with it.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.passes.base import Pass, PassConfig, Stage, register_pass


class PruneChannelsConfig(PassConfig):
    """How much to prune and how to rank channels."""

    ratio: float = Field(default=0.5, gt=0, lt=1, description="fraction of channels removed")
    importance: Literal["l1", "l2", "random"] = "l2"
    global_ranking: bool = Field(
        default=False, description="rank channels across layers instead of per layer"
    )
    round_to: int | None = Field(default=None, ge=1, description="keep widths a multiple of this")
    ignore: list[str] = Field(
        default_factory=list,
        description="module-name patterns (fnmatch) never pruned; the classifier always is",
    )

    @field_validator("ignore")
    @classmethod
    def _patterns_not_empty(cls, patterns: list[str]) -> list[str]:
        if any(not p.strip() for p in patterns):
            raise ValueError("ignore patterns must not be empty strings")
        return patterns


def prunable_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv and linear layer, by module name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The last linear layer: its outputs are the classes and must keep their count."""
    linears: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def ignored_modules(model: nn.Module, patterns: list[str]) -> list[nn.Module]:
    """Modules matching any pattern (each pattern must match something) plus the head."""
    named = dict(model.named_modules())
    ignored = list(classifier_layers(model))
    for pattern in patterns:
        matches = [m for name, m in named.items() if name and fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise CompressKitError(
                f"prune ignore pattern {pattern!r} matches no module; module names look like "
                f"{', '.join(list(n for n in named if n)[:4])}"
            )
        ignored.extend(matches)
    return ignored


@register_pass("prune_channels")
class PruneChannels(Pass[PruneChannelsConfig]):
    """Remove the least important output channels of conv and linear layers.

    >>> PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(model, ctx)   # doctest: +SKIP
    """

    config_cls = PruneChannelsConfig
    stage = Stage.STRUCTURE

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        import torch_pruning as tp

        config = self.config
        importance = {
            "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "random": tp.importance.RandomImportance,
        }[config.importance]()
        before = prunable_widths(model)
        model.eval()
        torch.manual_seed(ctx.seed)
        # torch-pruning traces the graph through autograd, so gradients must be on.
        with torch.enable_grad():
            try:
                pruner = tp.pruner.MetaPruner(
                    model,
                    example_inputs=ctx.example_inputs,
                    importance=importance,
                    pruning_ratio=config.ratio,
                    global_pruning=config.global_ranking,
                    ignored_layers=ignored_modules(model, config.ignore),
                    round_to=config.round_to,
                )
                pruner.step()
            except CompressKitError:
                raise
            except Exception as error:
                raise CompressKitError(
                    f"prune_channels: torch-pruning could not trace or prune the model "
                    f"({type(error).__name__}: {error}); add the module that fails to "
                    "`ignore`"
                ) from None
        after = prunable_widths(model)
        emptied = [name for name, width in after.items() if width == 0]
        if emptied:
            raise CompressKitError(
                f"prune_channels: ratio {config.ratio} removed every channel of {emptied[0]}; "
                "lower the ratio or ignore that layer"
            )
        ctx.record(widths={name: [before[name], after.get(name, 0)] for name in before})
        return model
