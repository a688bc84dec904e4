"""An embedding task end to end through ``compresskit.run``: a tiny sentence embedder
pruned, distilled on the cosine of its output, int8; scored by cosine, not accuracy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import compresskit
from compresskit.bench.verdict import judge
from compresskit.errors import CompressKitError
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_transformer import PruneTransformer, PruneTransformerConfig
from compresskit.passes.quantize_dynamic import QuantizeDynamic, QuantizeDynamicConfig
from compresskit.policies import Budget, policy_of
from compresskit.training.loop import TrainConfig

pytest.importorskip("transformers")

from compresskit.testing import TinyBertEmbedder, tiny_text_data  # noqa: E402

WIDTH = 32  # TINY_BERT_CONFIG hidden_size: the embedder's output width


@pytest.fixture
def embedding_data():
    return dataclasses.replace(tiny_text_data(), task="embedding", num_classes=WIDTH)


def _pipeline() -> compresskit.Pipeline:
    return (
        compresskit.Pipeline()
        .add(
            "pruned",
            PruneTransformer(PruneTransformerConfig(heads=0.5, ffn=0.5, importance="sensitivity")),
        )
        .add(
            "distilled",
            Distill(
                DistillConfig(
                    losses=[
                        {"kind": "output", "metric": "cosine", "weight": 10.0},
                        {"kind": "hidden", "layers": "auto"},
                    ],
                    train=TrainConfig(epochs=2, lr=3e-3, batch_size=64),
                )
            ),
            after="pruned",
        )
        .add("int8", QuantizeDynamic(QuantizeDynamicConfig()), after="distilled")
        .add("pruned-int8", QuantizeDynamic(QuantizeDynamicConfig()), after="pruned")
    )


def test_embedding_run_scores_cosine_to_the_baseline(embedding_data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyBertEmbedder().eval()
    policy = policy_of(
        _pipeline(),
        "embed",
        batch_sizes=[2],
        sequence_length=12,
        budget={"min_cosine": 0.5, "max_accuracy_drop": 0.01},
    )
    result = compresskit.run(
        policy,
        model=model,
        data=embedding_data,
        out=tmp_path / "run",
        latency_seconds=0.05,
    )
    report = result.report
    assert report.task == "embedding"
    # A model holding a transformers module exports with the legacy exporter, the baseline
    # too: every speedup is against the graph ORT's fusions know (and it exports faster).
    assert {entry.exporter for entry in report.entries()} == {"legacy"}
    assert report.baseline.metrics["cosine"] == 1.0 and report.baseline.metrics["mse"] == 0.0
    assert [c.name for c in report.candidates] == ["int8", "pruned-int8"]
    for entry in report.entries():
        assert "accuracy" not in entry.metrics and "agreement" not in entry.metrics
        assert set(entry.metrics) == {"cosine", "cosine_p5", "cosine_min", "mse"}
    for entry in report.candidates:
        cosine = entry.metrics
        assert 0.0 < cosine["cosine_min"] <= cosine["cosine_p5"] <= cosine["cosine"] < 1.0
        assert cosine["mse"] > 0.0
        assert "within budget (min 0.5)" in entry.summary, entry.summary
        assert "accuracy" not in entry.summary
        assert entry.verdict is not None and entry.verdict.budget_met is True
        assert any("max_accuracy_drop does not apply" in line for line in entry.verdict.lines)
        assert entry.parity is not None and entry.parity.ok, entry.parity
    # Half the heads and neurons gone changes the embeddings; distillation brings them back.
    distilled, pruned = report.candidates[0].metrics, report.candidates[1].metrics
    assert distilled["cosine"] > pruned["cosine"]
    history = report.candidates[0].steps[1].records["history"]
    assert all(
        "cosine" in e["metrics"] and "accuracy" not in e["metrics"] for e in history["epochs"]
    )

    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "| cos | cos p5 |" in markdown and "| acc |" not in markdown
    assert "Cosine is measured with ONNX Runtime" in markdown
    assert "Accuracy is measured" not in markdown
    assert "training curve (loss/val cos)" in markdown
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<th>cos</th>" in html and 'alt="cosine to baseline vs latency"' in html
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["task"] == "embedding"

    assert saved["verdict"]["budget_met"] is True and saved["budget"]["min_cosine"] == 0.5
    assert "training curve (loss/val cos)" in html

    # The same candidates against a budget they miss.
    strict = judge(report.model_copy(deep=True), Budget(min_cosine=0.99999))
    entry = strict.candidates[-1]
    assert "BELOW budget (min 0.99999)" in entry.summary
    assert entry.verdict is not None and "cosine_below_budget" in entry.verdict.reasons
    assert strict.verdict is not None and strict.verdict.budget_met is False


class _PerToken(torch.nn.Module):
    """An encoder that returns one vector per token, not per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = TinyBertEmbedder()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner(ids, mask).unsqueeze(1).expand(-1, ids.shape[1], -1)


def test_embeddings_that_are_not_one_vector_per_sample_are_one_clear_error(
    embedding_data, tmp_path: Path
) -> None:
    with pytest.raises(CompressKitError) as error:
        compresskit.run("int8-dynamic", model=_PerToken(), data=embedding_data, out=tmp_path / "r")
    message = str(error.value)
    assert "outputs (2, 12, 32)" in message and "shape (batch, width)" in message
    assert "\n" not in message
    assert not (tmp_path / "r").exists()


def test_fewer_outputs_than_the_labels_imply_is_one_clear_error(
    embedding_data, tmp_path: Path
) -> None:
    data = dataclasses.replace(embedding_data, task="classification", num_classes=40)
    with pytest.raises(
        CompressKitError, match=r"outputs 32 classes but the labels of tiny-text go up to 39"
    ):
        compresskit.run("int8-dynamic", model=TinyBertEmbedder(), data=data, out=tmp_path / "r")


def test_per_token_outputs_on_classification_data_hint_at_the_embedding_task(
    embedding_data, tmp_path: Path
) -> None:
    data = dataclasses.replace(embedding_data, task="classification", num_classes=4)
    with pytest.raises(CompressKitError, match=r"outputs \(2, 12, 32\).*task=\"embedding\""):
        compresskit.run("int8-dynamic", model=_PerToken(), data=data, out=tmp_path / "r")


def test_data_task_is_checked() -> None:
    with pytest.raises(CompressKitError, match="task 'regression' is not one of"):
        dataclasses.replace(tiny_text_data(), task="regression")  # type: ignore[arg-type]
