"""Every model of a run, exported and verified: its ONNX file, ONNX Runtime checked
against torch, the share of work in low-bit kernels, size, and the task's metrics
computed on ONNX Runtime's outputs over the held-out evaluation split.

The evaluation batches are streamed: each model's outputs meet the baseline's (what the
task keeps of them) batch by batch, so large outputs (a language model's logits) are
never all held at once.

Example::

    entries, onnx = evaluate_models(models, bundle, run_dir, metadata={})
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.bench.report import Entry, ParityEntry, StepEntry
from compresskit.data import DataBundle
from compresskit.export.kernels import kernel_report
from compresskit.export.onnx import Exporter, ExportResult, export_onnx
from compresskit.export.qdq import not_exportable_reason
from compresskit.export.verify import ParityCheck, model_precision, ort_session, run_session
from compresskit.models.checkpoint import save_model
from compresskit.models.hf import HuggingFaceModel
from compresskit.models.size import count_macs, count_params
from compresskit.pipeline import NodeResult
from compresskit.progress import status

# (name, model, the nodes that made it); the first is the baseline.
RunModel = tuple[str, nn.Module, Sequence[NodeResult]]


def holds_transformers(model: nn.Module) -> bool:
    """Whether ``model`` is, or wraps, a Hugging Face transformers model: those export
    with the legacy exporter, the baseline included. Its graph is the compact one ORT's
    quantization tooling takes and its CPU fusions know (BiasGelu, LayerNorm; exported in
    a fraction of the time), and every speedup is then against the faster fp32 graph
    (all-MiniLM-L6-v2 behind a pooling wrapper: the dynamo graph keeps GELU as Erf, Mul
    and Div, and its baseline ran slower than the benchmarks' legacy fp32 row)."""
    return isinstance(model, HuggingFaceModel) or any(
        type(module).__module__.startswith("transformers.") for module in model.modules()
    )


def evaluate_models(
    models: Sequence[RunModel],
    bundle: DataBundle,
    run_dir: Path,
    *,
    metadata: dict[str, str],
    source: dict[str, Any] | None = None,
    exporter: Exporter = "auto",
) -> tuple[list[Entry], dict[str, Path]]:
    """Save (candidates), export and verify every model into ``run_dir/<name>/``; returns
    one report entry per model and the ONNX file of each exported one."""
    task = bundle.contract
    batches = list(bundle.loader("eval", batch_size=256))
    example = bundle.example_inputs(batch_size=2)
    references: list[Any] = []  # what the task keeps of the baseline's outputs, per batch
    entries: list[Entry] = []
    onnx_paths: dict[str, Path] = {}
    for index, (name, model, steps) in enumerate(models):
        status(f"exporting and verifying {name} ({index + 1} of {len(models)})")
        directory = run_dir / name
        files: dict[str, str] = {}
        notes: list[str] = []
        if index > 0:
            save_model(model, directory / "model.pt", source=source or {"kind": "python"})
            files["model"] = f"{name}/model.pt"
            if isinstance(model, HuggingFaceModel):
                notes += _save_hf(model, directory, files, name)
        no_export = not_exportable_reason(model) if index > 0 else None
        exported: ExportResult | None = None
        precision = model_precision(model)
        if no_export is not None:
            # e.g. bitsandbytes layers: measured in torch only, and the report says why.
            status(f"{name}: export skipped: {no_export}")
        else:
            exported = export_onnx(
                model,
                example,
                directory / "model.onnx",
                exporter="legacy" if exporter == "auto" and holds_transformers(model) else exporter,
                dynamic_sequence=bundle.dynamic_sequence,
                metadata={**metadata, "model": name},
                input_names=model.input_names if isinstance(model, HuggingFaceModel) else None,
            )
            files["onnx"] = f"{name}/model.onnx"
            onnx_paths[name] = exported.path
            if exported.post_quantization is not None:
                precision = "int8"  # ORT dynamic int8 rewrote the float graph
        session = ort_session(exported.path) if exported else None
        check = ParityCheck(precision, decisions=task.class_outputs)
        evaluation = task.evaluation()
        model.eval()
        for number, (*inputs, labels) in enumerate(batches):
            with torch.no_grad():
                expected = task.adapt(model(*inputs), tuple(inputs)).numpy()
            actual = expected if session is None else run_session(session, inputs)
            if index == 0:
                references.append(task.reference(actual))
            if session is not None:
                check.update(expected, actual, baseline=references[number])
            evaluation.update(actual, labels.numpy(), references[number])
        parity = check.result() if session is not None else None
        if parity is not None and not parity.ok:
            status(f"{name}: ONNX Runtime disagrees with torch ({parity})", style="red")
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
                metrics=evaluation.result(),
                int8_coverage=kernel_report(exported.path).fraction if exported else None,
                parity=ParityEntry(**vars(parity), ok=parity.ok) if parity else None,
                export_skipped=no_export,
                steps=[
                    StepEntry(id=s.id, name=s.pass_name, seconds=s.seconds, records=s.records)
                    for s in steps
                ],
                files=files,
                notes=notes,
            )
        )
    return entries, onnx_paths


def _save_hf(
    model: HuggingFaceModel, directory: Path, files: dict[str, str], name: str
) -> list[str]:
    """Write the candidate as a Hugging Face directory too; the reason when it cannot be."""
    from compresskit.models.hf_save import save_hf_directory

    reason = save_hf_directory(model, directory / "hf")
    if reason is None:
        files["hf"] = f"{name}/hf"
        return []
    status(f"{name}: no Hugging Face directory: {reason}", style="yellow")
    return [f"no Hugging Face directory (model.pt and model.onnx hold it): {reason}"]
