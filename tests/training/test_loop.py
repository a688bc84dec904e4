"""The shared training loop: steps, warm-up, early stopping, determinism, objectives."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from compresskit.errors import CompressKitError
from compresskit.testing import TinyCNN
from compresskit.training.loop import (
    Objective,
    Runtime,
    TrainConfig,
    lr_factor,
    train,
)


def fresh() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def test_steps_based_training_validates_every_n_steps(tiny) -> None:
    history = train(fresh(), tiny, TrainConfig(steps=7, eval_every=3, batch_size=32))
    assert [r.step for r in history.epochs] == [3, 6, 7]
    assert all(0 <= r.accuracy <= 1 for r in history.epochs)


def test_without_a_terminal_a_long_run_logs_where_it_is(tiny, monkeypatch) -> None:
    from rich.console import Console

    from compresskit import progress
    from compresskit.training import loop

    log = Console(file=io.StringIO(), width=200)
    monkeypatch.setattr(progress, "console", log)
    monkeypatch.setenv("COMPRESSKIT_QUIET", "0")
    monkeypatch.setattr(loop, "PROGRESS_LINE_SECONDS", 0.0)  # a line at every validation
    config = TrainConfig(steps=7, eval_every=3, batch_size=32)
    train(fresh(), tiny, config, description="distill")
    lines = log.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert [line.split(",")[0] for line in lines] == [
        "· distill: step 3/7",
        "· distill: step 6/7",
        "· distill: 7 steps",  # the closing line
    ]
    assert all(line.endswith(" left") for line in lines[:2])


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(s, total=10, warmup=4, schedule="cosine") for s in range(10)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert factors[4:] == sorted(factors[4:], reverse=True)
    assert lr_factor(9, total=10, warmup=0, schedule="constant") == 1.0


def test_training_is_deterministic_under_a_seed(tiny) -> None:
    config = TrainConfig(epochs=2, batch_size=32)
    first, second = fresh(), fresh()
    train(first, tiny, config, seed=3)
    train(second, tiny, config, seed=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_patience_stops_when_validation_stops_improving(tiny) -> None:
    def flat(model, batches):  # noqa: ANN001, ANN202
        return {"accuracy": 0.5}

    history = train(fresh(), tiny, TrainConfig(epochs=10, patience=2), metric_fn=flat)
    assert len(history.epochs) == 3  # one improvement from nothing, then two stale
    assert "no val improvement" in history.stopped


def test_budget_stop(tiny) -> None:
    config = TrainConfig(epochs=5, stop_at_budget=True)
    history = train(fresh(), tiny, config, stop_at=0.0)
    assert len(history.epochs) == 1 and history.stopped.startswith("budget met")
    with pytest.raises(CompressKitError, match="stop_at_budget needs a budget"):
        train(fresh(), tiny, config)


def test_objective_trains_extra_modules_and_logs_parts(tiny) -> None:
    extra = nn.Linear(4, 4)
    before = extra.weight.detach().clone()
    steps: list[int] = []

    def loss(model, inputs, y):  # noqa: ANN001, ANN202
        return {
            "task": nn.functional.cross_entropy(model(*inputs), y),
            "extra": extra(model(*inputs)).pow(2).mean(),
        }

    objective = Objective(loss=loss, modules=[extra], on_step=lambda s: steps.append(s.step))
    history = train(fresh(), tiny, TrainConfig(epochs=1, batch_size=64), objective=objective)
    assert not torch.equal(before, extra.weight)
    assert set(history.epochs[0].parts) == {"task", "extra"}
    assert steps == list(range(1, len(steps) + 1)) and steps


def test_runtime_is_the_single_point_for_wrapping_and_reduction(tiny) -> None:
    calls = {"wrap": 0, "reduce": 0, "loader": 0}

    class Counting(Runtime):
        def wrap(self, module):  # noqa: ANN001, ANN202
            calls["wrap"] += 1
            return module

        def train_loader(self, dataset, *, batch_size, seed):  # noqa: ANN001, ANN202
            calls["loader"] += 1
            return super().train_loader(dataset, batch_size=batch_size, seed=seed)

        def all_reduce(self, values):  # noqa: ANN001, ANN202
            calls["reduce"] += 1
            return values

    train(fresh(), tiny, TrainConfig(epochs=2), runtime=Counting())
    assert calls == {"wrap": 1, "reduce": 2, "loader": 1}


def test_a_diverging_loss_is_a_clear_error(tiny) -> None:
    def nan_loss(model, inputs, y):  # noqa: ANN001, ANN202
        return model(*inputs).sum() * float("nan")

    with pytest.raises(CompressKitError, match="loss became nan"):
        train(fresh(), tiny, TrainConfig(epochs=1), loss_fn=nan_loss)
