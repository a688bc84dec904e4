"""Structured channel pruning through torch-pruning's dependency graph.

Layers become physically smaller (no masks): every layer coupled to a pruned channel
(BatchNorm and LayerNorm, the next layer's input, residual partners, concatenations,
depthwise and grouped convs) is cut with it.

Attention is pruned by whole heads, never inside one: blocks of a known layout
(:mod:`compresskit.pruning.heads`: separate or fused q/k/v, ``nn.MultiheadAttention``
made explicit, BERT, DistilBERT, ViT and GPT-2 attention) are left to torch-pruning only
as the residual stream they read and write, and lose the same share of heads
(``attention: heads``). A Hugging Face model keeps its heads by default
(``attention: auto``): its config cannot express a head count that changes, and the run
writes the result back as a Hugging Face directory. ``heads`` gives the head count of
other custom projections (torch-pruning then removes whole heads).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.attention import explicit_attention_
from compresskit.models.hf import HuggingFaceModel
from compresskit.models.size import count_macs, count_params
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import PruneChannelsRecord
from compresskit.progress import status
from compresskit.pruning.channels import check_traceable, run_torch_pruning
from compresskit.pruning.criteria import CalibrationSet, channel_importance
from compresskit.pruning.heads import (
    AttentionBlock,
    attention_blocks,
    head_scores,
    heads_to_keep,
    keep_heads,
)
from compresskit.pruning.schedule import FinetuneConfig, prune_in_steps, scaled_ratio
from compresskit.pruning.scope import (
    classifier_name,
    ignored_modules,
    match,
    prunable_widths,
)
from compresskit.pruning.sizing import LayerEmptiedError, SizeTarget
from compresskit.pruning.tracing import describe, failing_module
from compresskit.pruning.widths import (
    Rounding,
    WidthSweepConfig,
    kept_channels,
    rounded_ratio,
    sweep_round_to,
)

__all__ = ["PruneChannels", "PruneChannelsConfig", "classifier_name", "prunable_widths"]

# Attributes of an attention module that hold its head count / total head width.
HEAD_COUNT_ATTRIBUTES = ("num_heads", "n_heads", "num_attention_heads")
HEAD_WIDTH_ATTRIBUTES = ("all_head_size", "inner_dim")
HEAD_DIM_ATTRIBUTES = ("head_dim", "attention_head_size")


class PruneChannelsConfig(PassConfig):
    """How much to prune, where, and how to rank channels.

    >>> by_ratio = PruneChannelsConfig(ratio=0.5, importance="taylor", round_to=8)
    >>> by_target = PruneChannelsConfig(target={"macs": 0.5}, steps=2, finetune={})
    >>> by_target.target.macs, by_target.steps
    (0.5, 2)
    """

    ratio: float = Field(
        default=0.5, gt=0, lt=1, description="fraction of channels removed per layer"
    )
    importance: Literal["l1", "l2", "taylor", "bn_scale", "random"] = "l2"
    global_ranking: bool = Field(
        default=False, description="rank channels across layers instead of per layer"
    )
    layer_ratios: dict[str, float] = Field(
        default_factory=dict, description="module-name pattern (fnmatch) -> its own ratio"
    )
    round_to: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default=None,
        description="keep widths a multiple of this; auto: measure candidate roundings on the "
        "target and keep the fastest within width_sweep.max_mac_change",
    )
    width_sweep: WidthSweepConfig = Field(
        default_factory=WidthSweepConfig, description="how round_to auto measures"
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="module-name patterns (fnmatch) never pruned; the classifier always is",
    )
    ignore_embeddings: bool = Field(
        default=True, description="never prune nn.Embedding and modules named *embed*"
    )
    heads: dict[str, int] = Field(
        default_factory=dict,
        description="attention projections (pattern -> head count): whole heads are removed",
    )
    target: SizeTarget | None = Field(
        default=None, description="prune until this is reached instead of by `ratio`"
    )
    steps: int = Field(default=1, ge=1, description="prune in this many steps")
    finetune: FinetuneConfig | None = Field(default=None, description="train after each step")
    calibration_batches: int = Field(default=4, ge=1, description="batches for taylor")
    attention: Literal["auto", "heads", "keep"] = Field(
        default="auto",
        description="attention blocks: remove whole heads at the ratio (heads), leave them "
        "whole (keep); auto: keep for Hugging Face models (their config cannot express "
        "pruned heads), heads otherwise",
    )

    @field_validator("ignore")
    @classmethod
    def _patterns_not_empty(cls, patterns: list[str]) -> list[str]:
        if any(not p.strip() for p in patterns):
            raise ValueError("ignore patterns must not be empty strings")
        return patterns

    @field_validator("layer_ratios")
    @classmethod
    def _ratios_in_range(cls, ratios: dict[str, float]) -> dict[str, float]:
        for pattern, ratio in ratios.items():
            if not 0 <= ratio < 1:
                raise ValueError(f"layer_ratios[{pattern!r}]: {ratio} is not in [0, 1)")
        return ratios

    @field_validator("heads")
    @classmethod
    def _heads_positive(cls, heads: dict[str, int]) -> dict[str, int]:
        for pattern, count in heads.items():
            if count < 1:
                raise ValueError(f"heads[{pattern!r}]: {count} heads; give at least 1")
        return heads

    def data_needs(self) -> frozenset[DataNeed]:
        needs = {DataNeed.CALIBRATION} if self.importance == "taylor" else set()
        return frozenset(needs | ({DataNeed.TRAIN} if self.finetune else set()))


@register_pass("prune_channels")
class PruneChannels(Pass[PruneChannelsConfig]):
    """Remove the least important output channels of conv and linear layers.

    Example::

        PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(model, ctx)
    """

    config_cls = PruneChannelsConfig
    effects = Effects(float_only=True)
    record_cls = PruneChannelsRecord

    def check(self, model: nn.Module, ctx: Context) -> None:
        probe = copy.deepcopy(model)
        if self._attention_mode(probe) == "heads":
            explicit_attention_(probe)
        ignored, _, heads = self._scope(probe)
        blocks = self._blocks(probe, ignored, heads)
        free = [
            n
            for n in prunable_widths(probe)
            if n not in ignored and n not in heads and not any(n in b.linears for b in blocks)
        ]
        if not free and not blocks and not heads:
            others = [
                f"{name} ({type(m).__name__})"
                for name, m in probe.named_modules()
                if isinstance(m, nn.RNNBase | nn.MultiheadAttention)
            ]
            if isinstance(probe, HuggingFaceModel):
                raise CompressKitError(
                    f"prune_channels: no feed-forward layout known for Hugging Face model type "
                    f"{probe.config.model_type!r}, and the other widths are fixed by its "
                    "config; set attention: heads (no Hugging Face directory then) or use "
                    "prune_transformer"
                )
            raise CompressKitError(
                "prune_channels: no conv or linear layer to prune outside the ignored ones"
                + (f"; it cannot prune {', '.join(others[:3])}" if others else "")
                + "; remove the prune node or narrow `ignore`"
            )
        check_traceable(probe, ctx.example_inputs)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        model.eval()
        mode = self._attention_mode(model)
        explicit = explicit_attention_(model) if mode == "heads" else []
        before = prunable_widths(model)
        heads_before = _head_counts(model, config.heads)
        params, macs = count_params(model), count_macs(model, ctx.example_inputs)
        ignored, _, heads = self._scope(model)  # every pattern must match before any work
        blocks = self._blocks(model, ignored, heads)
        block_heads = {b.name: b.heads for b in blocks}
        if config.round_to == "auto":
            rounding, sweep = self._sweep(model, ctx)
            ctx.record(round_to_sweep=sweep)
        else:
            rounding = Rounding(config.round_to)
        model, steps = prune_in_steps(
            model,
            ctx,
            what="prune_channels",
            ratio=config.ratio,
            steps=config.steps,
            target=config.target,
            finetune_config=config.finetune,
            make_pruner=lambda m: self._pruner(m, ctx, rounding),
        )
        model.zero_grad(set_to_none=True)
        after = prunable_widths(model)
        params_after = count_params(model)
        ctx.record(
            widths={name: [before[name], after.get(name, 0)] for name in before},
            params=[params, params_after],
            macs=[macs, count_macs(model, ctx.example_inputs)],
            steps=steps,
        )
        notes = (
            [f"rewrote {len(explicit)} nn.MultiheadAttention with explicit q/k/v/out projections"]
            if explicit
            else []
        )
        if blocks and mode == "keep":
            notes.append(
                f"kept every head of {len(blocks)} attention blocks (attention: {config.attention})"
            )
        if params_after == params:
            notes.append(
                "WARNING: nothing was removed (every prunable layer is ignored, recurrent or "
                "too narrow for the ratio); the model is unchanged"
            )
            status("prune_channels: nothing was removed; the model is unchanged", style="yellow")
        if notes:
            ctx.record(notes=notes)
        counts = dict(heads_before)
        if mode == "heads":
            counts.update(block_heads)
        if counts:
            heads_after = _head_counts(model, config.heads)
            heads_after.update(
                {b.name: b.heads for b in self._blocks(model, ignored, heads)}
                if mode == "heads"
                else {}
            )
            ctx.record(heads={k: [v, heads_after.get(k, v)] for k, v in counts.items()})
        return model

    def _attention_mode(self, model: nn.Module) -> Literal["heads", "keep"]:
        if self.config.attention == "auto":
            return "keep" if isinstance(model, HuggingFaceModel) else "heads"
        return self.config.attention

    @staticmethod
    def _blocks(
        model: nn.Module, ignored: list[str], heads: dict[str, int]
    ) -> list[AttentionBlock]:
        """Attention blocks this pass prunes by heads itself (or keeps whole)."""
        return [
            b
            for b in attention_blocks(model)
            if not any(n in heads for n in b.linears)
            and not any(
                n == i or n.startswith(i + ".") for n in (b.name, *b.linears) for i in ignored if i
            )
        ]

    def _scope(self, model: nn.Module) -> tuple[list[str], dict[str, float], dict[str, int]]:
        """Names of ignored modules, per-layer ratios and head counts (patterns resolved)."""
        config = self.config
        ignored = ignored_modules(
            model, config.ignore, defaults=config.ignore_embeddings, what="prune ignore"
        )
        if isinstance(model, HuggingFaceModel) and self._attention_mode(model) == "keep":
            # Only widths its config can express, so the result saves as an HF directory.
            ignored.update({name: model.get_submodule(name) for name in model.fixed_widths()})
        ratios = {
            name: ratio
            for pattern, ratio in config.layer_ratios.items()
            for name in match(model, pattern, what="prune layer_ratios")
        }
        heads: dict[str, int] = {}
        for pattern, count in config.heads.items():
            for name, module in match(model, pattern, what="prune heads").items():
                if not isinstance(module, nn.Linear) or module.out_features % count:
                    raise CompressKitError(
                        f"prune heads pattern {pattern!r}: {name} is not a linear projection "
                        f"whose width divides into {count} heads; match the q/k/v projections"
                    )
                heads[name] = count
        return list(ignored), ratios, heads

    def _sweep(self, model: nn.Module, ctx: Context) -> tuple[Rounding, dict[str, Any]]:
        """round_to auto: each candidate rounding pruned in one step (to the ratio or the
        size target; fine-tuning comes after, with the rounding chosen), then timed."""
        config = self.config

        def prune_at(rounding: Rounding) -> nn.Module | None:
            if rounding.up and (config.global_ranking or config.target is not None):
                return None  # the kept widths are not known before ranking
            pruned, _ = prune_in_steps(
                copy.deepcopy(model),
                ctx,
                what="prune_channels round_to sweep",
                ratio=config.ratio,
                steps=1,
                target=config.target,
                finetune_config=None,
                make_pruner=lambda m: self._pruner(m, ctx, rounding),
            )
            return pruned

        return sweep_round_to(
            prune_at,
            config=config.width_sweep,
            probe=ctx.profile_probe,
            example_inputs=ctx.example_inputs,
            dynamic_sequence=ctx.data.dynamic_sequence,
            what="prune_channels",
        )

    def _pruner(
        self, model: nn.Module, ctx: Context, rounding: Rounding
    ) -> Callable[[float], nn.Module]:
        """Collect this step's statistics on ``model``; return a function that prunes a copy
        with widths rounded as ``rounding`` says."""
        config = self.config
        if config.importance == "taylor":
            CalibrationSet.collect(model, ctx, config.calibration_batches).accumulate_gradients(
                model
            )
        ignored, ratios, heads = self._scope(model)
        blocks = self._blocks(model, ignored, heads)
        prune_heads = self._attention_mode(model) == "heads"
        criterion = "l2" if config.importance == "bn_scale" else config.importance
        scores = (
            {b.name: head_scores(model, b, criterion, ctx.seed) for b in blocks}
            if prune_heads
            else {}
        )
        # torch-pruning never cuts inside an attention block (it cannot follow fused or
        # einsum heads): its projections are left to the head pruning below.
        inside = [n for b in blocks for n in b.linears] + [
            n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        ]

        def prune(amount: float) -> nn.Module:
            layer_ratios = {
                n: scaled_ratio(r, config.ratio, amount) if r > 0 else 0.0
                for n, r in ratios.items()
            }
            skip = {*ignored, *inside, *heads}  # torch-pruning does not cut their widths
            if not config.global_ranking:
                _check_not_emptied(model, skip, layer_ratios, amount, rounding)
            if rounding.up:  # every layer's ratio set so that its kept width rounds up
                layer_ratios = {
                    name: rounded_ratio(width, layer_ratios.get(name, amount), rounding)
                    for name, width in prunable_widths(model).items()
                    if name not in skip
                }
            pruned = _copy_with_gradients(model)
            modules = dict(pruned.named_modules())
            torch.manual_seed(ctx.seed)
            pruner = run_torch_pruning(
                pruned,
                ctx.example_inputs,
                importance=channel_importance(config.importance),
                pruning_ratio=amount,
                pruning_ratio_dict={modules[n]: r for n, r in layer_ratios.items()},
                global_pruning=config.global_ranking,
                ignored_layers=[modules[n] for n in [*ignored, *inside]],
                round_to=rounding.round_to,
                num_heads={modules[n]: c for n, c in heads.items()},
                prune_num_heads=bool(heads),
                prune_head_dims=not heads,
                # torch-pruning removes ceil(ratio * heads): always leave one head
                head_pruning_ratio=min([amount] + [(c - 1) / c for c in heads.values()]),
            )
            if heads:
                _fix_head_attributes(pruned, {n: pruner.num_heads[modules[n]] for n in heads})
            for block in blocks if prune_heads else []:
                keep_heads(pruned, block, heads_to_keep(scores[block.name], amount))
            _check_result(pruned, ctx.example_inputs, amount)
            return pruned

        return prune


def _check_not_emptied(
    model: nn.Module,
    skip: set[str],
    layer_ratios: dict[str, float],
    amount: float,
    rounding: Rounding,
) -> None:
    """torch-pruning silently skips a layer it would empty; say so instead (a layer
    prunes at its own ratio in ``layer_ratios``, else at ``amount``)."""
    for name, width in prunable_widths(model).items():
        if name in skip:
            continue
        ratio = layer_ratios.get(name, amount)
        if kept_channels(width, ratio, rounding) <= 0:
            raise LayerEmptiedError(
                f"prune_channels: ratio {ratio:.2f}"
                + (f" with round_to {rounding.round_to}" if rounding.round_to else "")
                + f" would remove every channel of {name} ({width} wide); lower the ratio "
                "or ignore that layer"
            )


def _copy_with_gradients(model: nn.Module) -> nn.Module:
    """A deep copy that keeps each parameter's ``.grad`` (deepcopy drops them)."""
    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters(), strict=True):
        if source.grad is not None:
            target.grad = source.grad.clone()
    return pruned


def _check_result(model: nn.Module, example_inputs: tuple, amount: float) -> None:
    emptied = [name for name, width in prunable_widths(model).items() if width == 0]
    if emptied:
        raise LayerEmptiedError(
            f"prune_channels: ratio {amount:.2f} would remove every channel of {emptied[0]}; "
            "lower the ratio (or round_to) or ignore that layer"
        )
    failure = failing_module(model, example_inputs)
    if failure is not None:
        where = failure.module or "the top-level forward"
        fix = (
            f"add {failure.producer!r} (the layer feeding it) to `ignore`"
            if failure.producer
            else f"add {failure.module!r} to `ignore`"
        )
        raise CompressKitError(
            f"prune_channels: the pruned model fails in {where} ({describe(failure.error)}); "
            f"torch-pruning could not follow that module's shapes: {fix}"
        )


def _head_counts(model: nn.Module, patterns: dict[str, int]) -> dict[str, int]:
    counts = {}
    for pattern in patterns:
        for name in match(model, pattern, what="prune heads"):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            for attr in HEAD_COUNT_ATTRIBUTES:
                if isinstance(getattr(parent, attr, None), int):
                    counts[name.rpartition(".")[0]] = int(getattr(parent, attr))
    return counts


def _fix_head_attributes(model: nn.Module, new_heads: dict[str, int]) -> None:
    """Tell each attention module its new head count (and total head width)."""
    for name, heads in new_heads.items():
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        for attr in HEAD_COUNT_ATTRIBUTES:
            if isinstance(getattr(parent, attr, None), int):
                setattr(parent, attr, heads)
        head_dim = next(
            (getattr(parent, a) for a in HEAD_DIM_ATTRIBUTES if hasattr(parent, a)), None
        )
        for attr in HEAD_WIDTH_ATTRIBUTES:
            if isinstance(getattr(parent, attr, None), int) and isinstance(head_dim, int):
                setattr(parent, attr, heads * head_dim)
