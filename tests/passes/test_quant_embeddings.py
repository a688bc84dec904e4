"""int8 embedding tables: smaller files, same outputs in ORT and torch, reload, compose."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from contract import PassContract
from prune_helpers import assert_reloads, context, ort_parity
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import export_onnx
from compresskit.export.verify import torch_outputs
from compresskit.models.size import count_params
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.passes.quantize_embeddings import QuantizeEmbeddings, QuantizeEmbeddingsConfig
from compresskit.quantization.embedding import Int8Embedding
from compresskit.testing import TinyBertClassifier, TinyTokenTransformer, tiny_text_data

ARCH = "compresskit.testing:TinyTokenTransformer"


def big_vocab() -> TinyTokenTransformer:
    """The tiny token model with a vocabulary that dominates its size, as in BERT."""
    return TinyTokenTransformer(vocab=4096)


def test_int8_tables_shrink_the_file_and_ort_matches_torch(tiny_text, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = big_vocab().eval()
    float_file = export_onnx(
        model, tiny_text.example_inputs(2), tmp_path / "f.onnx", dynamic_sequence=True
    )
    params = count_params(model)
    ctx = context(tiny_text)
    quantized = QuantizeEmbeddings(QuantizeEmbeddingsConfig()).apply(copy.deepcopy(model), ctx)
    assert isinstance(quantized.embed, Int8Embedding)
    assert ctx.records["int8_embeddings"] == ["embed"]
    assert ctx.records["embedding_bytes_after"] < 0.3 * ctx.records["embedding_bytes_before"]
    assert count_params(quantized) == params  # the int8 table still counts as weights
    loader = tiny_text.loader("eval", batch_size=64)
    float_outputs, outputs = torch_outputs(model, loader), torch_outputs(quantized, loader)
    # Per-row int8 rounding moves the outputs a little, and only a little.
    assert 0 < abs(float_outputs - outputs).max() < 0.05 * abs(float_outputs).max()
    int8_file = export_onnx(
        quantized, tiny_text.example_inputs(2), tmp_path / "q.onnx", dynamic_sequence=True
    )
    table = 4096 * 32 * 4
    assert float_file.bytes - int8_file.bytes > 0.7 * table, (float_file.bytes, int8_file.bytes)
    parity = ort_parity(quantized, int8_file.path, loader, "fp32")  # same ops: float rounding
    assert parity.ok, parity
    assert_reloads(quantized, tiny_text, tmp_path, f"{__file__}:big_vocab")


def test_composes_with_dynamic_int8_linears(trained_tiny_transformer, tiny_text, tmp_path) -> None:
    ctx = context(tiny_text)
    model = QuantizeDynamic(QuantizeDynamicConfig()).apply(
        copy.deepcopy(trained_tiny_transformer), ctx
    )
    model = QuantizeEmbeddings(QuantizeEmbeddingsConfig()).apply(model, ctx)
    result = export_onnx(
        model, tiny_text.example_inputs(2), tmp_path / "d.onnx", dynamic_sequence=True
    )
    assert kernel_report(result.path).fraction >= 0.9
    assert ort_parity(model, result.path, tiny_text.loader("eval", batch_size=64), "int8").ok
    assert_reloads(model, tiny_text, tmp_path, ARCH)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.lm_head = nn.Linear(8, 32, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.embed(ids)).mean(dim=1)


def test_tied_tables_and_empty_selections_are_one_line_errors(tiny_text) -> None:
    with pytest.raises(CompressKitError, match="'embed' shares its weight with 'lm_head'"):
        QuantizeEmbeddings(QuantizeEmbeddingsConfig()).apply(Tied(), context(tiny_text))
    with pytest.raises(CompressKitError, match="no nn.Embedding to quantize .all excluded"):
        QuantizeEmbeddings(QuantizeEmbeddingsConfig(min_rows=100)).apply(
            TinyTokenTransformer(), context(tiny_text)
        )


class TestQuantizeEmbeddingsContract(PassContract):
    pass_name = "quantize_embeddings"

    def subject(self, trained_tiny_cnn, tiny):
        return TinyBertClassifier().eval(), tiny_text_data()
