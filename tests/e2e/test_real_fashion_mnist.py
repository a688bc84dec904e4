"""End to end on the real Fashion-MNIST ResNet teacher: policies/fashion-mnist-cnn.yaml and
fashion-mnist-fast.yaml on a slice of the data (2,048 training images, 512 test images;
about a minute each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _real import BENCHMARKS, REPO, benchmarks_importable, check_run

pytestmark = pytest.mark.e2e

TEACHER = BENCHMARKS / "artifacts" / "fashion_mnist_resnet.pt"


@pytest.mark.parametrize(
    ("policy", "nodes", "min_int8"),
    [
        ("fashion-mnist-cnn", ["prune_channels", "distill", "quantize"], 0.9),
        # int8 only where measured faster: how much stays float is the target's answer.
        ("fashion-mnist-fast", ["prune_blocks", "prune_channels", "distill", "quantize"], None),
    ],
)
def test_fashion_mnist_policy_end_to_end(
    policy: str, nodes: list[str], min_int8: float | None, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    pytest.importorskip("torch_pruning", reason="pip install torch-pruning")
    import torch

    import compresskit
    from compresskit.errors import CompressKitError
    from compresskit.models.loading import LoadedModel

    if not TEACHER.is_file():
        pytest.skip(f"{TEACHER} missing: train it with python benchmarks/fashion_mnist_teacher.py")
    try:
        data = compresskit.load_data("fashion-mnist", seed=0)
    except CompressKitError as error:  # names the apt package to install
        pytest.skip(str(error))
    benchmarks_importable()
    from models import resnet_fmnist
    from real_fashion_mnist import slice_bundle

    teacher = resnet_fmnist()
    teacher.load_state_dict(torch.load(TEACHER, weights_only=True))
    data = slice_bundle(data, train=2048, eval_samples=512)
    result = compresskit.run(
        REPO / "policies" / f"{policy}.yaml",
        model=LoadedModel(teacher.eval(), {"kind": "python"}),
        data=data,
        out=tmp_path / "run",
        latency_seconds=0.3,
    )
    candidate = check_run(result, min_int8=min_int8)
    assert candidate.nodes == nodes
    # 2,048 images of recovery: not the benchmark's accuracy, but far above chance (0.1).
    assert candidate.metrics["accuracy"] > result.report.baseline.metrics["accuracy"] - 0.1
