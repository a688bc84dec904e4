"""Measure several models on several targets: one worker subprocess per target.

Example::

    runs = measure_targets(
        ["cpu-ort"], [BenchModel("baseline", "a.onnx"), BenchModel("int8", "b.onnx")],
        sample, batch_sizes=[1, 32])
    runs[0].latency("int8", 32).speedup      # baseline p50 / int8 p50, same run

Results are in the measurement schema (:mod:`compresskit.bench.measurement`).

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

from compresskit import interrupts
from compresskit.bench.measurement import ModelRun, Session, TargetRun
from compresskit.bench.report import Entry, add_measurements
from compresskit.bench.worker import Workload
from compresskit.errors import CompressKitError
from compresskit.export.targets import Target, load_target, target_available
from compresskit.progress import progress_bar, status

ModelKind = Literal["onnx", "module", "checkpoint", "factory"]

__all__ = ["BenchModel", "ModelRun", "TargetRun", "Workload", "measure_target", "measure_targets"]


@dataclass(frozen=True)
class BenchModel:
    """A model to measure: an ONNX file for ORT targets; for torch targets a module
    (``module``, saved for the worker) or a checkpoint that ``load_model`` reads.

    ``factory`` (``module:function``) opens a model whose inputs need adapting on ORT
    targets: ``function(open_session, **factory_args)`` returns the runner (see
    :mod:`compresskit.bench.worker`). ``sys_path``: folders the worker imports from (the
    factory's module, the classes of a pickled ``module``)."""

    name: str
    onnx: Path | None = None
    module: Any = None  # torch.nn.Module
    checkpoint: Path | None = None
    arch: str | None = None
    trust_pickle: bool = False
    trust_factory: bool = False
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    sys_path: tuple[str, ...] = ()
    # Its own inputs (an ONNX file's signature) instead of the shared sample: one sample
    # per input, the batch the graph fixes, and whether it has a sequence axis.
    sample: list[np.ndarray] | None = None
    fixed_batch: int | None = None
    dynamic_sequence: bool | None = None


def _spec(model: BenchModel, target: Target, workdir: Path) -> dict[str, Any] | str:
    """The worker's description of ``model`` for ``target``, or why it cannot run there."""
    if target.runtime == "onnxruntime":
        if model.factory is not None:
            return {
                "name": model.name,
                "kind": "factory",
                "factory": model.factory,
                "args": model.factory_args,
                "sys_path": list(model.sys_path),
            }
        if model.onnx is None:
            return "no ONNX file for an onnxruntime target"
        return {
            "name": model.name,
            "kind": "onnx",
            "path": str(model.onnx),
            "fixed_batch": model.fixed_batch,
            "dynamic_sequence": model.dynamic_sequence,
        }
    if model.module is None and model.checkpoint is None:
        return "torch targets measure a torch model; only an ONNX file was given"
    spec = _torch_spec(model, workdir)
    spec["sys_path"] = list(model.sys_path)
    return spec


def _torch_spec(model: BenchModel, workdir: Path) -> dict[str, Any]:
    if model.module is not None:
        import torch

        path = workdir / f"{len(list(workdir.iterdir()))}.pt"
        torch.save(model.module, path)  # read back only by our own worker
        return {"name": model.name, "kind": "module", "path": str(path)}
    return {
        "name": model.name,
        "kind": "checkpoint",
        "path": str(model.checkpoint),
        "arch": model.arch,
        "trust_pickle": model.trust_pickle,
        "trust_factory": model.trust_factory,
    }


def measure_target(
    target: Target,
    models: Sequence[BenchModel],
    sample: Sequence[np.ndarray],
    *,
    max_seconds: float = 1.0,
    dynamic_sequence: bool = False,
    min_repeats: int = 20,
    workloads: Sequence[Workload] = (),
    profile: bool = False,
) -> TargetRun:
    """Measure ``models`` (the first is the baseline) on ``target`` in one subprocess:
    at each of the target's batch sizes on ``sample``, then on each workload. With
    ``profile``, ONNX Runtime targets also say where each model's time goes (each
    :class:`~compresskit.bench.measurement.ModelRun`'s ``profiles``)."""
    started = time.perf_counter()
    run = _unmeasured(target)
    reason = target_available(target)
    if reason:
        run.skipped = reason
        return run
    with tempfile.TemporaryDirectory(prefix="compresskit-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "modules").mkdir()
        specs, unusable = [], {}
        arrays = {f"arr_{i}": x for i, x in enumerate(sample)}
        for index, model in enumerate(models):
            spec = _spec(model, target, workdir / "modules")
            if isinstance(spec, str):
                unusable[model.name] = spec
                continue
            if model.sample is not None:
                spec |= {"sample_key": f"m{index}", "sample_inputs": len(model.sample)}
                arrays |= {f"m{index}_{k}": x for k, x in enumerate(model.sample)}
            specs.append(spec)
        if not specs:
            run.skipped = next(iter(unusable.values()))
            return run
        for i, workload in enumerate(workloads):
            for f, feed in enumerate(workload.feeds):
                arrays |= {f"w{i}_{f}_{k}": x for k, x in enumerate(feed)}
        np.savez(workdir / "inputs.npz", **arrays)  # type: ignore[arg-type]
        job = {
            # The batch sizes travel apart: [] (workloads only) is no valid Target.
            "target": target.model_dump(exclude={"batch_sizes"}),
            "models": specs,
            "inputs": str(workdir / "inputs.npz"),
            "sample_inputs": len(sample),
            "workloads": [
                {"name": w.name, "feeds": len(w.feeds), "inputs": len(w.feeds[0])}
                for w in workloads
            ],
            "batch_sizes": target.batch_sizes,
            "max_seconds": max_seconds,
            "min_repeats": min_repeats,
            "dynamic_sequence": dynamic_sequence,
            "profile": profile,
        }
        (workdir / "job.json").write_text(json.dumps(job))
        steps = len(specs) + len(target.batch_sizes) + len(workloads)
        run = _run_worker(workdir, target, steps)
    run.models += [  # cannot run on this kind of target: not timed, and not a failure
        ModelRun(name=name, session=Session(target=target.name), skipped=[why])
        for name, why in unusable.items()
    ]
    run.add_speedups(models[0].name)
    run.seconds = time.perf_counter() - started
    return run


def _unmeasured(target: Target, skipped: str | None = None) -> TargetRun:
    return TargetRun(
        target=target.name,
        runtime=target.runtime,
        provider=target.provider,
        precision=target.precision,
        skipped=skipped,
    )


def _run_worker(workdir: Path, target: Target, steps: int) -> TargetRun:
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
        try:
            for line in process.stderr:
                interrupts.check()
                if line.startswith("@@progress"):
                    bar.update(TaskID(0), completed=int(line.split()[1]))
                else:
                    log.append(line)
            process.wait()
        except BaseException:  # interrupted (SIGTERM, Ctrl-C): stop the worker too
            process.kill()
            raise
    if process.returncode != 0 or not (workdir / "result.json").exists():
        tail = "".join(log[-20:]).strip().splitlines()
        raise CompressKitError(
            f"the benchmark worker for target {target.name} failed: "
            f"{tail[-1] if tail else f'exit code {process.returncode}'}"
        )
    return TargetRun.model_validate_json((workdir / "result.json").read_text())


def measure_targets(
    targets: Sequence[str | Target],
    models: Sequence[BenchModel],
    sample: Sequence[np.ndarray],
    *,
    batch_sizes: Sequence[int] | None = None,
    max_seconds: float = 1.0,
    dynamic_sequence: bool = False,
    min_repeats: int = 20,
    workloads: Sequence[Workload] = (),
    profile: bool = False,
) -> list[TargetRun]:
    """:func:`measure_target` on each target (by name or object), one after the other;
    unavailable targets come back with ``skipped`` set to the reason. ``batch_sizes``
    replaces the targets' own (``[]``: time the workloads only)."""
    runs = []
    for item in targets:
        target = item if isinstance(item, Target) else load_target(item)
        if batch_sizes is not None:
            target = target.model_copy(update={"batch_sizes": list(batch_sizes)})
        reason = target_available(target)
        if reason:
            status(f"target {target.name} skipped: {reason}")
            runs.append(_unmeasured(target, reason))
            continue
        inputs = [f"batch {b}" for b in target.batch_sizes] + [w.name for w in workloads]
        status(
            f"measuring {len(models)} model(s) on {target.name}, {', '.join(inputs)} "
            f"(up to {max_seconds:g} s each)"
        )
        run = measure_target(
            target,
            models,
            sample,
            max_seconds=max_seconds,
            dynamic_sequence=dynamic_sequence,
            min_repeats=min_repeats,
            workloads=workloads,
            profile=profile,
        )
        if run.skipped:
            status(f"target {target.name} skipped: {run.skipped}")
        elif run.noisy:
            status(f"{target.name}: noisy machine ({'; '.join(run.noise_reasons)})", style="yellow")
        runs.append(run)
    return runs


def measure_entries(
    entries: list[Entry],
    models: Sequence[tuple[str, Any]],
    onnx_paths: dict[str, Path],
    sample: Sequence[np.ndarray],
    *,
    targets: Sequence[str],
    batch_sizes: Sequence[int],
    sequence_length: int | None = None,
    max_seconds: float = 1.0,
    dynamic_sequence: bool = False,
    profile: bool = False,
    max_sequence_length: int | None = None,
) -> list[TargetRun]:
    """A run's models (``(name, torch module)``, baseline first; ORT targets time their
    ONNX files) on every target at ``batch_sizes``, added to the report ``entries``.
    Text is timed at ``sequence_length`` (else each target's own), never longer than
    ``max_sequence_length``, the positions the model has."""
    loaded = []
    for name in targets:
        update: dict[str, Any] = {"batch_sizes": list(batch_sizes)}
        target = load_target(name)
        length = sequence_length or target.sequence_length
        if dynamic_sequence and length and max_sequence_length and length > max_sequence_length:
            status(
                f"{name}: timing text at {max_sequence_length} tokens, the model's positions "
                f"(not {length})"
            )
            length = max_sequence_length
        if length is not None:
            update["sequence_length"] = length
        loaded.append(target.model_copy(update=update))
    runs = measure_targets(
        loaded,
        [BenchModel(name, onnx=onnx_paths.get(name), module=module) for name, module in models],
        sample,
        max_seconds=max_seconds,
        dynamic_sequence=dynamic_sequence,
        profile=profile,
    )
    add_measurements(entries, runs)
    return runs
