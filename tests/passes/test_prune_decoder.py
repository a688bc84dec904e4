from __future__ import annotations

from pathlib import Path

import pytest
import torch
from contract import PassContract

from compresskit.context import Context
from compresskit.errors import CompressKitError
from compresskit.models.causal_lm import load_causal_lm, save_causal_lm
from compresskit.passes.prune_decoder import (
    PruneDecoderDepth,
    PruneDecoderDepthConfig,
    PruneDecoderWidth,
    PruneDecoderWidthConfig,
)
from compresskit.pruning.decoder import find_decoder
from compresskit.testing.tiny_lm import (
    TINY_LMS,
    tiny_gpt2,
    tiny_llama,
    tiny_lm_bundle,
    tiny_qwen2,
    tiny_tokenizer,
)

IDS = torch.randint(2, 100, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def bundle():
    return tiny_lm_bundle(tiny_tokenizer(), seq_len=16)


def ctx_for(bundle) -> Context:
    return Context(data=bundle, teacher=None, example_inputs=bundle.example_inputs(2))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def assert_reloads(model, tmp_path: Path) -> None:
    saved = save_causal_lm(model, tiny_tokenizer(), tmp_path / "pruned")
    reloaded = load_causal_lm(saved).model
    torch.testing.assert_close(logits(reloaded), logits(model))
    generated = reloaded.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=1)
    assert generated.shape == (1, 7)


def _silence_layer(model, index: int) -> None:
    """Zero what a layer writes to the residual stream: it becomes the identity."""
    layer = find_decoder(model).layers[index]
    with torch.no_grad():
        if hasattr(layer, "self_attn"):
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        else:
            for conv in (layer.attn.c_proj, layer.mlp.c_proj):
                conv.weight.zero_()
                conv.bias.zero_()


@pytest.mark.parametrize("family", sorted(TINY_LMS))
@pytest.mark.parametrize("criterion", ["hidden", "perplexity"])
def test_depth_removes_the_layer_that_does_nothing(family, criterion, bundle, tmp_path) -> None:
    model = TINY_LMS[family]()
    _silence_layer(model, 1)
    expected = logits(model)
    ctx = ctx_for(bundle)
    config = PruneDecoderDepthConfig(remove=1, criterion=criterion, protect_last=0)
    model = PruneDecoderDepth(config).apply(model, ctx)
    assert ctx.records["removed"] == [1] and ctx.records["depth"] == [3, 2]
    assert model.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(model), expected)  # the identity layer is gone
    assert_reloads(model, tmp_path)


def _silence_heads(model, heads: list[int], head_dim: int) -> None:
    for layer in find_decoder(model).layers:
        with torch.no_grad():
            for head in heads:
                layer.self_attn.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_query_heads_are_pruned_inside_their_kv_groups(importance, bundle, tmp_path) -> None:
    model = tiny_llama()  # 4 query heads over 2 KV heads: groups {0, 1} and {2, 3}
    _silence_heads(model, [1, 2], head_dim=8)
    expected = logits(model)
    ctx = ctx_for(bundle)
    config = PruneDecoderWidthConfig(heads=0.5, importance=importance)
    model = PruneDecoderWidth(config).apply(model, ctx)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    assert model.config.head_dim == 8
    for layer in model.model.layers:
        assert (
            layer.self_attn.q_proj.out_features == 16 and layer.self_attn.k_proj.out_features == 16
        )
        assert layer.self_attn.num_key_value_groups == 1
    torch.testing.assert_close(logits(model), expected)  # heads 1 and 2 contributed nothing
    assert ctx.records["widths"]["num_attention_heads"] == [4, 2]
    assert_reloads(model, tmp_path)


def test_whole_kv_groups_go_with_their_query_heads(bundle, tmp_path) -> None:
    model = tiny_qwen2()  # 6 query heads over 2 KV heads (q/k/v biases, untied head)
    _silence_heads(model, [3, 4, 5], head_dim=8)
    expected = logits(model)
    config = PruneDecoderWidthConfig(heads=0.5, head_grouping="kv")
    model = PruneDecoderWidth(config).apply(model, ctx_for(bundle))
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (3, 1)
    torch.testing.assert_close(logits(model), expected)
    assert_reloads(model, tmp_path)


@pytest.mark.parametrize("family", sorted(TINY_LMS))
def test_mlp_neurons_go_together(family, bundle, tmp_path) -> None:
    model = TINY_LMS[family]()
    dead = torch.arange(0, 64, 2)  # every other neuron writes nothing
    for layer in find_decoder(model).layers:
        with torch.no_grad():
            if family == "gpt2":
                layer.mlp.c_proj.weight[dead] = 0
            else:
                layer.mlp.down_proj.weight[:, dead] = 0
    expected = logits(model)
    model = PruneDecoderWidth(PruneDecoderWidthConfig(mlp=0.5)).apply(model, ctx_for(bundle))
    width = model.config.n_inner if family == "gpt2" else model.config.intermediate_size
    assert width == 32
    torch.testing.assert_close(logits(model), expected)
    assert_reloads(model, tmp_path)


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_hidden_size_across_all_layers(build, bundle, tmp_path) -> None:
    model = build()
    tied = model.config.tie_word_embeddings
    config = PruneDecoderWidthConfig(hidden=0.25, heads=0.5, mlp=0.25)
    hidden = model.config.hidden_size
    model = PruneDecoderWidth(config).apply(model, ctx_for(bundle))
    assert model.config.hidden_size == hidden * 3 // 4
    assert model.get_input_embeddings().weight.shape[1] == hidden * 3 // 4
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert (head.weight is embed.weight) == tied  # tied embeddings stay tied
    assert torch.isfinite(logits(model)).all()
    assert_reloads(model, tmp_path)


def test_widths_that_break_the_grouping_are_one_line(bundle) -> None:
    ctx = ctx_for(bundle)
    with pytest.raises(CompressKitError, match="3 query heads do not split evenly over 2 KV"):
        PruneDecoderWidth(PruneDecoderWidthConfig(num_attention_heads=3)).apply(tiny_llama(), ctx)
    with pytest.raises(CompressKitError, match="num_key_value_heads 3 is not in 1..2"):
        PruneDecoderWidth(PruneDecoderWidthConfig(num_key_value_heads=3)).apply(tiny_llama(), ctx)
    with pytest.raises(CompressKitError, match="heads 0.1 of 2 query heads per group rounds"):
        PruneDecoderWidth(PruneDecoderWidthConfig(heads=0.1)).apply(tiny_llama(), ctx)
    with pytest.raises(CompressKitError, match="GPT-2's config derives the head size"):
        PruneDecoderWidth(PruneDecoderWidthConfig(heads=0.5)).apply(tiny_gpt2(), ctx)
    with pytest.raises(CompressKitError, match="GPT-2 ties its head size"):
        PruneDecoderWidth(PruneDecoderWidthConfig(hidden=0.5)).apply(tiny_gpt2(), ctx)
    with pytest.raises(CompressKitError, match="only 1 are not protected"):
        PruneDecoderDepth(PruneDecoderDepthConfig(remove=2)).apply(tiny_llama(), ctx)
    with pytest.raises(CompressKitError, match="not a decoder language model"):
        find_decoder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="give heads or num_attention_heads"):
        PruneDecoderWidthConfig(heads=0.5, num_attention_heads=2)


class _DecoderContract(PassContract):
    language_model = True

    def subject(self, trained_tiny_cnn, tiny):
        return tiny_llama(), tiny_lm_bundle(seq_len=16)


class TestPruneDecoderDepthContract(_DecoderContract):
    pass_name = "prune_decoder_depth"
    settings = {"remove": 1, "criterion": "hidden"}


class TestPruneDecoderWidthContract(_DecoderContract):
    pass_name = "prune_decoder_width"
    settings = {"heads": 0.5, "mlp": 0.5, "importance": "magnitude"}
