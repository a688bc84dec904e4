"""The benchmark worker: measures every model of a job on ONE target, in its own process.

``python -m compresskit.bench.worker JOB.json RESULT.json``. One process per target keeps
runtimes from distorting each other (torch's OpenMP pool, ORT's spinning threads), and
one process for all models of a target keeps their ratio honest (interleaved timing,
same process state). An ONNX Runtime job never imports torch.

Progress goes to stderr as ``@@progress DONE TOTAL`` lines; the result is a
:class:`~compresskit.bench.measurement.TargetRun` as JSON. With ``"profile": true`` in the
job, ONNX Runtime targets are profiled after the timing (:mod:`compresskit.bench.profile_runs`).

A model of kind ``factory`` (ONNX Runtime targets) is opened by ``module:function``
(``function(open_session, **args) -> Runner``) for models whose inputs need adapting:
``open_session(path)`` gives a session with the target's settings.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compresskit.bench.latency import batch_of, summarize, time_interleaved
from compresskit.bench.measurement import ModelRun, Profile, Session, TargetRun
from compresskit.bench.noise import MAX_CV, assess, sample_machine, usable_cores
from compresskit.bench.profile_runs import ProfilingSessions, profile_plans
from compresskit.export.targets import Target

Inputs = tuple[np.ndarray, ...]
# Opens a model: given inputs, the call to time.
Runner = Callable[[Inputs], Callable[[], object]]


@dataclass(frozen=True)
class Workload:
    """Named inputs to time every model on, cycled call after call (e.g. batches of text
    at their real lengths); the first feed's first axis is the batch size reported."""

    name: str
    feeds: list[Inputs]

    @property
    def batch(self) -> int:
        return int(self.feeds[0][0].shape[0])


class TargetUnavailable(Exception):
    """The target cannot run here (e.g. ORT fell back from the requested provider)."""


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in kB, when Linux tells."""
    values = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    values[key] = int(value.split()[0])
    except OSError:
        pass
    return values


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _ort_loader(
    target: Target,
    spinning: bool,
    threads: int,
    cache_dir: str,
    profiling: ProfilingSessions | None = None,
) -> Callable[[dict], Any]:
    import onnxruntime as ort

    def open_session(model: Any) -> Any:
        return _ort_session(ort, target, spinning, threads, model, cache_dir, profiling)

    def load(spec: dict) -> Runner:
        sys.path[:0] = spec.get("sys_path", [])
        if spec["kind"] == "factory":  # a model that needs its own feeding (benchmarks)
            module, _, name = spec["factory"].partition(":")
            factory = getattr(importlib.import_module(module), name)
            return factory(open_session, **spec.get("args", {}))
        return session_runner(open_session(spec["path"]))

    if profiling is not None:
        return load  # the runtime is started: this worker has timed its models
    # Start the runtime (environment, thread pools, allocator) on a one-node graph, so
    # that the first model's load time and memory do not include this one-off cost.
    try:
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "prime",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        prime = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        session_runner(open_session(prime.SerializeToString()))((np.ones(1, np.float32),))()
    except Exception:  # priming is an accuracy nicety; the measurement itself decides
        pass
    return load


def _ort_session(
    ort: Any,
    target: Target,
    spinning: bool,
    threads: int,
    model: Any,
    cache_dir: str,
    profiling: ProfilingSessions | None = None,
) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    # ORT applies the first session's setting to this (the calling) thread for the whole
    # process, and each session's to its own pool: every session here asks the same.
    options.add_session_config_entry(
        "session.set_denormal_as_zero", str(int(target.denormal_as_zero))
    )
    options.log_severity_level = 3
    provider: Any = target.provider
    if target.provider == "TensorrtExecutionProvider":
        provider = (
            target.provider,
            {
                "trt_fp16_enable": target.precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache_dir,
            },
        )
    # GPU providers hand the nodes they lack to the CPU, as in deployment.
    providers = [provider]
    if target.provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    optimized = profiling.configure(options) if profiling is not None else None
    session = ort.InferenceSession(model, options, providers=providers)
    if profiling is not None:
        profiling.opened_session(session, model, optimized)
    if session.get_providers()[0] != target.provider:
        raise TargetUnavailable(
            f"ONNX Runtime could not run {target.provider} here (the session got "
            f"{', '.join(session.get_providers())})"
        )
    return session


def session_runner(session: Any) -> Runner:
    """Inputs fed to the session's graph inputs in order, whatever their names."""
    names = [i.name for i in session.get_inputs()]

    def runner(inputs: Inputs) -> Callable[[], object]:
        feed = dict(zip(names, inputs, strict=True))
        return lambda: session.run(None, feed)

    return runner


def _torch_loader(target: Target, threads: int) -> Callable[[dict], Any]:
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(target.denormal_as_zero)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (only possible before any parallel work)
    device = torch.device(target.provider)
    cuda = device.type == "cuda"
    half = target.precision == "fp16"
    # start the runtime (thread pool, CUDA context) before the first model is timed
    with torch.inference_mode():
        (torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)).sum().item()

    def load(spec: dict) -> Runner:
        sys.path[:0] = spec.get("sys_path", [])  # the classes of a pickled module
        if spec["kind"] == "module":  # our own file, written by the parent for this job
            model = torch.load(spec["path"], map_location="cpu", weights_only=False)
        else:
            from compresskit.models.loading import load_model

            model = load_model(
                spec["path"], arch=spec.get("arch"), trust_pickle=spec.get("trust_pickle", False)
            ).model
        model = model.to(device).eval()

        def runner(inputs: tuple[np.ndarray, ...]) -> Callable[[], object]:
            args = tuple(torch.from_numpy(x).to(device) for x in inputs)

            def call() -> object:
                with torch.inference_mode(), torch.autocast(device.type, enabled=half):
                    out = model(*args)
                if cuda:
                    torch.cuda.synchronize()
                return out

            return call

        return runner

    return load


def _load_inputs(
    path: str, job: dict[str, Any]
) -> tuple[Inputs, list[Workload], dict[str, Inputs]]:
    """The shared sample (``arr_0``, ``arr_1``, ...), the named workloads
    (``w{i}_{feed}_{input}``) and the models' own samples (``{key}_{input}``) of
    ``inputs.npz``."""
    with np.load(path) as data:
        sample = tuple(data[f"arr_{i}"] for i in range(job.get("sample_inputs", 0)))
        workloads = [
            Workload(
                spec["name"],
                [
                    tuple(data[f"w{i}_{f}_{k}"] for k in range(spec["inputs"]))
                    for f in range(spec["feeds"])
                ],
            )
            for i, spec in enumerate(job.get("workloads", []))
        ]
        own = {
            spec["name"]: tuple(
                data[f"{spec['sample_key']}_{k}"] for k in range(spec["sample_inputs"])
            )
            for spec in job["models"]
            if "sample_key" in spec
        }
    return sample, workloads, own


def _cycle(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One call per invocation, going round ``calls`` (inputs of varying shape)."""
    index = itertools.count()
    return lambda: calls[next(index) % len(calls)]()


def _one_line(error: BaseException) -> str:
    """An exception as one line (ONNX Runtime's messages run over many)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]


# What a model is timed on: (batch, workload name, the inputs cycled).
Plan = tuple[int, str | None, list[Inputs]]


def _plans(
    spec: dict[str, Any],
    sample: Inputs,
    batch_sizes: list[int],
    workloads: list[Workload],
    sequence: int | None,
) -> tuple[list[Plan | None], list[str]]:
    """The model's inputs per batch size (its own sample when it has one) and workload;
    None, with a reason, where its graph fixes another batch size."""
    fixed = spec.get("fixed_batch")
    if spec.get("dynamic_sequence") is False:
        sequence = None
    plans: list[Plan | None] = []
    skipped = []
    for batch in batch_sizes:
        if fixed is not None and batch != fixed:
            plans.append(None)
            skipped.append(f"batch {batch}: the model's graph fixes the batch size at {fixed}")
        else:
            plans.append((batch, None, [batch_of(sample, batch, sequence=sequence)]))
    plans += [(w.batch, w.name, w.feeds) for w in workloads]
    return plans, skipped


def run_job(job: dict[str, Any]) -> TargetRun:
    """Measure the job's models on its target."""
    target = Target.model_validate(job["target"])
    models: list[dict] = job["models"]
    sample, workloads, own = _load_inputs(job["inputs"], job)
    threads = target.threads or usable_cores()
    spinning = target.allow_spinning
    if spinning is None:
        spinning = len(models) == 1
    result = TargetRun(
        target=target.name,
        runtime=target.runtime,
        provider=target.provider,
        precision=target.precision,
        threads=threads,
        inter_op_threads=1,
        allow_spinning=spinning if target.runtime == "onnxruntime" else None,
        denormal_as_zero=target.denormal_as_zero,
    )
    batch_sizes: list[int] = job["batch_sizes"]
    total = len(models) + len(batch_sizes) + len(workloads)
    done = 0

    def progress() -> None:
        print(f"@@progress {done} {total}", file=sys.stderr, flush=True)

    sequence = target.sequence_length if job.get("dynamic_sequence") else None
    load = (
        _ort_loader(target, spinning, threads, str(Path(job["inputs"]).parent))
        if target.runtime == "onnxruntime"
        else _torch_loader(target, threads)
    )
    # Per model: the runner (None: failed) and its inputs per plan (None: cannot take it).
    loaded: list[tuple[Runner | None, list[Plan | None]]] = []
    for spec in models:
        session = Session(target=target.name)
        model_run = ModelRun(name=spec["name"], session=session)
        has_peak = _reset_peak()
        before = _proc_status()
        start = time.perf_counter()
        runner: Runner | None
        plans: list[Plan | None] = []
        try:
            plans, model_run.skipped = _plans(
                spec, own.get(spec["name"], sample), batch_sizes, workloads, sequence
            )
            runner = load(spec)
            session.load_ms = (time.perf_counter() - start) * 1000
            for plan in plans:  # one call per shape: memory the runs need too
                if plan is not None:
                    runner(plan[2][0])()
        except TargetUnavailable as error:
            result.skipped = str(error)
            return result
        except Exception as error:
            session.error = _one_line(error)
            runner = None
        after = _proc_status()
        if "VmRSS" in before and "VmRSS" in after:
            session.rss_delta_mb = (after["VmRSS"] - before["VmRSS"]) / 1024
            if has_peak and "VmHWM" in after:
                session.peak_rss_delta_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
        loaded.append((runner, plans))
        result.models.append(model_run)
        done += 1
        progress()

    before_all = sample_machine()
    for index in range(len(batch_sizes) + len(workloads)):
        live = []
        for model, (runner, plans) in zip(result.models, loaded, strict=True):
            plan = plans[index] if plans else None
            if runner is not None and plan is not None:
                live.append((model, runner, plan))
        if live:
            _time_plan(live, target, job)
        done += 1
        progress()
    machine = assess(before_all, sample_machine())
    result.noisy, result.noise_reasons = machine.noisy, list(machine.reasons)
    if job.get("profile") and target.runtime == "onnxruntime":
        kept = [
            (spec, plans) for spec, (runner, plans) in zip(models, loaded, strict=True) if runner
        ]
        profiles = _profile(
            job, target, spinning, threads, [s for s, _ in kept], [p for _, p in kept]
        )
        for model in result.models:
            model.profiles = profiles.get(model.name, [])
    return result


def _profile(
    job: dict[str, Any],
    target: Target,
    spinning: bool,
    threads: int,
    specs: list[dict],
    plans: list[list[Plan | None]],
) -> dict[str, list[Profile]]:
    """Where each model's time goes on each plan: fresh profiling sessions, the target's
    settings, calls interleaved (:func:`compresskit.bench.profile_runs.profile_plans`)."""
    workdir = Path(job["inputs"]).parent

    def open_call(
        spec: dict, sessions: ProfilingSessions, feeds: list[Inputs]
    ) -> Callable[[], object]:
        runner = _ort_loader(target, spinning, threads, str(workdir), sessions)(spec)
        return _cycle([runner(feed) for feed in feeds])

    return profile_plans(
        specs,
        plans,
        open_call,
        target=target.name,
        workdir=workdir,
        runs=job.get("profile_runs", 10),
        max_seconds=job["max_seconds"],
    )


def _time_plan(
    live: list[tuple[ModelRun, Runner, Plan]], target: Target, job: dict[str, Any]
) -> None:
    """Time the models that can take one plan together, interleaved."""
    machine_before = sample_machine()
    series = time_interleaved(
        [_cycle([runner(feed) for feed in plan[2]]) for _, runner, plan in live],
        min_repeats=job.get("min_repeats", 20),
        max_seconds=job["max_seconds"],
    )
    noise = assess(machine_before, sample_machine())
    for (model, _, (batch, workload, _)), timed in zip(live, series, strict=True):
        latency = summarize(target.name, batch, timed.times, stable=timed.stable, workload=workload)
        reasons = list(noise.reasons)
        if latency.cv is not None and latency.cv > MAX_CV:
            reasons.append(f"timings vary (robust CV {latency.cv:.0%})")
        if not timed.stable:
            reasons.append(f"median not stable after {timed.seconds:.1f} s")
        latency.noisy = bool(reasons)
        latency.noise_reason = "; ".join(reasons) or None
        model.latency.append(latency)


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        result = run_job(json.loads(job_path.read_text()))
    except Exception:
        traceback.print_exc()
        return 1
    result_path.write_text(result.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
