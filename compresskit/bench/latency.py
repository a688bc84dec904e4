"""Latency of a model on a target: warm-up, then timed repeats, as p50/p90 in ms."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compresskit.export.targets import Target


@dataclass(frozen=True)
class Latency:
    """One measurement: a model on a target at a batch size."""

    target: str
    batch: int
    p50_ms: float
    p90_ms: float
    repeats: int


def time_calls(
    fn: Callable[[], object], *, warmup: int = 5, min_repeats: int = 20, max_seconds: float = 1.0
) -> np.ndarray:
    """Seconds per call: ``warmup`` untimed calls, then at least ``min_repeats`` timed ones,
    more while under ``max_seconds`` (up to 1000)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < min_repeats or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def onnx_session(path: Path, target: Target):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if target.threads:
        options.intra_op_num_threads = target.threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[target.provider])


def batch_of(sample: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """``batch`` real samples of every input, cycling through ``sample`` if it has fewer."""
    reps = -(-batch // sample[0].shape[0])
    return tuple(x.repeat(reps, *([1] * (x.dim() - 1)))[:batch].contiguous() for x in sample)


def measure(
    target: Target,
    sample: tuple[torch.Tensor, ...],
    *,
    onnx_path: Path | None = None,
    model: nn.Module | None = None,
    max_seconds: float = 1.0,
) -> list[Latency]:
    """Latency at each of the target's batch sizes (ONNX file for ORT, module for torch)."""
    if target.runtime == "onnxruntime" and onnx_path is None:
        raise ValueError(f"target {target.name} measures an ONNX file; none given")
    if target.runtime == "torch" and model is None:
        raise ValueError(f"target {target.name} measures a torch module; none given")
    session = onnx_session(onnx_path, target) if onnx_path is not None else None
    results = []
    for batch in target.batch_sizes:
        inputs = batch_of(sample, batch)
        runner: Callable[[], object]
        if target.runtime == "onnxruntime":
            assert session is not None
            names = [i.name for i in session.get_inputs()]
            feed = {name: x.numpy() for name, x in zip(names, inputs, strict=True)}

            def runner(feed: dict[str, np.ndarray] = feed) -> object:
                assert session is not None
                return session.run(None, feed)
        else:
            assert model is not None
            device = torch.device(target.provider)
            module = model.to(device).eval()
            on_device = tuple(x.to(device) for x in inputs)

            def runner(module: nn.Module = module, args: tuple = on_device) -> object:
                with torch.inference_mode():
                    return module(*args)

        threads = torch.get_num_threads()
        if target.runtime == "torch" and target.threads:
            torch.set_num_threads(target.threads)
        try:
            times = time_calls(runner, max_seconds=max_seconds) * 1000
        finally:
            torch.set_num_threads(threads)
        results.append(
            Latency(
                target.name,
                batch,
                float(np.percentile(times, 50)),
                float(np.percentile(times, 90)),
                len(times),
            )
        )
    return results
