from __future__ import annotations

from pathlib import Path

import pytest
import torch
from contract import PassContract
from prune_helpers import assert_exports, assert_reloads, context
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.passes.prune_blocks import PruneBlocks, PruneBlocksConfig
from compresskit.testing import TinyCNN, TinyTransformer, tiny_data


def prune(model, data, **config):
    ctx = context(data, model)
    return PruneBlocks(PruneBlocksConfig(**config)).apply(model, ctx), ctx.records


def test_transformer_block_is_removed_and_the_model_exports(tiny, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, records = prune(TinyTransformer(depth=3), tiny, remove=1, protect_first=1)
    assert len(model.blocks) == 2
    assert records["depth"] == [3, 2] and records["removed"][0] != "blocks.0"
    assert set(records["sensitivity"]) == {"blocks.1", "blocks.2"}  # block 0 is protected
    assert records["params"][1] < records["params"][0]
    assert_exports(model, tiny, tmp_path)
    assert_reloads(model, tiny, tmp_path, "compresskit.testing.tiny:TinyTransformer")


def test_the_block_that_changes_least_goes(tiny) -> None:
    torch.manual_seed(0)
    model = TinyTransformer(depth=4)
    with torch.no_grad():  # block 2 adds nothing to the residual stream
        model.blocks[2].attn.o.weight.zero_()
        model.blocks[2].attn.o.bias.zero_()
        model.blocks[2].fc2.weight.zero_()
        model.blocks[2].fc2.bias.zero_()
    pruned, records = prune(model, tiny, remove=1, criterion="output")
    assert records["removed"] == ["blocks.2"]
    assert records["sensitivity"]["blocks.2"] == pytest.approx(0.0, abs=1e-12)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.stage = nn.Sequential(*[_Residual(8) for _ in range(4)])
        self.extra = _Residual(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.extra(self.stage(self.stem(x)))
        return self.head(x.mean((2, 3)))


def test_residual_stack_by_macs_target(tiny) -> None:
    torch.manual_seed(0)
    pruned, records = prune(_ResNet(), tiny, target={"macs": 0.6})
    assert records["macs"][1] <= 0.6 * records["macs"][0]
    assert len(pruned.stage) < 4
    assert pruned(*tiny.example_inputs(2)).shape == (2, 4)


def test_block_outside_a_list_becomes_identity(tiny) -> None:
    pruned, records = prune(_ResNet(), tiny, blocks=["extra"], protect_first=0, remove=1)
    assert isinstance(pruned.extra, nn.Identity) and records["removed"] == ["extra"]


def test_hf_encoder_layer_is_removed_and_config_follows(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from compresskit.testing import TinyBertClassifier, tiny_text_data

    text = tiny_text_data()
    torch.manual_seed(0)
    model, records = prune(TinyBertClassifier(), text, ratio=0.5, protect_first=1)
    assert len(model.bert.encoder.layer) == 2 and model.bert.config.num_hidden_layers == 2
    assert_reloads(model, text, tmp_path, "compresskit.testing.tiny:TinyBertClassifier")


def test_bad_requests_are_errors(tiny) -> None:
    with pytest.raises(CompressKitError, match="remove fewer"):
        prune(TinyTransformer(depth=3), tiny, remove=3, protect_first=0)
    with pytest.raises(CompressKitError, match="protects all"):
        prune(TinyTransformer(depth=2), tiny, protect_first=2)
    with pytest.raises(CompressKitError, match="cannot be bypassed"):
        prune(TinyTransformer(), tiny, blocks=["embed"])
    with pytest.raises(CompressKitError, match="found no block"):
        prune(TinyCNN(), tiny)
    with pytest.raises(CompressKitError, match="matches no module"):
        prune(TinyTransformer(), tiny, blocks=["layers.*"])
    with pytest.raises(ValueError, match="one of remove, ratio, target"):
        PruneBlocksConfig(remove=1, ratio=0.5)


class TestPruneBlocksContract(PassContract):
    pass_name = "prune_blocks"
    settings = {"remove": 1}

    def subject(self, trained_tiny_cnn, tiny):
        return TinyTransformer().eval(), tiny_data()
