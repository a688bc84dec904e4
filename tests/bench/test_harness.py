"""The subprocess-per-target harness on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compresskit.bench.harness import BenchModel, Workload, measure_target, measure_targets
from compresskit.bench.measurement import TargetRun
from compresskit.export.onnx import export_onnx
from compresskit.export.targets import load_target, target_available
from compresskit.testing import TinyCNN

GPU_TARGETS = ["cuda-ort", "tensorrt-ort", "torch-cuda"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[BenchModel]:
    tmp_path = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    big, small = TinyCNN(width=16).eval(), TinyCNN(width=4).eval()
    example = (torch.randn(2, 1, 8, 8),)
    # the legacy exporter is quicker; which exporter wrote the files does not matter here
    export_onnx(big, example, tmp_path / "big.onnx", exporter="legacy")
    export_onnx(small, example, tmp_path / "small.onnx", exporter="legacy")
    return [
        BenchModel("big", onnx=tmp_path / "big.onnx", module=big),
        BenchModel("small", onnx=tmp_path / "small.onnx", module=small),
    ]


SAMPLE = [np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)]


def test_onnx_target_measures_every_model_with_sane_fields(models: list[BenchModel]) -> None:
    target = load_target("cpu-ort").model_copy(update={"batch_sizes": [1, 8], "threads": 1})
    run = measure_target(target, models, SAMPLE, max_seconds=0.1, min_repeats=5)
    assert run.skipped is None
    assert run.threads == 1 and run.inter_op_threads == 1
    assert run.allow_spinning is False  # two sessions interleaved: no spinning threads
    assert isinstance(run.noisy, bool) and (run.noisy == bool(run.noise_reasons))
    assert [m.name for m in run.models] == ["big", "small"]
    for model in run.models:
        assert model.error is None and model.session.target == "cpu-ort"
        assert model.session.load_ms is not None and model.session.load_ms > 0
        assert model.session.rss_delta_mb is not None
        assert [x.batch for x in model.latency] == [1, 8]
        for x in model.latency:
            assert x.target == "cpu-ort" and x.repeats >= 3
            assert 0 < x.p50_ms <= x.p90_ms <= x.p99_ms
            assert x.throughput == pytest.approx(x.batch / (x.p50_ms / 1000))
            assert x.noisy == (x.noise_reason is not None)
    big, small = run.models
    assert [x.speedup for x in big.latency] == [1.0, 1.0]  # the first model is the baseline
    assert small.at(8).speedup == pytest.approx(  # type: ignore[union-attr]
        run.latency("big", 8).p50_ms / run.latency("small", 8).p50_ms  # type: ignore[union-attr]
    )
    # The worker's JSON is the measurement schema itself.
    assert TargetRun.model_validate_json(run.model_dump_json()) == run


def test_one_model_may_spin_and_torch_targets_need_modules(models: list[BenchModel]) -> None:
    target = load_target("cpu-ort").model_copy(update={"batch_sizes": [2], "threads": 1})
    run = measure_target(target, models[:1], SAMPLE, max_seconds=0.05, min_repeats=3)
    assert run.allow_spinning is True
    onnx_only = [BenchModel("x", onnx=models[0].onnx)]
    torch_run = measure_targets(["torch-cpu"], onnx_only, SAMPLE, batch_sizes=[1])[0]
    assert torch_run.skipped and "torch model" in torch_run.skipped


def test_workloads_are_timed_interleaved_and_named(models: list[BenchModel]) -> None:
    """Inputs of varying batch cycled per call (e.g. texts at their real lengths), next to
    no batch sizes at all: every model gets one latency per workload, with its speedup."""
    rng = np.random.default_rng(1)
    feeds = [(rng.standard_normal((3, 1, 8, 8)).astype(np.float32),) for _ in range(2)]
    target = load_target("cpu-ort").model_copy(update={"threads": 1})
    runs = measure_targets(
        [target],
        models,
        SAMPLE,
        batch_sizes=[],
        max_seconds=0.05,
        min_repeats=3,
        workloads=[Workload("real", feeds)],
    )
    (run,) = runs
    for model in run.models:
        (latency,) = model.latency
        assert (latency.batch, latency.workload) == (3, "real") and latency.p50_ms > 0
        assert model.at(3, "real") is latency and model.at(3) is None
    assert run.models[0].latency[0].speedup == 1.0
    assert run.latency("small", 3, "real").speedup is not None  # type: ignore[union-attr]


def test_unavailable_targets_are_reported_with_the_reason(models: list[BenchModel]) -> None:
    runs = measure_targets(GPU_TARGETS, models, SAMPLE, batch_sizes=[1], max_seconds=0.05)
    assert [r.target for r in runs] == GPU_TARGETS  # none silently dropped
    for run in runs:
        reason = target_available(load_target(run.target))
        assert run.skipped == reason
        if reason:
            assert "CUDA" in reason or "onnxruntime" in reason


def test_torch_target_runs_in_its_own_process(models: list[BenchModel]) -> None:
    target = load_target("torch-cpu").model_copy(update={"batch_sizes": [4], "threads": 1})
    run = measure_target(target, models, SAMPLE, max_seconds=0.05, min_repeats=3)
    assert run.skipped is None and run.threads == 1 and run.allow_spinning is None
    assert all(m.latency and m.latency[0].p50_ms > 0 for m in run.models)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_TARGETS)
def test_gpu_targets_measure_on_a_gpu(name: str, models: list[BenchModel]) -> None:
    reason = target_available(load_target(name))
    if reason:
        pytest.skip(f"{name}: {reason}")
    run = measure_targets([name], models, SAMPLE, batch_sizes=[1, 8], max_seconds=0.2)[0]
    assert run.skipped is None, run.skipped
    assert all(len(m.latency) == 2 and m.latency[0].p50_ms > 0 for m in run.models)


FACTORY = '''
import numpy as np


def doubled(open_session, *, path, scale):
    """The graph's output times ``scale``, computed after it (in the timed call)."""
    session = open_session(path)
    name = session.get_inputs()[0].name

    def runner(inputs):
        feed = {name: inputs[0]}
        return lambda: session.run(None, feed)[0] * scale

    return runner
'''


def test_a_factory_opens_a_model_that_needs_adapting(models: list[BenchModel], tmp_path) -> None:
    (tmp_path / "my_runners.py").write_text(FACTORY)
    adapted = BenchModel(
        "adapted",
        factory="my_runners:doubled",
        factory_args={"path": str(models[0].onnx), "scale": 2.0},
        sys_path=(str(tmp_path),),
    )
    target = load_target("cpu-ort").model_copy(update={"batch_sizes": [2], "threads": 1})
    run = measure_target(target, [models[0], adapted], SAMPLE, max_seconds=0.05, min_repeats=3)
    assert [m.name for m in run.models] == ["big", "adapted"]
    assert all(m.error is None and m.latency[0].p50_ms > 0 for m in run.models)
    torch_run = measure_target(
        load_target("torch-cpu").model_copy(update={"batch_sizes": [2]}),
        [adapted],
        SAMPLE,
        max_seconds=0.05,
    )
    assert torch_run.skipped and "torch model" in torch_run.skipped


DENORMAL = '''
import numpy as np
from onnx import TensorProto, helper, numpy_helper


def tiny_product(open_session, *, out):
    """Opens a graph whose output, 1e-20 * 1e-20, is a denormal float, and writes what
    the target's session made of it to ``out``."""
    scale = numpy_helper.from_array(np.array([1e-20], np.float32), "scale")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "denormal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = open_session(model.SerializeToString())
    tiny = np.full((1, 1, 8, 8), 1e-20, np.float32)
    with open(out, "w") as f:
        f.write(repr(float(session.run(None, {"x": tiny})[0].max())))
    return lambda inputs: (lambda: session.run(None, {"x": inputs[0]}))
'''


@pytest.mark.parametrize("flush", [True, False])
def test_the_target_says_whether_denormals_are_flushed(flush: bool, tmp_path) -> None:
    """A masked softmax leaves denormal probabilities; timing sessions flush them to zero
    unless the target says otherwise, and the run records which."""
    (tmp_path / "denormal_runner.py").write_text(DENORMAL)
    out = tmp_path / "product.txt"
    row = BenchModel(
        "tiny",
        factory="denormal_runner:tiny_product",
        factory_args={"out": str(out)},
        sys_path=(str(tmp_path),),
    )
    target = load_target("cpu-ort").model_copy(
        update={"batch_sizes": [1], "threads": 1, "denormal_as_zero": flush}
    )
    run = measure_target(target, [row], SAMPLE, max_seconds=0.05, min_repeats=3)
    assert run.models[0].error is None and run.denormal_as_zero is flush
    product = float(out.read_text())
    assert (product == 0.0) if flush else (0.0 < product < 1e-38)
