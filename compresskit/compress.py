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

import numpy as np
import torch
from torch import nn

from compresskit.bench.harness import BenchModel, measure_targets
from compresskit.bench.measurement import TargetRun, machine_info
from compresskit.bench.output import write_reports
from compresskit.bench.report import Entry, ParityEntry, Report, StepEntry, add_measurements
from compresskit.bench.verdict import judge
from compresskit.context import Context
from compresskit.data import DataBundle, load_data
from compresskit.errors import CompressKitError
from compresskit.export.onnx import Exporter, export_onnx, file_sha256, state_dict_sha256
from compresskit.export.qdq import not_exportable_reason
from compresskit.export.targets import Target, load_target
from compresskit.export.verify import (
    compare,
    model_precision,
    onnx_outputs,
    parity_tolerance,
    torch_outputs,
)
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import LoadedModel, load_model
from compresskit.models.size import count_macs, count_params
from compresskit.pipeline import Candidate, Pipeline, run_pipeline
from compresskit.policies import Policy, load_policy
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
        policy = policy.to_policy()
    elif not isinstance(policy, Policy):
        policy = load_policy(policy)
    pipeline = Pipeline.from_policy(policy, where=f"policy {policy.name}")
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
        task=bundle.task,
        seed=seed,
        budget=policy.budget,
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
            f"({type(error).__name__}: {str(error).splitlines()[0]}); check --data and --arch"
        ) from None
    if not isinstance(output, torch.Tensor) or output.shape != (len(example[0]), data.num_classes):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        if data.is_embedding:
            raise CompressKitError(
                f"the model outputs {shape} but the embedding task {data.name} expects "
                f"embeddings of width {data.num_classes}; expected shape (batch, width): set "
                "the data's num_classes to the model's embedding width"
            )
        raise CompressKitError(
            f"the model outputs {shape} but {data.name} has {data.num_classes} classes; "
            "expected logits of shape (batch, classes) (for a model that outputs embeddings, "
            'give the data task="embedding")'
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
    from compresskit import __version__
    from compresskit.export.kernels import kernel_report

    eval_loader = bundle.loader("eval", batch_size=256)
    labels = torch.cat([batch[-1] for batch in eval_loader]).numpy()
    example = bundle.example_inputs(batch_size=2)
    models = [("baseline", loaded.model, []), *((c.name, c.model, c.nodes) for c in candidates)]
    entries: list[Entry] = []
    baseline_out = None
    onnx_paths: dict[str, Path] = {}
    metadata = {
        "policy": policy.name,
        "source_checkpoint": _describe_source(loaded.source),
        **_source_hash(loaded),
    }
    for index, (name, model, steps) in enumerate(models):
        status(f"exporting and verifying {name} ({index + 1} of {len(models)})")
        directory = run_dir / name
        files = {}
        if name != "baseline":
            save_model(model, directory / "model.pt", source=loaded.source)
            files["model"] = f"{name}/model.pt"
        reference = torch_outputs(model, eval_loader)
        no_export = not_exportable_reason(model) if name != "baseline" else None
        exported, parity, coverage = None, None, None
        precision = model_precision(model)
        if no_export is not None:
            # e.g. bitsandbytes layers: measured in torch only, and the report says why.
            status(f"{name}: export skipped: {no_export}")
            actual = reference
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
            actual = onnx_outputs(exported.path, eval_loader)
            if exported.post_quantization is not None:
                precision = "int8"  # ORT dynamic int8 rewrote the float graph
            tolerance, min_agreement = parity_tolerance(precision, reference)
            if bundle.is_embedding:
                # The top-1 "agreement" of embedding dimensions is no class decision:
                # int8 rounding flips near-tied dimensions. The error bound is the check.
                min_agreement = 0.0
            parity = compare(
                reference,
                actual,
                tolerance=tolerance,
                min_agreement=min_agreement,
                precision=precision,
            )
            coverage = kernel_report(exported.path).fraction
        if baseline_out is None:
            baseline_out = actual
        metrics = (
            embedding_metrics(actual, baseline_out)
            if bundle.is_embedding
            else _metrics(actual, labels, baseline_out)
        )
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


def _metrics(outputs: Any, labels: Any, baseline: Any) -> dict[str, float]:
    logp = torch.log_softmax(torch.from_numpy(outputs).double(), -1)
    base_logp = torch.log_softmax(torch.from_numpy(baseline).double(), -1)
    pred, base_pred = outputs.argmax(-1), baseline.argmax(-1)
    changed = pred != base_pred
    return {
        "accuracy": float((pred == labels).mean()),
        "agreement": float((pred == base_pred).mean()),
        "kl": float((base_logp.exp() * (base_logp - logp)).sum(-1).mean()),
        # Prediction churn vs the baseline ("Churn Reduction via Distillation"): good churn
        # fixes a baseline mistake, bad churn breaks a correct baseline prediction.
        "churn": float(changed.mean()),
        "churn_good": float((changed & (pred == labels)).mean()),
        "churn_bad": float((changed & (base_pred == labels)).mean()),
    }


def embedding_metrics(outputs: Any, baseline: Any) -> dict[str, float]:
    """Each sample's embedding against the baseline's: the cosine (mean, 5th percentile,
    min) and the mean squared error. The baseline against itself: cosine 1, mse 0."""
    if outputs is baseline:
        return {"cosine": 1.0, "cosine_p5": 1.0, "cosine_min": 1.0, "mse": 0.0}
    a = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    b = np.asarray(baseline, dtype=np.float64).reshape(len(baseline), -1)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cosine = np.clip((a * b).sum(axis=1) / norms, -1.0, 1.0)
    return {
        "cosine": float(cosine.mean()),
        "cosine_p5": float(np.percentile(cosine, 5)),
        "cosine_min": float(cosine.min()),
        "mse": float(((a - b) ** 2).mean()),
    }


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


def _source_hash(loaded: LoadedModel) -> dict[str, str]:
    """sha256 of the checkpoint file when there is one, else of the loaded state dict."""
    path = loaded.source.get("path")
    if path and Path(path).exists():
        return {"source_sha256": file_sha256(Path(path)), "source_sha256_of": "file"}
    return {"source_sha256": state_dict_sha256(loaded.model), "source_sha256_of": "state_dict"}


def _describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "example":
        return f"example:{source['name']}"
    return str(source.get("path") or source.get("factory") or kind)
