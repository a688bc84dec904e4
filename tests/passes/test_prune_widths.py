"""round_to auto: candidate roundings of the pruned widths are measured on the target and
the fastest within the MAC budget wins. The probe here implements compresskit's
ProfileProbe protocol from the widths it is handed (fast at multiples of 8), so the
choice is checked without timing."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from compresskit.context import Context, ModelCost
from compresskit.errors import CompressKitError
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.passes.records import PruneChannelsRecord
from compresskit.testing import TinyCNN


class WidthProbe:
    """1 ms per conv whose width is a multiple of 8, 3 ms per other conv."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, models, example_inputs, *, target, batch, seconds, dynamic_sequence):
        self.batches.append(batch)
        return [
            ModelCost(
                sum(
                    1.0 if m.out_channels % 8 == 0 else 3.0
                    for m in model.modules()
                    if isinstance(m, nn.Conv2d)
                )
            )
            for model in models
        ]


def _prune(tiny, probe, ratio=0.3, **config):
    torch.manual_seed(0)
    model = TinyCNN(width=16).eval()
    ctx = Context(
        data=tiny, teacher=None, example_inputs=tiny.example_inputs(2), profile_probe=probe
    )
    pruned = PruneChannels(PruneChannelsConfig(ratio=ratio, round_to="auto", **config)).apply(
        model, ctx
    )
    return pruned, ctx.records


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_the_sweep_picks_the_rounding_the_probe_measures_fastest(tiny) -> None:
    probe = WidthProbe()
    pruned, records = _prune(
        tiny, probe, width_sweep={"candidates": [1, 4, 8], "max_mac_change": 0.6, "batch": 8}
    )
    sweep = records["round_to_sweep"]
    assert sweep["chosen"] == 8 and probe.batches == [8]
    assert all(width % 8 == 0 for width in _conv_widths(pruned))
    measured = {c["round_to"]: c for c in sweep["candidates"] if not c["up"]}
    assert measured[8]["p50_ms"] == 2.0 and measured[1]["p50_ms"] > 2.0
    assert measured[1]["macs"] > measured[8]["macs"]
    blocks = PruneChannelsRecord.from_facts(records, where="test").summary()
    assert any(getattr(b, "title", "") == "round_to sweep on cpu-ort b8" for b in blocks)


def test_a_rounding_that_costs_too_many_macs_is_not_chosen(tiny) -> None:
    sweep_config = {"candidates": [1, 8], "max_mac_change": 0.05, "round_up": False}
    pruned, records = _prune(tiny, WidthProbe(), width_sweep=sweep_config)
    sweep = records["round_to_sweep"]
    measured = {c["round_to"]: c for c in sweep["candidates"]}
    assert sweep["chosen"] == 1 and not measured[8]["eligible"] and measured[1]["eligible"]
    assert any(width % 8 for width in _conv_widths(pruned))


def test_rounding_up_keeps_the_capacity_that_rounding_down_would_lose(tiny) -> None:
    # At ratio 0.6 the 16-wide conv keeps 6 channels (down to 0 empties it, up gives 8) and
    # the 32-wide one 12 (up: 16): the fast widths, with more MACs than the unrounded ones.
    pruned, records = _prune(
        tiny, WidthProbe(), ratio=0.6, width_sweep={"candidates": [1, 8], "max_mac_change": 0.05}
    )
    sweep = records["round_to_sweep"]
    measured = {(c["round_to"], c["up"]): c for c in sweep["candidates"]}
    assert (sweep["chosen"], sweep["chosen_up"]) == (8, True)
    assert "every channel" in measured[(8, False)]["note"]
    assert measured[(8, True)]["macs"] > measured[(1, False)]["macs"]
    assert _conv_widths(pruned) == [8, 16]
    lines = PruneChannelsRecord.from_facts(records, where="test").summary()
    assert any(getattr(b, "text", "").startswith("round_to 8 up:") for b in lines)


def test_rounding_up_is_skipped_where_widths_are_ranked_globally(tiny) -> None:
    _, records = _prune(tiny, WidthProbe(), global_ranking=True, width_sweep={"candidates": [1, 8]})
    notes = [c.get("note") for c in records["round_to_sweep"]["candidates"] if c["up"]]
    assert notes == ["needs per-layer ratios (no global ranking or size target)"]


def test_round_to_auto_needs_a_probe_and_valid_candidates(tiny) -> None:
    with pytest.raises(CompressKitError, match="round_to auto needs a profile probe"):
        _prune(tiny, None)
    for bad in ({"round_to": 0}, {"round_to": "8"}, {"width_sweep": {"candidates": [0, 8]}}):
        with pytest.raises(ValidationError):
            PruneChannelsConfig(**bad)
