"""Run by torchrun (2 processes) from test_distributed.py: the collective helpers on
real ranks. Prints one line per check on rank 0; any failure raises."""

from __future__ import annotations

import copy

import torch

from compresskit.errors import CompressKitError
from compresskit.testing import TinyCNN
from compresskit.training import distributed


def main() -> None:
    world = distributed.setup()
    assert world.world_size == 2 and world.backend == "gloo", world
    torch.manual_seed(0)
    model = TinyCNN()
    distributed.check_same_model(model)  # same seed, same model: passes

    other = copy.deepcopy(model)
    if world.rank == 1:
        with torch.no_grad():
            other.head.bias[0] += 1e-6
    try:
        distributed.check_same_model(other)
    except CompressKitError as error:
        assert "ranks [1]" in str(error), error
    else:
        raise AssertionError("a different model on rank 1 was not detected")

    # 0.5 on rank 0 and 2.0 on rank 1: the sum over ranks
    total = distributed.all_reduce_sum(torch.tensor([0.5 if world.rank == 0 else 2.0, 1.0]))
    assert total.tolist() == [2.5, 2.0], total

    with torch.no_grad():
        model.features[1].running_mean.fill_(float(world.rank))
    distributed.sync_buffers(model)
    assert float(model.features[1].running_mean.sum()) == 0.0

    assert distributed.main_only(lambda: world.rank * 10 + 7, what="test") == 7

    def fail() -> int:
        raise ValueError("boom on rank 0")

    try:
        distributed.main_only(fail, what="the test step")
    except ValueError:
        assert world.rank == 0
    except CompressKitError as error:
        assert world.rank == 1 and "rank 0 failed during the test step: ValueError" in str(error)
    else:
        raise AssertionError("main_only hid a failure")
    check_training_matches_one_process(world)
    if world.is_main:
        print("ranks ok", flush=True)


def check_training_matches_one_process(world: distributed.World) -> None:
    """Without BatchNorm, 2 ranks with half batches train what 1 process does with the
    whole batch: the same weights up to float rounding of the gradient sums."""
    from compresskit.testing import tiny_data
    from compresskit.training.loop import TrainConfig, train

    data = tiny_data(samples=500)  # 360 training samples: no padding on 2 ranks
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    alone = copy.deepcopy(model)
    history = train(model, data, config)
    if world.is_main:
        real_current = distributed.current
        distributed.current = lambda: distributed.World()  # type: ignore[assignment]
        try:
            reference = train(alone, data, config)
        finally:
            distributed.current = real_current  # type: ignore[assignment]
        for (name, a), b in zip(
            model.state_dict().items(), alone.state_dict().values(), strict=True
        ):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (name, (a - b).abs().max())
        for a, b in zip(history.epochs, reference.epochs, strict=True):
            assert abs(a.loss - b.loss) < 1e-5 and a.accuracy == b.accuracy, (a, b)
        print("training matches one process", flush=True)


if __name__ == "__main__":
    with distributed.session():
        main()
