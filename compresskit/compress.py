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

from compresskit.bench.latency import measure
from compresskit.bench.report import (
    Entry,
    LatencyEntry,
    ParityEntry,
    Report,
    StepEntry,
    render_markdown,
)
from compresskit.context import Context
from compresskit.data import DataBundle, load_data
from compresskit.errors import CompressKitError
from compresskit.export.onnx import Exporter, export_onnx, needs_legacy_exporter
from compresskit.export.qdq import not_exportable_reason
from compresskit.export.targets import Target, load_target, target_available
from compresskit.export.verify import compare, onnx_outputs, parity_tolerance, torch_outputs
from compresskit.models.checkpoint import save_model
from compresskit.models.loading import LoadedModel, load_model
from compresskit.models.size import count_macs, count_params
from compresskit.pipeline import Candidate, Pipeline, run_pipeline
from compresskit.policies import Policy, load_policy
from compresskit.progress import status


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
    ctx = Context(data=bundle, teacher=teacher, example_inputs=example, seed=seed)
    candidates = run_pipeline(pipeline, loaded.model, ctx)

    final = Path(out) if out is not None else _default_out(policy.name)
    if final.exists() and any(final.iterdir()):
        raise CompressKitError(f"--out {final} exists and is not empty; choose another directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        report = _evaluate(policy, loaded, bundle, candidates, tmp, seed, exporter, latency_seconds)
        report.seconds = time.perf_counter() - started
        (tmp / "report.json").write_text(report.model_dump_json(indent=2))
        (tmp / "report.md").write_text(render_markdown(report))
        if final.exists():
            final.rmdir()
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        raise CompressKitError(
            f"the model outputs {shape} but {data.name} has {data.num_classes} classes; "
            "expected logits of shape (batch, classes)"
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
    for name, model, steps in models:
        status(f"exporting and verifying {name}")
        directory = run_dir / name
        files = {}
        if name != "baseline":
            save_model(model, directory / "model.pt", source=loaded.source)
            files["model"] = f"{name}/model.pt"
        reference = torch_outputs(model, eval_loader)
        no_export = not_exportable_reason(model) if name != "baseline" else None
        if no_export is not None:
            # e.g. bitsandbytes layers: measured in torch only, and the report says why.
            status(f"{name}: export skipped: {no_export}")
            actual, parity, exported = reference, None, None
        else:
            exported = export_onnx(
                model,
                example,
                directory / "model.onnx",
                exporter=exporter,
                dynamic_sequence=bundle.dynamic_sequence,
            )
            files["onnx"] = f"{name}/model.onnx"
            onnx_paths[name] = exported.path
            actual = onnx_outputs(exported.path, eval_loader)
            quantized = needs_legacy_exporter(model) or exported.post_quantization is not None
            tolerance, min_agreement = parity_tolerance(quantized, reference)
            parity = compare(reference, actual, tolerance=tolerance, min_agreement=min_agreement)
        if baseline_out is None:
            baseline_out = actual
        metrics = _metrics(actual, labels, baseline_out)
        entries.append(
            Entry(
                name=name,
                nodes=[step.pass_name for step in steps],
                params=count_params(model),
                macs=count_macs(model, example),
                onnx_bytes=exported.path.stat().st_size if exported else 0,
                exporter=exported.exporter if exported else "none",
                export_skipped=no_export,
                metrics=metrics,
                int8_coverage=kernel_report(exported.path).fraction if exported else None,
                parity=ParityEntry(**vars(parity), ok=parity.ok) if parity else None,
                steps=[
                    StepEntry(id=s.id, name=s.pass_name, seconds=s.seconds, records=s.records)
                    for s in steps
                ],
                files=files,
            )
        )
        if parity is not None and not parity.ok:
            status(f"[red]{name}: ONNX Runtime disagrees with torch[/red] ({parity})")

    skipped = _measure_latency(policy, entries, models, onnx_paths, example, latency_seconds)
    baseline, *rest = entries
    for entry in rest:
        entry.verdict = _verdict(entry, baseline, policy)
    return Report(
        compresskit_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        policy=policy.name,
        checkpoint=_describe_source(loaded.source),
        data=bundle.name,
        seed=seed,
        seconds=0.0,
        skipped_targets=skipped,
        baseline=baseline,
        candidates=rest,
    )


def _metrics(outputs: Any, labels: Any, baseline: Any) -> dict[str, float]:
    logp = torch.log_softmax(torch.from_numpy(outputs).double(), -1)
    base_logp = torch.log_softmax(torch.from_numpy(baseline).double(), -1)
    return {
        "accuracy": float((outputs.argmax(-1) == labels).mean()),
        "agreement": float((outputs.argmax(-1) == baseline.argmax(-1)).mean()),
        "kl": float((base_logp.exp() * (base_logp - logp)).sum(-1).mean()),
    }


def _measure_latency(
    policy: Policy,
    entries: list[Entry],
    models: list[tuple[str, nn.Module, Any]],
    onnx_paths: dict[str, Path],
    sample: tuple[torch.Tensor, ...],
    seconds: float,
) -> dict[str, str]:
    skipped: dict[str, str] = {}
    for name in policy.targets:
        target: Target = load_target(name).model_copy(update={"batch_sizes": policy.batch_sizes})
        reason = target_available(target)
        if reason:
            skipped[name] = reason
            status(f"target {name} skipped: {reason}")
            continue
        status(f"measuring latency on {name} (batch {', '.join(map(str, target.batch_sizes))})")
        baseline_p50: dict[int, float] = {}
        for entry, (model_name, model, _) in zip(entries, models, strict=True):
            if target.runtime == "onnxruntime" and model_name not in onnx_paths:
                continue  # not exportable (the entry says why); measured on torch targets
            for latency in measure(
                target,
                sample,
                onnx_path=onnx_paths[model_name] if target.runtime == "onnxruntime" else None,
                model=model,
                max_seconds=seconds,
            ):
                baseline_p50.setdefault(latency.batch, latency.p50_ms)
                entry.latency.append(
                    LatencyEntry(
                        **vars(latency), speedup=baseline_p50[latency.batch] / latency.p50_ms
                    )
                )
    return skipped


def _verdict(entry: Entry, baseline: Entry, policy: Policy) -> list[str]:
    lines = []
    for latency in entry.latency:
        if latency.speedup is not None:
            faster = "faster" if latency.speedup > 1.05 else "NOT faster"
            lines.append(
                f"{faster} on {latency.target} at batch {latency.batch}: {latency.speedup:.2f}x"
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
    change = entry.metrics["accuracy"] - baseline.metrics["accuracy"]
    budget = policy.budget.max_accuracy_drop
    within = "" if budget is None else (" within budget" if -change <= budget else " OVER budget")
    lines.append(
        f"accuracy {entry.metrics['accuracy']:.4f} ({change * 100:+.2f} points vs baseline{within})"
    )
    return lines


def _describe_source(source: dict[str, Any]) -> str:
    kind = source.get("kind")
    if kind == "example":
        return f"example:{source['name']}"
    return str(source.get("path") or source.get("factory") or kind)
