"""Attention heads and FFN neurons of BERT-family encoders (Hugging Face ``BertModel``,
all-MiniLM-L6-v2, and models with the same layer layout), physically removed.

Heads go whole (their query/key/value rows and attention-output columns); FFN neurons take
their intermediate row and output column. The hidden size stays, so embeddings, residual
adds and LayerNorms are untouched. For hand-written attention use ``prune_channels`` with
``heads``.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.size import count_macs, count_params
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import PruneRecord
from compresskit.pruning.attention import (
    EncoderLayer,
    choose,
    encoder_layers,
    ffn_scores,
    head_scores,
    keep_heads,
    keep_neurons,
    sync_config,
)
from compresskit.pruning.criteria import DATA_CRITERIA, CalibrationSet
from compresskit.pruning.schedule import FinetuneConfig, prune_in_steps, scaled_ratio
from compresskit.pruning.scope import match
from compresskit.pruning.sizing import SizeTarget


class PruneTransformerConfig(PassConfig):
    """Fractions of heads and FFN neurons to remove, and how to rank them.

    >>> PruneTransformerConfig(heads=0.25, ffn=0.5, importance="sensitivity").global_ranking
    False
    """

    heads: float = Field(default=0.25, ge=0, lt=1, description="fraction of heads removed")
    ffn: float = Field(default=0.5, ge=0, lt=1, description="fraction of FFN neurons removed")
    importance: Literal["l1", "l2", "taylor", "random", "sensitivity"] = "sensitivity"
    global_ranking: bool = Field(
        default=False, description="rank across layers (layers may end with different widths)"
    )
    round_to: int | None = Field(default=None, ge=1, description="FFN widths a multiple of this")
    ignore: list[str] = Field(
        default_factory=list, description="encoder-layer name patterns (fnmatch) left whole"
    )
    target: SizeTarget | None = None
    steps: int = Field(default=1, ge=1)
    finetune: FinetuneConfig | None = None
    calibration_batches: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _something_to_prune(self) -> PruneTransformerConfig:
        if self.heads == 0 and self.ffn == 0:
            raise ValueError("heads and ffn are both 0: give a fraction in (0, 1) for either")
        return self

    def data_needs(self) -> frozenset[DataNeed]:
        needs = {DataNeed.CALIBRATION} if self.importance in DATA_CRITERIA else set()
        return frozenset(needs | ({DataNeed.TRAIN} if self.finetune else set()))


@register_pass("prune_transformer")
class PruneTransformer(Pass[PruneTransformerConfig]):
    """Remove the least important attention heads and FFN neurons of each encoder layer.

    Example::

        PruneTransformer(PruneTransformerConfig(heads=0.5, ffn=0.5)).apply(model, ctx)
    """

    config_cls = PruneTransformerConfig
    effects = Effects(float_only=True)
    record_cls = PruneRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        layers = self._layers(model)
        before = _shapes(layers)
        params, macs = count_params(model), count_macs(model, ctx.example_inputs)
        model, steps = prune_in_steps(
            model,
            ctx,
            what="prune_transformer",
            ratio=max(config.heads, config.ffn),
            steps=config.steps,
            target=config.target,
            finetune_config=config.finetune,
            make_pruner=lambda m: self._pruner(m, ctx),
        )
        model.zero_grad(set_to_none=True)
        after = _shapes(self._layers(model))
        widths = {}
        for name, (h, _, f) in before.items():
            h2, _, f2 = after[name]
            widths[f"{name}.heads"] = [h, h2]
            widths[f"{name}.ffn"] = [f, f2]
        ctx.record(
            widths=widths,
            params=[params, count_params(model)],
            macs=[macs, count_macs(model, ctx.example_inputs)],
            steps=steps,
        )
        return model

    def _layers(self, model: nn.Module) -> list[EncoderLayer]:
        layers = encoder_layers(model)
        if not layers:
            raise CompressKitError(
                "prune_transformer: no BERT-style encoder layer (attention.self.query/key/value, "
                "intermediate.dense, output.dense) in the model; for other attention modules "
                "use prune_channels with `heads`"
            )
        ignored: set[str] = set()
        for pattern in self.config.ignore:
            ignored.update(match(model, pattern, what="prune_transformer ignore"))
        return [
            layer
            for layer in layers
            if not any(layer.name == name or layer.name.startswith(name + ".") for name in ignored)
            and not any(fnmatch.fnmatchcase(layer.name, p) for p in self.config.ignore)
        ]

    def _pruner(self, model: nn.Module, ctx: Context) -> Callable[[float], nn.Module]:
        """Score heads and neurons once on ``model``; return a function pruning a copy."""
        config = self.config
        layers = self._layers(model)
        calibration = CalibrationSet.collect(model, ctx, config.calibration_batches)
        if config.importance == "taylor":
            calibration.accumulate_gradients(model)
        args = (model, layers, config.importance, calibration, ctx.seed)
        heads = head_scores(*args) if config.heads > 0 else None
        neurons = ffn_scores(*args) if config.ffn > 0 else None
        model.zero_grad(set_to_none=True)
        base = max(config.heads, config.ffn)
        names = [layer.name for layer in layers]

        def prune(amount: float) -> nn.Module:
            pruned = copy.deepcopy(model)
            targets = {layer.name: layer for layer in encoder_layers(pruned)}
            copies = [targets[name] for name in names]
            if heads is not None:
                ratio = scaled_ratio(config.heads, base, amount)
                keep = choose(
                    heads, ratio, minimum=1, multiple=1, global_ranking=config.global_ranking
                )
                for layer, kept in zip(copies, keep, strict=True):
                    keep_heads(layer, kept)
            if neurons is not None:
                ratio = scaled_ratio(config.ffn, base, amount)
                multiple = config.round_to or 1
                keep = choose(
                    neurons,
                    ratio,
                    minimum=multiple,
                    multiple=multiple,
                    global_ranking=config.global_ranking,
                )
                for layer, kept in zip(copies, keep, strict=True):
                    keep_neurons(layer, kept)
            sync_config(pruned)
            return pruned

        return prune


def _shapes(layers: list[EncoderLayer]) -> dict[str, tuple[int, int, int]]:
    return {
        layer.name: (layer.heads, layer.head_dim, layer.ffn_in.out_features) for layer in layers
    }


__all__ = ["PruneTransformer", "PruneTransformerConfig"]
