"""Depth pruning: remove whole residual blocks or transformer layers, the ones whose
bypass costs least on calibration data (loss increase, or output change)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.size import count_macs, count_params
from compresskit.passes.base import DataNeed, Effects, Pass, PassConfig, register_pass
from compresskit.passes.records import PruneBlocksRecord
from compresskit.pruning.criteria import CalibrationSet
from compresskit.pruning.depth import Block, block_sensitivity, find_blocks, remove_blocks
from compresskit.pruning.schedule import FinetuneConfig, finetune
from compresskit.pruning.sizing import Meter, SizeTarget


class PruneBlocksConfig(PassConfig):
    """How many blocks to remove (a count, a fraction, or a target), and which may go.

    >>> by_count = PruneBlocksConfig(remove=2, protect_first=1)
    >>> by_latency = PruneBlocksConfig(target={"latency_ms": 2.0})
    >>> by_latency.target.latency_ms, by_latency.target.export_target
    (2.0, 'cpu-ort')
    """

    remove: int | None = Field(default=None, ge=1, description="number of blocks removed")
    ratio: float | None = Field(
        default=None, gt=0, lt=1, description="fraction of the removable blocks removed"
    )
    target: SizeTarget | None = Field(
        default=None, description="remove blocks, least sensitive first, until reached"
    )
    blocks: list[str] = Field(
        default_factory=list,
        description="block name patterns; default: encoder layers, or shape-keeping members "
        "of ModuleList/Sequential containers",
    )
    protect_first: int = Field(default=1, ge=0, description="never remove the first N blocks")
    criterion: Literal["loss", "output"] = Field(
        default="loss", description="rank by calibration loss increase or output change"
    )
    calibration_batches: int = Field(default=4, ge=1)
    finetune: FinetuneConfig | None = None

    @model_validator(mode="after")
    def _one_amount(self) -> PruneBlocksConfig:
        given = [k for k in ("remove", "ratio", "target") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of remove, ratio, target (got {', '.join(given)})")
        return self

    def data_needs(self) -> frozenset[DataNeed]:
        return frozenset({DataNeed.CALIBRATION} | ({DataNeed.TRAIN} if self.finetune else set()))


@register_pass("prune_blocks")
class PruneBlocks(Pass[PruneBlocksConfig]):
    """Remove the blocks whose absence the calibration data notices least.

    Example::

        PruneBlocks(PruneBlocksConfig(remove=1)).apply(model, ctx)
    """

    config_cls = PruneBlocksConfig
    effects = Effects(float_only=True)
    record_cls = PruneBlocksRecord

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        config = self.config
        model.eval()
        blocks = find_blocks(model, ctx.example_inputs, config.blocks)
        if not blocks:
            raise CompressKitError(
                "prune_blocks: found no block that keeps its input's shape; name the residual "
                "blocks with `blocks` (module-name patterns)"
            )
        candidates = blocks[config.protect_first :]
        if not candidates:
            raise CompressKitError(
                f"prune_blocks: protect_first={config.protect_first} protects all "
                f"{len(blocks)} blocks; lower it"
            )
        calibration = CalibrationSet.collect(model, ctx, config.calibration_batches)
        scores = block_sensitivity(model, candidates, calibration, config.criterion)
        order = [b for _, b in sorted(zip(scores, candidates, strict=True), key=lambda t: t[0])]
        params, macs = count_params(model), count_macs(model, ctx.example_inputs)
        records: dict[str, Any] = {}
        if config.target is not None:
            model, count, records = self._to_target(model, ctx, order)
        else:
            count = config.remove or 1
            if config.ratio is not None:
                count = max(1, round(config.ratio * len(candidates)))
            if count > len(candidates) or (not config.blocks and count >= len(blocks)):
                raise CompressKitError(
                    f"prune_blocks: removing {count} of {len(blocks)} blocks "
                    f"({len(candidates)} removable) would leave none or touch protected ones; "
                    "remove fewer"
                )
            remove_blocks(model, [b.name for b in order[:count]])
        if config.finetune is not None:
            records["finetune"] = finetune(model, ctx, config.finetune, what="prune_blocks")
        ctx.record(
            sensitivity={b.name: round(s, 6) for b, s in zip(candidates, scores, strict=True)},
            removed=[b.name for b in order[:count]],
            depth=[len(blocks), len(blocks) - count],
            params=[params, count_params(model)],
            macs=[macs, count_macs(model, ctx.example_inputs)],
            **records,
        )
        return model

    def _to_target(
        self, model: nn.Module, ctx: Context, order: list[Block]
    ) -> tuple[nn.Module, int, dict]:
        target = self.config.target
        assert target is not None
        meter = Meter(target, ctx.example_inputs, ctx.data.dynamic_sequence, ctx.latency_probe)
        start = meter(model)
        goal = meter.goal(start)
        tried = []
        value = start
        for count in range(1, len(order) + 1):
            candidate = copy.deepcopy(model)
            remove_blocks(candidate, [b.name for b in order[:count]])
            value = meter(candidate)
            tried.append([count, value])
            if value <= goal:
                return candidate, count, {"steps": [{target.kind: start}, {"tried": tried}]}
        raise CompressKitError(
            f"prune_blocks: removing all {len(order)} removable blocks still gives "
            f"{value:,.3f} for {target.describe()}; relax the target or prune channels too"
        )
