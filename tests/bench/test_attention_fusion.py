"""benchmarks/attention_fusion: an exported BERT's attention cores become ORT's
MultiHeadAttention, and the fused graph computes what the unfused one does, padding
included, in float and in int8 QDQ (heads pruned unevenly too)."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from compresskit.export.onnx import export_onnx  # noqa: E402
from compresskit.testing import TinyBertEmbedder  # noqa: E402
from compresskit.testing.tiny import TINY_BERT_CONFIG  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
LAYERS = TINY_BERT_CONFIG["num_hidden_layers"]


@pytest.fixture
def fuse_attention():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from attention_fusion import fuse_attention

        yield fuse_attention
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("attention_fusion", None)


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, TINY_BERT_CONFIG["vocab_size"], (4, 12)).astype(np.int64)
    mask = (np.arange(12)[None, :] < np.array([[12], [7], [3], [10]])).astype(np.int64)
    return {"input_0": ids * mask, "input_1": mask}


def _fused_and_plain(fuse_attention, model: torch.nn.Module, tmp_path: Path):
    import onnx
    import onnxruntime as ort

    example = tuple(torch.from_numpy(x) for x in _feeds().values())
    plain = tmp_path / "plain.onnx"
    export_onnx(model, example, plain, exporter="legacy", dynamic_sequence=True)
    graph = onnx.load(str(plain))
    count = fuse_attention(graph)
    fused = tmp_path / "fused.onnx"
    onnx.save(graph, str(fused))
    onnx.checker.check_model(str(fused))
    outputs = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
        for path in (plain, fused)
    ]
    return count, Counter(node.op_type for node in graph.graph.node), *outputs


def test_every_attention_core_of_a_float_bert_fuses_and_computes_the_same(
    fuse_attention, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    count, ops, plain, fused = _fused_and_plain(fuse_attention, TinyBertEmbedder().eval(), tmp_path)
    assert count == LAYERS
    assert ops["MultiHeadAttention"] == LAYERS and ops["Softmax"] == 0
    assert ops["Transpose"] == 0  # the head splits and merges went with the cores
    np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_an_int8_bert_with_uneven_heads_fuses_with_its_projections_kept_int8(
    fuse_attention, tmp_path: Path
) -> None:
    from compresskit.context import Context
    from compresskit.passes.prune_transformer import PruneTransformer, PruneTransformerConfig
    from compresskit.passes.quantize import Quantize, QuantizeConfig
    from compresskit.testing import tiny_text_data

    torch.manual_seed(0)
    model = TinyBertEmbedder().eval()
    data = dataclasses.replace(tiny_text_data(samples=128), task="embedding", num_classes=32)
    ctx = Context(data=data, teacher=copy.deepcopy(model), example_inputs=data.example_inputs(2))
    model = PruneTransformer(PruneTransformerConfig(heads=0.3, ffn=0.0, global_ranking=True)).apply(
        model, ctx
    )
    heads = [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer]
    assert len(set(heads)) > 1, heads  # a head count of its own in some layer
    model = Quantize(QuantizeConfig(calibration_batches=2)).apply(model, ctx)
    count, ops, plain, fused = _fused_and_plain(fuse_attention, model, tmp_path)
    assert count == LAYERS
    assert ops["DequantizeLinear"] > 0  # the projections are still int8
    np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_a_graph_without_the_pattern_is_left_alone(fuse_attention, tmp_path: Path) -> None:
    import onnx

    from compresskit.testing import TinyCNN

    path = tmp_path / "cnn.onnx"
    export_onnx(TinyCNN().eval(), (torch.randn(2, 1, 8, 8),), path, exporter="legacy")
    graph = onnx.load(str(path))
    before = graph.SerializeToString()
    assert fuse_attention(graph) == 0
    assert graph.SerializeToString() == before
