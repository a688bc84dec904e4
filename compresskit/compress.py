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

from compresskit.bench.harness import BenchModel, measure_targets
from compresskit.bench.measurement import TargetRun, machine_info
from compresskit.bench.output import write_reports
from compresskit.bench.probe import measure_p50
from compresskit.bench.report import Entry, ParityEntry, Report, StepEntry, add_measurements
from compresskit.bench.verdict import judge
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
            status(f"{name}: ONNX Runtime disagrees with torch ({parity})", style="red")

    runs = _measure_latency(
        policy, entries, models, onnx_paths, example, latency_seconds, bundle.dynamic_sequence
    )
    baseline, *rest = entries
    report = Report(
        compresskit_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        policy=policy.name,
        checkpoint=_describe_source(loaded.source),
        data=bundle.name,
        task=bundle.task,
        seed=seed,
        seconds=0.0,
        skipped_targets={run.target: run.skipped for run in runs if run.skipped},
        targets=[run.info() for run in runs if not run.skipped],
        machine=machine_info(),
        world_size=distributed.current().world_size,
        backend=distributed.current().backend,
        baseline=baseline,
        candidates=rest,
    )
    return judge(report, policy.budget)


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
    add_measurements(entries, runs)
    return runs


def _with_policy(target: Target, policy: Policy) -> Target:
    """The target at the policy's batch sizes (and sequence length, when it sets one)."""
    update: dict[str, Any] = {"batch_sizes": policy.batch_sizes}
    if policy.sequence_length is not None:
        update["sequence_length"] = policy.sequence_length
    return target.model_copy(update=update)


def _source_path(loaded: LoadedModel) -> Path | None:
    path = loaded.source.get("path")
    return Path(path) if path else None


def _describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "example":
        return f"example:{source['name']}"
    return str(source.get("path") or source.get("factory") or kind)
