"""One compression run: load -> pipeline -> export -> verify -> measure -> report.

Everything is written to a temporary directory beside the output and moved into place
only when the run is complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.bench.harness import BenchModel, TargetRun, measure_targets
from compresskit.bench.probe import measure_p50
from compresskit.bench.report import (
    Entry,
    LatencyEntry,
    ParityEntry,
    Report,
    SessionEntry,
    StepEntry,
    TargetEntry,
    write_reports,
)
from compresskit.context import Context
from compresskit.data import DataBundle, load_data
from compresskit.digest import source_digest
from compresskit.errors import CompressKitError, first_line
from compresskit.export.onnx import Exporter, export_onnx
from compresskit.export.qdq import not_exportable_reason
from compresskit.export.targets import Target, load_target
from compresskit.export.verify import ParityCheck, model_precision, ort_session, run_session
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import LoadedModel, load_model
from compresskit.models.size import count_macs, count_params
from compresskit.pipeline import Candidate, Pipeline, run_pipeline
from compresskit.policies import Policy, load_policy, pipeline_of, policy_of
from compresskit.progress import status
from compresskit.training import distributed


@dataclass
class RunResult:
    """The report and, by name, the compressed models (baseline first)."""

    report: Report
    models: dict[str, nn.Module]
    run_dir: Path | None


def run(
    policy: Policy | Pipeline | str | Path = "default",
    *,
    model: LoadedModel | nn.Module | str | Path | None = None,
    data: DataBundle | str | None = None,
    out: Path | str | None = None,
    seed: int = 0,
    exporter: Exporter = "auto",
    latency_seconds: float = 1.0,
) -> RunResult:
    """Compress ``model`` with ``policy`` (a policy name or file, a :class:`Policy`, or a
    :class:`Pipeline` built in code) and measure every candidate against the baseline.

    >>> result = compresskit.run("default")                       # doctest: +SKIP
    >>> result.report.candidates[0].latency[0].speedup
    """
    started = time.perf_counter()
    world = distributed.setup()  # joins torchrun's process group; one process otherwise
    if isinstance(policy, Pipeline):
        policy = policy_of(policy)
    elif not isinstance(policy, Policy):
        policy = load_policy(policy)
    pipeline = pipeline_of(policy, where=f"policy {policy.name}")
    loaded = _loaded(model)
    bundle = _bundle(data, loaded, seed)
    torch.manual_seed(seed)
    example = bundle.example_inputs(batch_size=2)
    _check_task(loaded.model, example, bundle)
    teacher = _teacher(policy, loaded)
    ctx = Context(
        data=bundle,
        teacher=teacher,
        example_inputs=example,
        seed=seed,
        budget=policy.budget,
        latency_probe=measure_p50,
    )
    final = Path(out) if out is not None else _default_out(policy.name)
    if world.is_main and final.exists() and any(final.iterdir()):
        raise CompressKitError(f"--out {final} exists and is not empty; choose another directory")
    # Every rank runs every pass (training passes together, through DDP) ...
    candidates = run_pipeline(pipeline, loaded.model, ctx)

    def write_outputs() -> Report:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            report = _evaluate(
                policy, loaded, bundle, candidates, tmp, seed, exporter, latency_seconds
            )
            report.seconds = time.perf_counter() - started
            write_reports(report, tmp)
            if final.exists():
                final.rmdir()
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return report

    # ... and rank 0 alone exports, measures and writes, once the others are done.
    report = distributed.main_only(write_outputs, what="export, benchmarks and report")
    models = {"baseline": loaded.model, **{c.name: c.model for c in candidates}}
    return RunResult(report, models, final)


def _loaded(model: LoadedModel | nn.Module | str | Path | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return LoadedModel(model.eval(), {"kind": "python"})
    return load_model(model)


def _bundle(data: DataBundle | str | None, loaded: LoadedModel, seed: int) -> DataBundle:
    if isinstance(data, DataBundle):
        return data
    spec = data or loaded.default_data
    if spec is None:
        raise CompressKitError(
            "no data given and the model has no default dataset: pass --data "
            "(digits, fashion-mnist, a .npz file or module:factory)"
        )
    return load_data(spec, seed=seed)


def _check_task(model: nn.Module, example: tuple[torch.Tensor, ...], data: DataBundle) -> None:
    try:
        with torch.no_grad():
            output = model.eval()(*example)
    except Exception as error:
        raise CompressKitError(
            f"the model cannot run on {data.name} inputs of shape {tuple(example[0].shape[1:])} "
            f"({first_line(error)}); check --data and --arch"
        ) from None
    data.contract.check_output(
        output, batch=len(example[0]), data=data.name, classes=data.num_classes
    )


def _teacher(policy: Policy, loaded: LoadedModel) -> nn.Module:
    teacher = (
        copy.deepcopy(loaded.model)
        if policy.teacher == "input"
        else load_model(policy.teacher).model
    )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def _default_out(name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _evaluate(
    policy: Policy,
    loaded: LoadedModel,
    bundle: DataBundle,
    candidates: list[Candidate],
    run_dir: Path,
    seed: int,
    exporter: Exporter,
    latency_seconds: float,
) -> Report:
    from compresskit._version import __version__
    from compresskit.export.kernels import kernel_report

    task = bundle.contract
    eval_batches = list(bundle.loader("eval", batch_size=256))
    example = bundle.example_inputs(batch_size=2)
    models = [("baseline", loaded.model, []), *((c.name, c.model, c.nodes) for c in candidates)]
    entries: list[Entry] = []
    references: list[Any] = []  # what the task keeps of the baseline's outputs, per batch
    onnx_paths: dict[str, Path] = {}
    metadata = {
        "policy": policy.name,
        "source_checkpoint": _describe_source(loaded.source),
        **source_digest(_source_path(loaded), loaded.model),
    }
    for index, (name, model, steps) in enumerate(models):
        status(f"exporting and verifying {name} ({index + 1} of {len(models)})")
        directory = run_dir / name
        files = {}
        if name != "baseline":
            save_model(model, directory / "model.pt", source=loaded.source)
            files["model"] = f"{name}/model.pt"
        no_export = not_exportable_reason(model) if name != "baseline" else None
        exported, parity, coverage, session = None, None, None, None
        precision = model_precision(model)
        if no_export is not None:
            # e.g. bitsandbytes layers: measured in torch only, and the report says why.
            status(f"{name}: export skipped: {no_export}")
        else:
            exported = export_onnx(
                model,
                example,
                directory / "model.onnx",
                exporter=exporter,
                dynamic_sequence=bundle.dynamic_sequence,
                metadata={**metadata, "model": name},
            )
            files["onnx"] = f"{name}/model.onnx"
            onnx_paths[name] = exported.path
            if exported.post_quantization is not None:
                precision = "int8"  # ORT dynamic int8 rewrote the float graph
            session = ort_session(exported.path)
            coverage = kernel_report(exported.path).fraction
        check = ParityCheck(precision, decisions=task.class_outputs)
        evaluation = task.evaluation()
        model.eval()
        for number, (*inputs, labels) in enumerate(eval_batches):
            with torch.no_grad():
                reference = task.adapt(model(*inputs), tuple(inputs)).numpy()
            actual = reference if session is None else run_session(session, inputs)
            if session is not None:
                check.update(reference, actual)
            if name == "baseline":
                references.append(task.reference(actual))
            evaluation.update(actual, labels.numpy(), references[number])
        metrics = evaluation.result()
        if session is not None:
            parity = check.result()
        entries.append(
            Entry(
                name=name,
                nodes=[step.pass_name for step in steps],
                params=count_params(model),
                macs=count_macs(model, example),
                onnx_bytes=exported.bytes if exported else 0,
                exporter=exported.exporter if exported else "none",
                exporter_fallback_reason=exported.fallback_reason if exported else None,
                precision=precision,
                metrics=metrics,
                int8_coverage=coverage,
                parity=ParityEntry(**vars(parity), ok=parity.ok) if parity else None,
                export_skipped=no_export,
                steps=[
                    StepEntry(id=s.id, name=s.pass_name, seconds=s.seconds, records=s.records)
                    for s in steps
                ],
                files=files,
            )
        )
        if parity is not None and not parity.ok:
            status(f"{name}: ONNX Runtime disagrees with torch ({parity})")

    runs = _measure_latency(
        policy, entries, models, onnx_paths, example, latency_seconds, bundle.dynamic_sequence
    )
    baseline, *rest = entries
    for entry in rest:
        entry.verdict = _verdict(entry, baseline, policy)
        entry.summary = _summary(entry, baseline, policy, runs)
    return Report(
        compresskit_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        policy=policy.name,
        checkpoint=_describe_source(loaded.source),
        data=bundle.name,
        task=bundle.task,
        seed=seed,
        seconds=0.0,
        skipped_targets={run.target: run.skipped for run in runs if run.skipped},
        targets=[_target_entry(run) for run in runs if not run.skipped],
        machine=_machine(),
        world_size=distributed.current().world_size,
        backend=distributed.current().backend,
        baseline=baseline,
        candidates=rest,
    )


def _measure_latency(
    policy: Policy,
    entries: list[Entry],
    models: list[tuple[str, nn.Module, Any]],
    onnx_paths: dict[str, Path],
    sample: tuple[torch.Tensor, ...],
    seconds: float,
    dynamic_sequence: bool,
) -> list[TargetRun]:
    """Every target in its own worker process; all models of a target in the same one."""
    bench_models = [
        BenchModel(name, onnx=onnx_paths.get(name), module=model) for name, model, _ in models
    ]
    targets = [_with_policy(load_target(name), policy) for name in policy.targets]
    runs = measure_targets(
        targets,
        bench_models,
        [x.numpy() for x in sample],
        max_seconds=seconds,
        dynamic_sequence=dynamic_sequence,
    )
    for run in runs:
        if run.skipped:
            continue
        for entry in entries:
            measured = run.model(entry.name)
            if measured is None:
                continue
            entry.sessions.append(
                SessionEntry(
                    target=run.target,
                    load_ms=measured.load_ms,
                    rss_delta_mb=measured.rss_delta_mb,
                    peak_rss_delta_mb=measured.peak_rss_delta_mb,
                    error=measured.error,
                )
            )
            entry.latency += [
                LatencyEntry(**vars(latency), speedup=measured.speedup.get(latency.batch))
                for latency in measured.latency
            ]
    return runs


def _with_policy(target: Target, policy: Policy) -> Target:
    """The target at the policy's batch sizes (and sequence length, when it sets one)."""
    update: dict[str, Any] = {"batch_sizes": policy.batch_sizes}
    if policy.sequence_length is not None:
        update["sequence_length"] = policy.sequence_length
    return target.model_copy(update=update)


def _target_entry(run: TargetRun) -> TargetEntry:
    return TargetEntry(
        name=run.target,
        runtime=run.runtime,
        provider=run.provider,
        precision=run.precision,
        threads=run.threads,
        inter_op_threads=run.inter_op_threads,
        allow_spinning=run.allow_spinning,
        noisy=run.noisy,
        noise_reasons=run.noise_reasons,
        seconds=run.seconds,
    )


def _machine() -> dict[str, Any]:
    import platform

    import onnxruntime

    from compresskit.bench.noise import usable_cores

    return {
        "cores": usable_cores(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


FASTER = 1.05  # a speedup must beat timing noise by this much to count


def _speed_clause(entry: Entry, run: TargetRun) -> str:
    if run.skipped:
        return f"{run.target} skipped"
    points = [x for x in entry.latency if x.target == run.target and x.speedup is not None]
    if not points:
        return f"not measured on {run.target}"
    ratios = ", ".join(f"b{x.batch} {x.speedup:.2f}x" for x in points)
    faster = [x.speedup is not None and x.speedup > FASTER for x in points]
    word = "faster" if all(faster) else ("NOT faster" if not any(faster) else "faster at some")
    noisy = " (noisy)" if any(x.noisy for x in points) else ""
    return f"{word} on {run.target} ({ratios}){noisy}"


def _summary(entry: Entry, baseline: Entry, policy: Policy, runs: list[TargetRun]) -> str:
    """One line: faster or not per target; int8 really used or not; accuracy budget (or,
    for embeddings, the cosine budget)."""
    clauses = [_speed_clause(entry, run) for run in runs]
    coverage = entry.int8_coverage or 0.0
    if entry.precision == "int8" or coverage > 0:
        minimum = policy.budget.min_int8_coverage or 0.5
        used = "int8 used" if coverage >= minimum else "int8 NOT really used"
        clauses.append(f"{used} ({coverage:.0%} of MACs)")
    else:
        clauses.append("float (no int8)")
    clauses.append(
        _cosine_clause(entry, policy)
        if _is_embedding(entry)
        else _accuracy_clause(entry, baseline, policy)
    )
    if entry.parity is None:
        clauses.append(f"not exported ({entry.export_skipped})")
    elif not entry.parity.ok:
        clauses.append("ORT DISAGREES with torch")
    return "; ".join(clauses)


def _verdict(entry: Entry, baseline: Entry, policy: Policy) -> list[str]:
    lines = []
    for latency in entry.latency:
        if latency.speedup is not None:
            faster = "faster" if latency.speedup > FASTER else "NOT faster"
            noisy = " (noisy)" if latency.noisy else ""
            lines.append(
                f"{faster} on {latency.target} at batch {latency.batch}: "
                f"{latency.speedup:.2f}x{noisy}"
            )
    coverage = entry.int8_coverage or 0.0
    int8_wanted = entry.export_skipped is None and any(
        "quantize" in node or node == "qat" for node in entry.nodes
    )
    if int8_wanted or coverage > 0:
        lines.append(f"int8 kernels run {coverage:.0%} of the MACs in ONNX Runtime")
        minimum = policy.budget.min_int8_coverage
        if minimum is not None and coverage < minimum:
            lines.append(f"BELOW the budget's int8 coverage of {minimum:.0%}")
    if _is_embedding(entry):
        lines.append(
            _cosine_clause(entry, policy)
            + f" (p5 {entry.metrics['cosine_p5']:.4f}, min {entry.metrics['cosine_min']:.4f}, "
            f"mse {entry.metrics['mse']:.3g})"
        )
        if policy.budget.max_accuracy_drop is not None:
            lines.append("budget max_accuracy_drop does not apply to embeddings (see min_cosine)")
        return lines
    change = entry.metrics["accuracy"] - baseline.metrics["accuracy"]
    budget = policy.budget.max_accuracy_drop
    within = "" if budget is None else (" within budget" if -change <= budget else " OVER budget")
    lines.append(
        f"accuracy {entry.metrics['accuracy']:.4f} ({change * 100:+.2f} points vs baseline{within})"
    )
    if policy.budget.min_cosine is not None:
        lines.append("budget min_cosine applies to embedding tasks only; ignored here")
    return lines


def _is_embedding(entry: Entry) -> bool:
    return "cosine" in entry.metrics and "accuracy" not in entry.metrics


def _accuracy_clause(entry: Entry, baseline: Entry, policy: Policy) -> str:
    drop = baseline.metrics["accuracy"] - entry.metrics["accuracy"]
    budget = policy.budget.max_accuracy_drop
    if budget is None:
        return f"accuracy {-drop * 100:+.2f} points (no budget)"
    within = "within" if drop <= budget else "OVER"
    return f"accuracy {within} budget ({-drop * 100:+.2f} points, allowed -{budget * 100:.1f})"


def _cosine_clause(entry: Entry, policy: Policy) -> str:
    cosine = entry.metrics["cosine"]
    minimum = policy.budget.min_cosine
    if minimum is None:
        return f"cosine {cosine:.4f} to the baseline (no budget)"
    within = "within budget" if cosine >= minimum else "BELOW budget"
    return f"cosine {cosine:.4f} to the baseline, {within} (min {minimum:g})"


def _source_path(loaded: LoadedModel) -> Path | None:
    path = loaded.source.get("path")
    return Path(path) if path else None


def _describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "example":
        return f"example:{source['name']}"
    return str(source.get("path") or source.get("factory") or kind)
