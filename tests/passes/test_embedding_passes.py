"""Passes on an embedding task: label-free pruning criteria, distillation validated by
cosine to the teacher, and one-line refusals from passes that need class labels."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from prune_helpers import context

from compresskit.errors import CompressKitError
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_transformer import PruneTransformer, PruneTransformerConfig
from compresskit.passes.qat import QAT, QATConfig
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.policies.schema import Budget
from compresskit.pruning.criteria import CalibrationSet
from compresskit.tasks import get_task
from compresskit.training.loop import TrainConfig, train

pytest.importorskip("transformers")

from compresskit.testing import TinyBertEmbedder, tiny_text_data  # noqa: E402

OUTPUT_LOSS = {"kind": "output", "metric": "cosine"}


@pytest.fixture
def data():
    return dataclasses.replace(tiny_text_data(), task="embedding", num_classes=32)


@pytest.fixture
def embedder():
    torch.manual_seed(0)
    return TinyBertEmbedder().eval()


def _cosine(model, reference, data) -> float:
    cosines = []
    with torch.no_grad():
        for *inputs, _ in data.loader("eval", batch_size=256):
            cosines.append(torch.cosine_similarity(model(*inputs), reference(*inputs), dim=1))
    return float(torch.cat(cosines).mean())


def test_calibration_of_an_embedding_task_scores_against_the_unpruned_outputs(
    data, embedder
) -> None:
    calibration = CalibrationSet.collect(embedder, context(data, embedder), 2, batch_size=8)
    assert calibration.task.name == "embedding"
    assert [tuple(r.shape) for r in calibration.references] == [(8, 32), (8, 32)]
    assert calibration.mean_loss(embedder) == pytest.approx(0.0, abs=1e-6)
    other = copy.deepcopy(embedder)
    torch.nn.init.normal_(other.bert.encoder.layer[0].output.dense.weight)
    assert calibration.mean_loss(other) > 0.01


def test_label_free_sensitivity_loss_is_cosine_distance_with_a_gradient_probe() -> None:
    task = get_task("embedding")
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(4, 6)
    out = x @ weight
    reference = out.detach().clone()
    placeholders = torch.zeros(4, dtype=torch.long)  # an embedding task's labels: never read
    loss = task.sensitivity_loss(out, placeholders, reference)
    assert abs(float(loss.detach())) < 1e-6  # at the reference: nothing lost...
    loss.backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0.1  # ...a gradient
    moved = task.sensitivity_loss(-reference, placeholders, reference)
    assert float(moved) == pytest.approx(2.0)  # opposite embeddings: cosine -1


def test_sensitivity_pruning_keeps_embeddings_closer_than_random(data, embedder) -> None:
    scores = {}
    for importance in ("sensitivity", "random"):
        model = copy.deepcopy(embedder)
        pruned = PruneTransformer(
            PruneTransformerConfig(heads=0.5, ffn=0.5, importance=importance)
        ).apply(model, context(data, embedder))
        scores[importance] = _cosine(pruned, embedder, data)
    assert scores["sensitivity"] > scores["random"] + 0.1, scores


def test_distill_validates_by_cosine_and_stops_at_the_cosine_budget(data, embedder) -> None:
    student = PruneTransformer(PruneTransformerConfig(heads=0.5, ffn=0.5)).apply(
        copy.deepcopy(embedder), context(data, embedder)
    )
    ctx = dataclasses.replace(context(data, embedder), budget=Budget(min_cosine=0.0))
    config = DistillConfig(
        losses=[OUTPUT_LOSS],
        train=TrainConfig(epochs=3, lr=1e-3, batch_size=64, stop_at_budget=True),
    )
    Distill(config).apply(student, ctx)
    history = ctx.records["history"]
    assert len(history["epochs"]) == 1
    assert history["stopped"].startswith("budget met (val cosine")
    assert 0.0 < history["epochs"][0]["metrics"]["cosine"] <= 1.0
    assert "accuracy" not in history["epochs"][0]["metrics"]


def test_qat_distils_an_embedder_through_its_quantizers(data, embedder) -> None:
    """Quantized distillation without labels: QAT with distill's losses trains the int8
    model towards the teacher's embeddings, from where PTQ left it."""
    student = PruneTransformer(PruneTransformerConfig(heads=0.5, ffn=0.5)).apply(
        copy.deepcopy(embedder), context(data, embedder)
    )
    ctx = context(data, embedder)
    config = QATConfig(
        losses=[{"kind": "output", "weight": 10.0, "metric": "cosine"}, {"kind": "hidden"}],
        freeze_at=0.0,
        train=TrainConfig(epochs=3, lr=1e-3, batch_size=32),
    )
    QAT(config).apply(student, ctx)
    ptq = ctx.records["ptq_val"]["cosine"]
    epochs = ctx.records["history"]["epochs"]
    assert ctx.records["distilled"] and ctx.records["freeze_step"] == 0
    assert epochs[-1]["metrics"]["cosine"] > ptq + 0.01
    assert ptq < _cosine(student, embedder, data) <= 1.0  # the converted int8 model
    assert ctx.records["quantized_layers"]


@pytest.mark.parametrize("short_form", [{"alpha": 0.5}, {"alpha": 1.0}, {"temperature": 4.0}])
def test_qat_losses_replace_the_short_form(short_form: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="alpha/temperature are the short form"):
        QATConfig(losses=[OUTPUT_LOSS], **short_form)
    assert QATConfig(losses=[OUTPUT_LOSS]).losses  # the defaults alone are not "given"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "alpha/temperature distil class logits, but the embedding task"),
        ({"losses": [OUTPUT_LOSS, {"kind": "kd"}]}, "losses kd need classes"),
        (
            {"losses": [OUTPUT_LOSS], "train": {"monitor": "accuracy"}},
            "train.monitor is 'accuracy' but the embedding task validates by cosine",
        ),
    ],
)
def test_distill_refuses_class_settings_on_embeddings(data, embedder, config, message) -> None:
    with pytest.raises(CompressKitError, match=message):
        Distill(DistillConfig(**config)).apply(copy.deepcopy(embedder), context(data, embedder))


def test_label_trained_passes_refuse_embeddings_naming_what_to_use(data, embedder) -> None:
    ctx = context(data, embedder)
    with pytest.raises(CompressKitError, match=r"finetune needs class labels.*distill"):
        PruneTransformer(PruneTransformerConfig(heads=0.5, ffn=0.0, finetune={})).apply(
            copy.deepcopy(embedder), ctx
        )
    with pytest.raises(CompressKitError, match=r"qat needs class labels.*give qat losses"):
        QAT(QATConfig()).apply(copy.deepcopy(embedder), ctx)
    with pytest.raises(CompressKitError, match="qat: losses kd need classes"):
        QAT(QATConfig(losses=[OUTPUT_LOSS, {"kind": "kd"}])).apply(copy.deepcopy(embedder), ctx)
    with pytest.raises(CompressKitError, match="no labels to measure accuracy on.*max_cosine"):
        Quantize(QuantizeConfig(mixed_precision={})).apply(copy.deepcopy(embedder), ctx)
    with pytest.raises(CompressKitError, match="training needs class labels.*distill"):
        train(copy.deepcopy(embedder), data, TrainConfig(epochs=1))


def test_monitor_defaults_by_task() -> None:
    embedding, classification = get_task("embedding"), get_task("classification")
    assert embedding.monitor(None, what="x") == "cosine"
    assert classification.monitor(None, what="x") == "accuracy"
    assert classification.monitor("agreement", what="x") == "agreement"
    with pytest.raises(CompressKitError, match="use monitor: cosine"):
        embedding.monitor("agreement", what="x")


def test_mixed_precision_budgets_an_embedders_cosine_and_keeps_the_fragile_layer_float(
    data, embedder
) -> None:
    # Plant: intermediate neuron 0 of layer 1 is dead (GELU(-10) ~ 0) and the layer's
    # output projection gives it a huge weight. Float outputs do not change, but every
    # output channel's int8 scale now rounds the other weights of that layer to zero.
    fragile = "bert.encoder.layer.1.output.dense"
    with torch.no_grad():
        layer = embedder.bert.encoder.layer[1]
        layer.intermediate.dense.weight[0] = 0.0
        layer.intermediate.dense.bias[0] = -10.0
        layer.output.dense.weight[:, 0] = 1000.0
    plain = Quantize(QuantizeConfig()).apply(copy.deepcopy(embedder), context(data, embedder))
    ctx = context(data, embedder)
    budget = {"max_cosine_drop": 0.01, "max_float_macs": 0.5}
    mixed = Quantize(QuantizeConfig(mixed_precision=budget)).apply(copy.deepcopy(embedder), ctx)
    sensitivity = ctx.records["sensitivity"]
    assert max(sensitivity, key=sensitivity.get) == fragile, sensitivity
    assert ctx.records["float_layers"] == [fragile]
    assert "calibration cosine drop" in ctx.records["float_layer_reasons"][fragile]
    assert ctx.records["calibration_cosine_drop"] <= 0.01
    assert _cosine(plain, embedder, data) < 0.95  # the plant works
    assert _cosine(mixed, embedder, data) > 0.99


@pytest.mark.parametrize(
    ("task", "budget", "message"),
    [
        ("embedding", {"max_accuracy_drop": 0.01}, "budget the cosine.*max_cosine_drop"),
        ("classification", {"max_cosine_drop": 0.01}, "max_cosine_drop is for embedding"),
    ],
)
def test_mixed_precision_refuses_the_other_tasks_budget(task, budget, message) -> None:
    from compresskit.quantization.sensitivity import MixedPrecisionConfig

    metric = get_task(task).monitors[0]
    with pytest.raises(CompressKitError, match=message):
        MixedPrecisionConfig(**budget).budget("cosine" if metric == "cosine" else "accuracy")


def test_a_budget_the_embedder_cannot_measure_is_refused_before_anything_runs(
    data, embedder
) -> None:
    ctx = context(data, embedder)
    for node in (
        Quantize(QuantizeConfig(mixed_precision={})),
        QAT(QATConfig(losses=[OUTPUT_LOSS], mixed_precision={"max_accuracy_drop": 0.01})),
    ):
        with pytest.raises(CompressKitError, match="budget the cosine.*max_cosine_drop"):
            node.check(embedder, ctx)
    QAT(QATConfig(losses=[OUTPUT_LOSS], mixed_precision={"max_cosine_drop": 0.01})).check(
        embedder, ctx
    )
