"""Measure several models on several targets: one worker subprocess per target.

>>> runs = measure_targets(                                      # doctest: +SKIP
...     ["cpu-ort"], [BenchModel("baseline", "a.onnx"), BenchModel("int8", "b.onnx")],
...     sample, batch_sizes=[1, 32])
>>> runs[0].latency("int8", 32).speedup      # baseline p50 / int8 p50, same run

The first model is the baseline: every other model's speedup is the baseline's p50 over
its own p50 at the same batch, measured interleaved in the same process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.progress import TaskID

from compresskit.bench.latency import Latency
from compresskit.errors import CompressKitError
from compresskit.export.targets import Target, load_target, target_available
from compresskit.progress import progress_bar, status

ModelKind = Literal["onnx", "module", "checkpoint"]


@dataclass(frozen=True)
class BenchModel:
    """A model to measure: an ONNX file for ORT targets; for torch targets a module
    (``module``, saved for the worker) or a checkpoint that ``load_model`` reads."""

    name: str
    onnx: Path | None = None
    module: Any = None  # torch.nn.Module
    checkpoint: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False


@dataclass
class ModelRun:
    """One model on one target: latency per batch, load time and memory."""

    name: str
    latency: list[Latency] = field(default_factory=list)
    speedup: dict[int, float] = field(default_factory=dict)
    load_ms: float | None = None
    rss_delta_mb: float | None = None
    peak_rss_delta_mb: float | None = None
    error: str | None = None  # why this model could not be measured here


@dataclass
class TargetRun:
    """Everything measured on one target, with its thread settings and noise verdict."""

    target: str
    runtime: str
    provider: str
    precision: str
    skipped: str | None = None
    threads: int | None = None
    inter_op_threads: int | None = None
    allow_spinning: bool | None = None
    noisy: bool = False
    noise_reasons: list[str] = field(default_factory=list)
    models: list[ModelRun] = field(default_factory=list)
    seconds: float = 0.0

    def model(self, name: str) -> ModelRun | None:
        return next((m for m in self.models if m.name == name), None)

    def latency(self, name: str, batch: int) -> Latency | None:
        model = self.model(name)
        return next((x for x in model.latency if x.batch == batch), None) if model else None


def _spec(model: BenchModel, target: Target, workdir: Path) -> dict[str, Any] | str:
    """The worker's description of ``model`` for ``target``, or why it cannot run there."""
    if target.runtime == "onnxruntime":
        if model.onnx is None:
            return "no ONNX file for an onnxruntime target"
        return {"name": model.name, "kind": "onnx", "path": str(model.onnx)}
    if model.module is not None:
        import torch

        path = workdir / f"{len(list(workdir.iterdir()))}.pt"
        torch.save(model.module, path)  # read back only by our own worker
        return {"name": model.name, "kind": "module", "path": str(path)}
    if model.checkpoint is not None:
        return {
            "name": model.name,
            "kind": "checkpoint",
            "path": str(model.checkpoint),
            "arch": model.arch,
            "trust_pickle": model.trust_pickle,
        }
    return "torch targets measure a torch model; only an ONNX file was given"


def measure_target(
    target: Target,
    models: Sequence[BenchModel],
    sample: Sequence[np.ndarray],
    *,
    max_seconds: float = 1.0,
    dynamic_sequence: bool = False,
    min_repeats: int = 20,
) -> TargetRun:
    """Measure ``models`` (the first is the baseline) on ``target`` in one subprocess."""
    started = time.perf_counter()
    run = TargetRun(target.name, target.runtime, target.provider, target.precision)
    reason = target_available(target)
    if reason:
        run.skipped = reason
        return run
    with tempfile.TemporaryDirectory(prefix="compresskit-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "modules").mkdir()
        specs, unusable = [], {}
        for model in models:
            spec = _spec(model, target, workdir / "modules")
            if isinstance(spec, str):
                unusable[model.name] = spec
            else:
                specs.append(spec)
        if not specs:
            run.skipped = next(iter(unusable.values()))
            return run
        np.savez(workdir / "inputs.npz", *sample)  # arr_0, arr_1, ...
        job = {
            "target": target.model_dump(),
            "models": specs,
            "inputs": str(workdir / "inputs.npz"),
            "batch_sizes": target.batch_sizes,
            "max_seconds": max_seconds,
            "min_repeats": min_repeats,
            "dynamic_sequence": dynamic_sequence,
        }
        (workdir / "job.json").write_text(json.dumps(job))
        result = _run_worker(workdir, target, len(specs) + len(target.batch_sizes))
    run = _target_run(result)
    run.models += [ModelRun(name, error=why) for name, why in unusable.items()]
    _add_speedups(run, models[0].name)
    run.seconds = time.perf_counter() - started
    return run


def _run_worker(workdir: Path, target: Target, steps: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "compresskit.bench.worker",
        str(workdir / "job.json"),
        str(workdir / "result.json"),
    ]
    log: list[str] = []
    with (
        progress_bar(f"measuring on {target.name}", steps) as bar,
        subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process,
    ):
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("@@progress"):
                bar.update(TaskID(0), completed=int(line.split()[1]))
            else:
                log.append(line)
        process.wait()
    if process.returncode != 0 or not (workdir / "result.json").exists():
        tail = "".join(log[-20:]).strip().splitlines()
        raise CompressKitError(
            f"the benchmark worker for target {target.name} failed: "
            f"{tail[-1] if tail else f'exit code {process.returncode}'}"
        )
    return json.loads((workdir / "result.json").read_text())


def _target_run(result: dict[str, Any]) -> TargetRun:
    noise = result.get("noise") or {}
    run = TargetRun(
        target=result["target"],
        runtime=result["runtime"],
        provider=result["provider"],
        precision=result["precision"],
        skipped=result.get("skipped"),
        threads=result.get("threads"),
        inter_op_threads=result.get("inter_op_threads"),
        allow_spinning=result.get("allow_spinning"),
        noisy=bool(noise.get("noisy")),
        noise_reasons=list(noise.get("reasons") or []),
    )
    for entry in result.get("models", []):
        run.models.append(
            ModelRun(
                name=entry["name"],
                latency=[Latency(**x) for x in entry["latency"]],
                load_ms=entry.get("load_ms"),
                rss_delta_mb=entry.get("rss_delta_mb"),
                peak_rss_delta_mb=entry.get("peak_rss_delta_mb"),
                error=entry.get("error"),
            )
        )
    return run


def _add_speedups(run: TargetRun, baseline: str) -> None:
    base = run.model(baseline)
    if base is None:
        return
    for model in run.models:
        for latency in model.latency:
            reference = run.latency(baseline, latency.batch)
            if reference is not None and latency.p50_ms > 0:
                model.speedup[latency.batch] = reference.p50_ms / latency.p50_ms


def measure_targets(
    targets: Sequence[str | Target],
    models: Sequence[BenchModel],
    sample: Sequence[np.ndarray],
    *,
    batch_sizes: Sequence[int] | None = None,
    max_seconds: float = 1.0,
    dynamic_sequence: bool = False,
) -> list[TargetRun]:
    """:func:`measure_target` on each target (by name or object), one after the other;
    unavailable targets come back with ``skipped`` set to the reason."""
    runs = []
    for item in targets:
        target = item if isinstance(item, Target) else load_target(item)
        if batch_sizes:
            target = target.model_copy(update={"batch_sizes": list(batch_sizes)})
        reason = target_available(target)
        if reason:
            status(f"target {target.name} skipped: {reason}")
            runs.append(
                TargetRun(target.name, target.runtime, target.provider, target.precision, reason)
            )
            continue
        status(
            f"measuring {len(models)} model(s) on {target.name}, batch "
            f"{', '.join(map(str, target.batch_sizes))} (up to {max_seconds:g} s each)"
        )
        run = measure_target(
            target,
            models,
            sample,
            max_seconds=max_seconds,
            dynamic_sequence=dynamic_sequence,
        )
        if run.skipped:
            status(f"target {target.name} skipped: {run.skipped}")
        elif run.noisy:
            status(
                f"[yellow]{target.name}: noisy machine[/yellow] ({'; '.join(run.noise_reasons)})"
            )
        runs.append(run)
    return runs
