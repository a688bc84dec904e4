"""Depth and width pruning of decoder language models (Llama incl. grouped-query
attention, Qwen2, Mistral, GPT-2 layouts; see :mod:`compresskit.pruning.decoder`).

Both passes keep a standard Hugging Face config: whole layers go (``num_hidden_layers``),
and every layer keeps the same number of query heads, KV heads, MLP neurons and hidden
channels, so ``from_pretrained`` reloads the result and standard exporters take it.

Example::

    PruneDecoderDepth(PruneDecoderDepthConfig(remove=6)).apply(model, ctx)
    PruneDecoderWidth(PruneDecoderWidthConfig(heads=0.34, mlp=0.5)).apply(model, ctx)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.size import count_params
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import DecoderDepthRecord, DecoderWidthRecord
from compresskit.pruning.criteria import calibration_batches
from compresskit.pruning.decoder import DecoderStack, find_decoder, layer_importance, remove_layers
from compresskit.pruning.decoder_width import (
    attention_shape,
    check_head_targets,
    choose_heads,
    keep_hidden,
    keep_neurons,
    keep_query_heads,
    top_indices,
    width_scores,
)


class PruneDecoderDepthConfig(PassConfig):
    """How many decoder layers to remove, and how to rank them.

    >>> PruneDecoderDepthConfig(remove=6, criterion="perplexity").protect_first
    1
    """

    remove: int | None = Field(default=None, ge=1, description="number of layers removed")
    ratio: float | None = Field(
        default=None, gt=0, lt=1, description="fraction of the layers removed"
    )
    criterion: Literal["hidden", "perplexity"] = Field(
        default="perplexity",
        description="rank by the calibration LM-loss increase when a layer is bypassed "
        "(perplexity), or by how much a layer changes its hidden state (hidden, one pass)",
    )
    protect_first: int = Field(default=1, ge=0, description="never remove the first N layers")
    protect_last: int = Field(default=1, ge=0, description="never remove the last N layers")
    calibration_batches: int = Field(default=4, ge=1)
    batch_size: int = Field(default=8, ge=1, description="calibration windows per batch")

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION})

    @model_validator(mode="after")
    def _one_amount(self) -> PruneDecoderDepthConfig:
        given = [k for k in ("remove", "ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of remove, ratio (got {', '.join(given) or 'none'})"
            )
        return self


@register_pass("prune_decoder_depth")
class PruneDecoderDepth(Pass[PruneDecoderDepthConfig]):
    """Remove the decoder layers whose absence the calibration data notices least."""

    config_cls = PruneDecoderDepthConfig
    effects = Effects(float_only=True)
    record_cls = DecoderDepthRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        stack = find_decoder(model, what="prune_decoder_depth")
        total = len(stack.layers)
        count = config.remove or max(1, round((config.ratio or 0) * total))
        candidates = list(range(config.protect_first, total - config.protect_last))
        if count > len(candidates):
            raise CompressKitError(
                f"prune_decoder_depth: removing {count} of {total} layers, but only "
                f"{len(candidates)} are not protected (protect_first {config.protect_first}, "
                f"protect_last {config.protect_last}); remove fewer"
            )
        batches = calibration_batches(ctx, config.calibration_batches, config.batch_size)
        scores = layer_importance(model, stack, batches, config.criterion)
        ranked = sorted(candidates, key=lambda i: scores[i])
        removed = sorted(ranked[:count])
        params = count_params(model)
        remove_layers(stack, removed)
        ctx.record(
            importance={str(i): round(s, 6) for i, s in enumerate(scores)},
            criterion=config.criterion,
            removed=removed,
            depth=[total, total - count],
            params=[params, count_params(model)],
        )
        return model


Grouping = Literal["query", "kv"]


class PruneDecoderWidthConfig(PassConfig):
    """Widths to remove from every layer: fractions (``heads``, ``mlp``, ``hidden``) or
    absolute sizes (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
    ``hidden_size``), and how units are ranked.

    ``heads`` with ``head_grouping: query`` removes that fraction of the query heads of
    every KV group; with ``kv`` it removes that fraction of the KV groups, each with its
    query heads.

    >>> PruneDecoderWidthConfig(heads=0.34, mlp=0.25, importance="activation").head_grouping
    'query'
    """

    heads: float = Field(default=0, ge=0, lt=1, description="fraction of heads removed")
    head_grouping: Grouping = Field(
        default="query",
        description="query: prune query heads inside each KV group (same count per group); "
        "kv: prune whole KV groups with their query heads",
    )
    mlp: float = Field(default=0, ge=0, lt=1, description="fraction of MLP neurons removed")
    hidden: float = Field(
        default=0, ge=0, lt=1, description="fraction of hidden channels removed (Minitron)"
    )
    num_attention_heads: int | None = Field(default=None, ge=1)
    num_key_value_heads: int | None = Field(default=None, ge=1)
    intermediate_size: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=1)
    round_to: int | None = Field(
        default=None, ge=1, description="MLP and hidden widths a multiple of this"
    )
    importance: Literal["magnitude", "activation"] = "activation"
    calibration_batches: int = Field(default=4, ge=1)
    batch_size: int = Field(default=8, ge=1, description="calibration windows per batch")

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION} if self.importance == "activation" else ())

    @model_validator(mode="after")
    def _consistent(self) -> PruneDecoderWidthConfig:
        pairs = [
            ("heads", "num_attention_heads"),
            ("heads", "num_key_value_heads"),
            ("mlp", "intermediate_size"),
            ("hidden", "hidden_size"),
        ]
        for fraction, size in pairs:
            if getattr(self, fraction) > 0 and getattr(self, size) is not None:
                raise ValueError(f"give {fraction} or {size}, not both")
        if not any(getattr(self, f) for f, _ in pairs) and not any(
            getattr(self, s) is not None for _, s in pairs
        ):
            raise ValueError("nothing to prune: give heads, mlp or hidden (or target sizes)")
        return self


def _fraction_kept(size: int, fraction: float, multiple: int) -> int:
    keep = size - round(size * fraction)
    if multiple > 1:
        keep = max(multiple, round(keep / multiple) * multiple)
    return min(keep, size)


@register_pass("prune_decoder_width")
class PruneDecoderWidth(Pass[PruneDecoderWidthConfig]):
    """Remove the least important heads, MLP neurons and hidden channels of a decoder."""

    config_cls = PruneDecoderWidthConfig
    effects = Effects(float_only=True)
    record_cls = DecoderWidthRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        stack = find_decoder(model, what="prune_decoder_width")
        heads = self._head_targets(stack)
        mlp, hidden = self._mlp_target(stack), self._hidden_target(stack)
        batches = (
            calibration_batches(ctx, config.calibration_batches, config.batch_size)
            if config.importance == "activation"
            else []
        )
        scores = width_scores(
            model,
            stack,
            config.importance,
            batches,
            heads=heads is not None,
            mlp=mlp is not None,
            hidden=hidden is not None,
        )
        before, params = self._widths(stack), count_params(model)
        if heads is not None and scores.heads is not None:
            _, kv, _ = attention_shape(stack)
            per_group, kv_keep = heads
            keep_query_heads(
                stack, choose_heads(scores.heads, kv_heads=kv, per_group=per_group, kv_keep=kv_keep)
            )
        if mlp is not None and scores.neurons is not None:
            keep_neurons(stack, [top_indices(s, mlp) for s in scores.neurons])
        if hidden is not None and scores.hidden is not None:
            keep_hidden(stack, top_indices(scores.hidden, hidden))
        after = self._widths(stack)
        ctx.record(
            widths={name: [before[name], after[name]] for name in before},
            importance=config.importance,
            params=[params, count_params(model)],
        )
        return model

    def _head_targets(self, stack: DecoderStack) -> tuple[int, int] | None:
        """(query heads per group, KV heads) to keep, or None to leave attention alone."""
        config = self.config
        if (
            config.heads == 0
            and config.num_attention_heads is None
            and (config.num_key_value_heads is None)
        ):
            return None
        if stack.layout == "gpt2":
            raise CompressKitError(
                "prune_decoder_width: GPT-2's config derives the head size from n_embd / n_head, "
                "so heads cannot be removed with a standard config; prune mlp or depth"
            )
        q, kv, _ = attention_shape(stack)
        per_group = q // kv
        if config.heads > 0:
            if config.head_grouping == "kv":
                kv_keep = kv - round(kv * config.heads)
                target_q, target_kv = per_group * kv_keep, kv_keep
            else:
                target_q, target_kv = (per_group - round(per_group * config.heads)) * kv, kv
            if (target_q, target_kv) == (q, kv) or target_kv == 0 or target_q == 0:
                unit = "KV groups" if config.head_grouping == "kv" else "query heads per group"
                size = kv if config.head_grouping == "kv" else per_group
                raise CompressKitError(
                    f"prune_decoder_width: heads {config.heads} of {size} {unit} rounds to "
                    f"{'none' if target_q else 'all'}; give a fraction that removes between 1 "
                    f"and {size - 1} of them"
                )
        else:
            target_kv = config.num_key_value_heads or kv
            target_q = config.num_attention_heads or per_group * target_kv
        keep = check_head_targets(
            q, kv, num_attention_heads=target_q, num_key_value_heads=target_kv
        )
        return keep, target_kv

    def _mlp_target(self, stack: DecoderStack) -> int | None:
        size = int(
            stack.config.n_inner or 4 * stack.config.hidden_size
            if stack.layout == "gpt2"
            else stack.config.intermediate_size
        )
        return self._target("mlp", "intermediate_size", size)

    def _hidden_target(self, stack: DecoderStack) -> int | None:
        return self._target("hidden", "hidden_size", int(stack.config.hidden_size))

    def _target(self, fraction_name: str, size_name: str, size: int) -> int | None:
        fraction, absolute = getattr(self.config, fraction_name), getattr(self.config, size_name)
        if fraction == 0 and absolute is None:
            return None
        keep = absolute or _fraction_kept(size, fraction, self.config.round_to or 1)
        if not 1 <= keep <= size:
            raise CompressKitError(
                f"prune_decoder_width: {size_name} {keep} is not in 1..{size} (the model's)"
            )
        return keep

    @staticmethod
    def _widths(stack: DecoderStack) -> dict[str, Any]:
        config = stack.config
        widths = {
            "num_hidden_layers": len(stack.layers),
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
        }
        if stack.layout == "gpt2":
            widths["n_inner"] = stack.config.n_inner or 4 * config.hidden_size
        else:
            widths["num_key_value_heads"] = getattr(config, "num_key_value_heads", None)
            widths["intermediate_size"] = config.intermediate_size
        return widths


__all__ = [
    "PruneDecoderDepth",
    "PruneDecoderDepthConfig",
    "PruneDecoderWidth",
    "PruneDecoderWidthConfig",
]
