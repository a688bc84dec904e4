"""The latency probe the run hands to passes: export a model, time it on a target.

Example::

    ctx = Context(data, teacher, example, latency_probe=measure_p50)
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from compresskit.bench.harness import BenchModel, measure_target
from compresskit.bench.measurement import TargetRun
from compresskit.context import ModelCost
from compresskit.errors import CompressKitError
from compresskit.export.onnx import export_onnx
from compresskit.export.targets import load_target, target_available


def measure_p50(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    target: str,
    batch: int,
    seconds: float,
    dynamic_sequence: bool,
) -> float:
    """p50 ms of ``model`` at ``batch`` on ``target`` (exported to ONNX for an ORT target,
    eager for a torch one), measured in the benchmark worker."""
    (p50,) = measure_p50s(
        [model],
        example_inputs,
        target=target,
        batch=batch,
        seconds=seconds,
        dynamic_sequence=dynamic_sequence,
    )
    return p50


def measure_p50s(
    models: Sequence[nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    *,
    target: str,
    batch: int,
    seconds: float,
    dynamic_sequence: bool,
) -> list[float]:
    """Each model's p50 ms, measured interleaved in one benchmark worker, as the run and
    the benchmarks measure: a model timed alone keeps its weights in cache between calls,
    which flatters a small model against a large one."""
    run, names = _interleaved(
        models, example_inputs, target, batch, seconds, dynamic_sequence, profile=False
    )
    p50s = []
    for name in names:
        latency = run.latency(name, batch)
        if latency is None:
            measured = run.model(name)
            why = run.skipped or (measured.error if measured else None) or "no result"
            raise CompressKitError(f"latency target: could not measure a model ({why})")
        p50s.append(latency.p50_ms)
    return p50s


def measure_costs(
    models: Sequence[nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    *,
    target: str,
    batch: int,
    seconds: float,
    dynamic_sequence: bool,
) -> list[ModelCost]:
    """Each model's p50 ms at ``batch`` on ``target`` and its kernel ms per torch module,
    measured interleaved in one benchmark worker. ONNX Runtime targets time ONNX files
    all written by the TorchScript exporter, whose scopes name the same modules in a
    float and a quantized model."""
    run, names = _interleaved(
        models, example_inputs, target, batch, seconds, dynamic_sequence, profile=True
    )
    costs = []
    for name in names:
        measured = run.model(name)
        latency = measured.at(batch) if measured else None
        if measured is None or latency is None:
            why = run.skipped or (measured.error if measured else None) or "no result"
            raise CompressKitError(f"profile probe: could not measure a model on {target} ({why})")
        profile = measured.profile_at(batch)
        costs.append(ModelCost(latency.p50_ms, profile.layer_ms() if profile else {}))
    return costs


def _interleaved(
    models: Sequence[nn.Module],
    example_inputs: tuple[torch.Tensor, ...],
    target: str,
    batch: int,
    seconds: float,
    dynamic_sequence: bool,
    *,
    profile: bool,
) -> tuple[TargetRun, list[str]]:
    """Export ``models`` (for an ORT target) and time them interleaved in one worker;
    ``profile``: also ORT's per-node profile, from TorchScript exports whose scopes name
    the torch modules."""
    spec = load_target(target)
    reason = target_available(spec)
    if reason:
        what = "profile" if profile else "latency"
        raise CompressKitError(f"{what} target {target}: {reason}; choose another target")
    spec = spec.model_copy(update={"batch_sizes": [batch]})
    names = [f"model{index}" for index in range(len(models))]
    with tempfile.TemporaryDirectory(prefix="compresskit-probe-") as tmp:
        bench_models = []
        for name, model in zip(names, models, strict=True):
            path = None
            if spec.runtime == "onnxruntime":
                path = export_onnx(
                    model,
                    example_inputs,
                    Path(tmp) / f"{name}.onnx",
                    exporter="legacy" if profile else "auto",
                    dynamic_sequence=dynamic_sequence,
                ).path
            bench_models.append(BenchModel(name, onnx=path, module=model))
        run = measure_target(
            spec,
            bench_models,
            [x.numpy() for x in example_inputs],
            max_seconds=seconds,
            dynamic_sequence=dynamic_sequence,
            profile=profile,
        )
    return run, names
