"""Standard PyTorch layers users bring: pruned and int8 where compresskit can, refused in
seconds with the layer, its type and the option that gets past it where it cannot."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.evaluation import evaluate_models
from compresskit.models.attention import ExplicitAttention, explicit_attention_
from compresskit.models.checkpoint import restore_model, save_model
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.quantization.dynamic import DynamicQuantLinear
from compresskit.quantization.modules import QuantLinear
from compresskit.testing import tiny_data
from compresskit.testing.layers import (
    TinyConv1d,
    TinyEncoderClassifier,
    TinyFusedViT,
    TinyRecurrent,
    TinyTiedTokens,
)
from compresskit.testing.tiny import tiny_token_data


def _ctx(data) -> Context:
    return Context(data=data, teacher=None, example_inputs=data.example_inputs(batch_size=2))


def _prune(model: nn.Module, data) -> tuple[nn.Module, dict]:
    ctx = _ctx(data)
    node = PruneChannels(PruneChannelsConfig(ratio=0.5, round_to=8))
    node.check(model, ctx)
    return node.apply(copy.deepcopy(model), ctx), ctx.records


def _exported(models: list[tuple[str, nn.Module]], data, tmp_path: Path):
    entries, _ = evaluate_models(
        [(name, model, []) for name, model in models], data, tmp_path, metadata={}
    )
    return entries


@pytest.mark.parametrize("build", [TinyEncoderClassifier, TinyFusedViT])
def test_attention_classifiers_prune_by_heads_and_go_int8(build, tmp_path: Path) -> None:
    data = tiny_data()
    torch.manual_seed(0)
    model = build().eval()
    pruned, records = _prune(model, data)
    assert records["heads"] and all(after == 2 for _, after in records["heads"].values())
    assert records["params"][1] < records["params"][0]
    x = data.example_inputs(batch_size=3)[0]
    assert pruned(x).shape == (3, 4)
    ctx = _ctx(data)
    static = Quantize(QuantizeConfig()).apply(copy.deepcopy(pruned), ctx)
    dynamic = QuantizeDynamic(QuantizeDynamicConfig()).apply(copy.deepcopy(model), _ctx(data))
    assert sum(isinstance(m, QuantLinear) for m in static.modules()) >= 8
    assert sum(isinstance(m, DynamicQuantLinear) for m in dynamic.modules()) >= 8
    if build is TinyEncoderClassifier:  # the q/k/v/out projections are int8 Linear layers
        layer = static.encoder.layers[0].self_attn
        assert isinstance(layer, ExplicitAttention) and isinstance(layer.q_proj, QuantLinear)
    entries = _exported(
        [("baseline", model), ("pruned-int8", static), ("dynamic", dynamic)], data, tmp_path
    )
    for entry in entries[1:]:
        assert entry.parity is not None and entry.parity.ok, (entry.name, entry.parity)
        assert entry.int8_coverage is not None and entry.int8_coverage > 0.5, entry.name


def test_multihead_attention_made_explicit_computes_the_same() -> None:
    torch.manual_seed(0)
    model = TinyEncoderClassifier().eval()
    x = tiny_data().example_inputs(batch_size=4)[0]
    explicit = copy.deepcopy(model)
    assert explicit_attention_(explicit) == [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
    ]
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), model(x), atol=1e-5, rtol=1e-4)
    # Saved with its heads pruned, restored from a fresh build (nn.MultiheadAttention).
    pruned, _ = _prune(model, tiny_data())
    save_model(pruned, Path("pruned.pt"), source={"kind": "python"})
    restored = restore_model(torch.load("pruned.pt", weights_only=True), TinyEncoderClassifier)
    assert restored.encoder.layers[1].self_attn.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(restored(x), pruned(x))


def test_bias_kv_attention_is_refused_naming_the_option() -> None:
    model = TinyEncoderClassifier()
    layer = model.encoder.layers[0]
    layer.self_attn = nn.MultiheadAttention(32, 4, add_bias_kv=True, batch_first=True)
    with pytest.raises(
        CompressKitError,
        match="layer 'encoder.layers.0.self_attn' \\(MultiheadAttention\\).*exclude",
    ):
        Quantize(QuantizeConfig()).apply(model, _ctx(tiny_data()))


def test_recurrent_and_conv1d_layers_are_refused_up_front() -> None:
    data = tiny_data()
    lstm, gru, conv = TinyRecurrent(nn.LSTM), TinyRecurrent(nn.GRU), TinyConv1d()
    cases = [
        (Quantize(QuantizeConfig()), lstm, "layer 'rnn' is a LSTM.*add 'rnn' to exclude"),
        (
            QuantizeDynamic(QuantizeDynamicConfig()),
            gru,
            "layer 'rnn' is a GRU.*add 'rnn' to exclude",
        ),
        (Quantize(QuantizeConfig()), conv, "layer 'conv' is a Conv1d.*add 'conv' to exclude"),
        (
            PruneChannels(PruneChannelsConfig()),
            gru,
            "no conv or linear layer to prune.*rnn \\(GRU\\)",
        ),
    ]
    for node, model, message in cases:
        with pytest.raises(CompressKitError, match=message):
            node.check(model, _ctx(data))
    # Excluded, they stay float and the rest is quantized.
    node = QuantizeDynamic(QuantizeDynamicConfig(exclude=["rnn"]))
    node.check(gru, _ctx(data))
    assert isinstance(node.apply(copy.deepcopy(gru), _ctx(data)).head, DynamicQuantLinear)


def test_pruning_that_removes_nothing_says_so() -> None:
    model = TinyRecurrent(nn.GRU)
    model.proj = nn.Linear(8, 8)  # prunable, but ignored below
    ctx = _ctx(tiny_data())
    PruneChannels(PruneChannelsConfig(ignore=["head"])).apply(model, ctx)
    assert any("nothing was removed" in note for note in ctx.records["notes"])


def test_tied_embeddings_stay_tied() -> None:
    data = tiny_token_data()
    torch.manual_seed(0)
    model = TinyTiedTokens().eval()
    pruned, records = _prune(model, data)
    assert records["widths"]["fc1"] == [32, 16] and records["widths"]["fc2"] == [16, 16]
    assert pruned.out.weight is pruned.embed.weight
    dynamic = QuantizeDynamic(QuantizeDynamicConfig()).apply(copy.deepcopy(pruned), _ctx(data))
    assert dynamic.out.weight is dynamic.embed.weight
    save_model(pruned, Path("tied.pt"), source={"kind": "python"})
    restored = restore_model(torch.load("tied.pt", weights_only=True), TinyTiedTokens)
    assert restored.out.weight is restored.embed.weight


def test_quantize_checks_an_encoder_as_the_user_built_it() -> None:
    data = tiny_data()
    Quantize(QuantizeConfig()).check(TinyEncoderClassifier(), _ctx(data))  # no refusal
    QuantizeDynamic(QuantizeDynamicConfig()).check(TinyEncoderClassifier(), _ctx(data))
