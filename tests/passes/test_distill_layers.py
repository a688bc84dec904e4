"""Layer mapping, hidden-state and attention transfer, projectors that never reach the
export, teacher caching, and the one-line errors of bad input."""

from __future__ import annotations

import copy
import math

import onnx
import pytest
import torch
from contract import PassContract
from torch import nn

from compresskit.context import Context
from compresskit.distill.losses import LayerPair
from compresskit.distill.mapping import map_layers, stage_names
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.models.checkpoint import save_model
from compresskit.models.examples import DigitsCNN
from compresskit.passes.distill import Distill, DistillConfig
from compresskit.passes.prune_channels import PruneChannels, PruneChannelsConfig
from compresskit.testing import TinyCNN
from compresskit.training.loop import TrainConfig

QUICK = TrainConfig(epochs=2, lr=5e-3, batch_size=64)


class TinySelfAttention(nn.Module):
    """Returns (output, probabilities) like Hugging Face's eager BERT attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1)
        return (probs @ v).transpose(1, 2).reshape(b, n, d), probs


class TinyLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention = TinySelfAttention(dim, heads=2)
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.attention(x)[0])
        return x + torch.relu(self.ffn(x))


class TinyTransformer(nn.Module):
    """Rows of a 1x8x8 image as 8 tokens; a stack of layers; mean-pool; linear head."""

    def __init__(self, depth: int = 4, dim: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.layers = nn.ModuleList(TinyLayer(dim) for _ in range(depth))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x[:, 0])
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(1))


def context(tiny, teacher) -> Context:
    return Context(data=tiny, teacher=teacher.eval(), example_inputs=tiny.example_inputs(2))


def depth_pruned(teacher: TinyTransformer, keep: list[int]) -> TinyTransformer:
    student = copy.deepcopy(teacher)
    student.layers = nn.ModuleList(student.layers[i] for i in keep)
    return student


def test_auto_mapping_is_uniform_by_depth_and_by_name_for_equal_depth() -> None:
    torch.manual_seed(0)
    teacher = TinyTransformer(depth=4)
    student = depth_pruned(teacher, [0, 2])
    assert map_layers(student, teacher, "auto") == [
        ("layers.0", "layers.1"),
        ("layers.1", "layers.3"),
    ]
    assert map_layers(student, teacher, "last") == [("layers.1", "layers.3")]
    assert map_layers(student, teacher, "auto", kind="attention") == [
        ("layers.0.attention", "layers.1.attention"),
        ("layers.1.attention", "layers.3.attention"),
    ]
    assert map_layers(teacher, teacher, "auto") == [(f"layers.{i}",) * 2 for i in range(4)]
    with pytest.raises(CompressKitError, match="no deeper than its teacher"):
        map_layers(teacher, student, "auto")


def test_cnn_stages() -> None:
    assert stage_names(DigitsCNN(width=8)) == [f"features.{i}" for i in (0, 1, 3, 4)]
    assert stage_names(TinyCNN()) == ["features.1", "features.4"]  # the BatchNorms


def test_unknown_layer_name_is_a_one_line_error(tiny, trained_tiny_cnn) -> None:
    config = DistillConfig(
        losses=[{"kind": "hidden", "layers": [{"student": "features.9", "teacher": "features.4"}]}],
        train=QUICK,
    )
    with pytest.raises(CompressKitError) as error:
        Distill(config).apply(copy.deepcopy(trained_tiny_cnn), context(tiny, trained_tiny_cnn))
    assert "'features.9' is not a module of the student" in str(error.value)
    assert "\n" not in str(error.value)


def test_teacher_for_another_task_is_an_error(tiny, trained_tiny_cnn) -> None:
    other = TinyCNN(num_classes=7).eval()
    config = DistillConfig(alpha=0.0, train=QUICK)
    with pytest.raises(CompressKitError, match="teacher must solve the same task"):
        Distill(config).apply(copy.deepcopy(trained_tiny_cnn), context(tiny, other))


def test_width_mismatch_without_projector_is_an_error(tiny, trained_tiny_cnn) -> None:
    ctx = context(tiny, trained_tiny_cnn)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    config = DistillConfig(losses=[{"kind": "hidden", "projector": False}], train=QUICK)
    with pytest.raises(CompressKitError, match="set projector: true"):
        Distill(config).apply(pruned, ctx)


def test_hidden_distillation_after_width_pruning_leaves_no_trace_in_the_export(
    tiny, trained_tiny_cnn, tmp_path
) -> None:
    ctx = context(tiny, trained_tiny_cnn)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    reference = copy.deepcopy(pruned)
    config = DistillConfig(
        losses=[{"kind": "kd", "weight": 0.5}, {"kind": "hidden", "metric": "cosine"}],
        train=QUICK,
    )
    distilled = Distill(config).apply(pruned, ctx)
    records = ctx.records["distill"]
    assert records["projectors"] and all(a < b for a, b in records["projectors"].values())
    assert records["terms"][1]["pairs"] == [
        ["features.1", "features.1"],
        ["features.4", "features.4"],
    ]
    # Hooks removed, no projector in the model, its state dict or its ONNX graph.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in distilled.modules())
    assert all(not m._forward_hooks for m in trained_tiny_cnn.modules())
    assert distilled.state_dict().keys() == reference.state_dict().keys()
    for name, model in (("d", distilled), ("r", reference)):
        export_onnx(model, tiny.example_inputs(2), tmp_path / f"{name}.onnx")
    shapes = {
        name: sorted(tuple(i.dims) for i in onnx.load(tmp_path / f"{name}.onnx").graph.initializer)
        for name in ("d", "r")
    }
    assert shapes["d"] == shapes["r"]


def test_hidden_and_attention_transfer_to_a_depth_pruned_transformer(tiny) -> None:
    torch.manual_seed(0)
    teacher = TinyTransformer(depth=4).eval()
    student = depth_pruned(teacher, [0, 3])
    ctx = context(tiny, teacher)
    config = DistillConfig(
        losses=[
            {"kind": "kd"},
            {"kind": "hidden", "metric": "mse"},
            {"kind": "attention", "layers": "auto"},
        ],
        train=TrainConfig(epochs=2, lr=3e-3, batch_size=64),
    )
    Distill(config).apply(student, ctx)
    terms = {t["loss"]: t for t in ctx.records["distill"]["terms"]}
    assert terms["attention"]["pairs"][0] == ["layers.0.attention", "layers.1.attention"]
    epochs = ctx.records["history"]["epochs"]
    assert epochs[-1]["parts"]["attention"] < epochs[0]["parts"]["attention"]
    assert not ctx.records["distill"]["projectors"]  # same width: none needed


def test_cached_teacher_outputs_train_the_same_as_live_ones(tiny, trained_tiny_cnn) -> None:
    results = []
    for cache in ("always", "never"):
        ctx = context(tiny, trained_tiny_cnn)
        config = DistillConfig(
            losses=[{"kind": "kd"}, {"kind": "hidden"}, {"kind": "rkd_distance"}],
            cache_teacher=cache,
            train=QUICK,
        )
        model = Distill(config).apply(copy.deepcopy(trained_tiny_cnn), ctx)
        assert ctx.records["distill"]["teacher_cached"] is (cache == "always")
        results.append(model.state_dict())
    for a, b in zip(results[0].values(), results[1].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unlabelled_distillation_from_a_teacher_checkpoint(
    tiny, trained_tiny_cnn, tmp_path
) -> None:
    path = tmp_path / "teacher.pt"
    save_model(
        trained_tiny_cnn, path, source={"kind": "arch", "factory": "compresskit.testing:TinyCNN"}
    )
    ctx = Context(data=tiny, teacher=None, example_inputs=tiny.example_inputs(2))
    torch.manual_seed(1)
    config = DistillConfig(
        teacher=str(path),
        losses=[{"kind": "nkd", "target": "teacher"}, {"kind": "dts", "target": "teacher"}],
        train=TrainConfig(epochs=3, lr=1e-2, batch_size=32, monitor="agreement"),
    )
    Distill(config).apply(TinyCNN(), ctx)
    history = ctx.records["history"]
    assert history["epochs"][-1]["metrics"]["agreement"] > 0.5
    assert ctx.records["distill"]["teacher"] == str(path)
    assert 1.0 <= ctx.records["distill"]["terms"][1]["final_temperature"] <= 8.0


def test_layer_pair_explicit_mapping(tiny, trained_tiny_cnn) -> None:
    ctx = context(tiny, trained_tiny_cnn)
    pair = LayerPair(student="features.4", teacher="features.4")
    config = DistillConfig(losses=[{"kind": "hidden", "layers": [pair.model_dump()]}], train=QUICK)
    Distill(config).apply(copy.deepcopy(trained_tiny_cnn), ctx)
    assert ctx.records["distill"]["terms"][0]["pairs"] == [["features.4", "features.4"]]


def test_output_cosine_loss_pulls_a_pruned_students_outputs_to_the_teachers(
    tiny, trained_tiny_cnn
) -> None:
    """The embedding-model recipe: no labels, no softmax, just the outputs' direction."""
    ctx = context(tiny, trained_tiny_cnn)
    pruned = PruneChannels(PruneChannelsConfig(ratio=0.5)).apply(
        copy.deepcopy(trained_tiny_cnn), ctx
    )
    x = tiny.example_inputs(256)[0]

    def cosine(model: nn.Module) -> float:
        with torch.no_grad():
            return float(
                torch.cosine_similarity(model.eval()(x), trained_tiny_cnn(x), dim=-1).mean()
            )

    before = cosine(pruned)
    config = DistillConfig(losses=[{"kind": "output", "metric": "cosine"}], train=QUICK)
    after = cosine(Distill(config).apply(pruned, ctx))
    assert after > before + 0.1, (before, after)


class TestDistillContract(PassContract):
    pass_name = "distill"
    settings = {"train": TrainConfig(epochs=1, batch_size=64).model_dump()}
