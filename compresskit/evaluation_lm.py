"""Every model of a causal-LM run, as a user ships it: a Hugging Face directory that
``from_pretrained`` reloads (candidates), and an ONNX folder with a KV cache that
onnxruntime-genai runs (int4 ``MatMulNBits`` weights where a ``quantize_int4`` node asks).

Each folder is checked before anything is reported: the float graph's teacher-forced
logits (prefill, then one token per call through the cache) against torch's. The task's
metrics (perplexity, agreement and KL to the baseline) are computed on ONNX Runtime's
logits over the held-out windows, the baseline's kept as the reference, as in
:mod:`compresskit.evaluation`; a model the builder cannot export is scored in torch and
says why. Generation speed (time to first token, decode tokens/s) comes from
:mod:`compresskit.bench.generation`, every folder timed interleaved in one process.

Example::

    entries, timing = evaluate_decoders(models, bundle, run_dir, tokenizer=tok)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.bench.generation import GenerationCandidate, GenerationConfig, bench_generation
from compresskit.bench.measurement import Latency, TargetInfo
from compresskit.bench.report import Continuation, Entry, GenerationEntry, ParityEntry, StepEntry
from compresskit.data import DataBundle
from compresskit.errors import CompressKitError
from compresskit.evaluation import RunModel
from compresskit.export.decoder import ROUTE, check_exportable, export_decoder, onnx_folder_bytes
from compresskit.export.decoder_parity import FLOAT_TOLERANCE, DecoderSession, torch_logits
from compresskit.export.lowbit import Int4Config, lowbit_coverage, quantize_decoder_int4
from compresskit.models.causal_lm import save_causal_lm
from compresskit.models.size import count_macs, count_params
from compresskit.passes.quantize_int4 import Int4Record
from compresskit.progress import status
from compresskit.tasks.causal_lm import DEFAULT_PROMPTS, greedy_continuations

TARGET = "genai-cpu"
PARITY_WINDOWS = 2
CONTINUATION_TOKENS = 24
GENAI_MISSING = "onnxruntime-genai is not installed: pip install 'compresskit[llm]'"


@dataclass
class Timing:
    """The generation target as the report keeps it: ran (with its info) or skipped."""

    targets: list[TargetInfo] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def evaluate_decoders(
    models: Sequence[RunModel],
    bundle: DataBundle,
    run_dir: Path,
    *,
    tokenizer: Any,  # noqa: ANN401  (a Hugging Face tokenizer)
    batch_sizes: Sequence[int] = (1,),
    latency_seconds: float = 1.0,
) -> tuple[list[Entry], Timing]:
    """Save, export, check, score and time every model into ``run_dir/<name>/``; one report
    entry per model (baseline first) and the generation target's outcome."""
    task = bundle.contract
    batches = list(bundle.loader("eval", batch_size=task.eval_batch_size))
    windows = np.concatenate([ids.numpy() for ids, _ in batches])
    calibration = np.concatenate([ids.numpy() for ids, _ in bundle.loader("calibration")])
    example = bundle.example_inputs(batch_size=2)
    genai = _genai_installed()
    references: list[Any] = []
    entries: list[Entry] = []
    folders: dict[str, Path] = {}
    for index, (name, model, steps) in enumerate(models):
        status(f"exporting and checking {name} ({index + 1} of {len(models)})")
        model.eval()
        int4 = _int4_settings(steps)
        shipped = _ship(
            name,
            model,
            tokenizer,
            run_dir,
            baseline=index == 0,
            genai=genai,
            int4=int4,
            windows=windows[:PARITY_WINDOWS],
            calibration=calibration,
        )
        folder, parity, skipped = shipped.folder, shipped.parity, shipped.skipped
        if folder is not None:
            folders[name] = folder
        if parity is not None and not parity.ok:
            status(f"{name}: ONNX Runtime disagrees with torch ({parity})", style="red")
        evaluation = task.evaluation()
        session = DecoderSession(folder) if folder is not None else None
        for number, (ids, labels) in enumerate(batches):
            logits = _logits(session, model, ids)
            if index == 0:
                references.append(task.reference(logits))
            evaluation.update(logits, labels.numpy(), references[number])
        entries.append(
            Entry(
                name=name,
                nodes=[step.pass_name for step in steps],
                params=count_params(model),
                macs=count_macs(model, example),
                onnx_bytes=_folder_bytes(folder),
                exporter=ROUTE if folder is not None else "none",
                precision="int4" if int4 is not None else "fp32",
                metrics=evaluation.result(),
                int8_coverage=lowbit_coverage(folder).fraction if folder is not None else None,
                parity=parity,
                export_skipped=skipped,
                steps=[
                    StepEntry(id=s.id, name=s.pass_name, seconds=s.seconds, records=s.records)
                    for s in steps
                ],
                files=shipped.files,
                notes=shipped.notes,
                continuations=_continuations(folder, model, tokenizer),
            )
        )
    timing = _time(entries, folders, windows, batch_sizes, latency_seconds, genai)
    return entries, timing


@dataclass
class _Shipped:
    """What was written for one model and whether its ONNX folder holds."""

    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None
    parity: ParityEntry | None = None
    skipped: str | None = None


def _ship(
    name: str,
    model: Any,  # noqa: ANN401  (a transformers causal LM)
    tokenizer: Any,  # noqa: ANN401
    run_dir: Path,
    *,
    baseline: bool,
    genai: bool,
    int4: Int4Record | None,
    windows: np.ndarray,
    calibration: np.ndarray,
) -> _Shipped:
    """The model's Hugging Face directory (candidates keep it) and checked ONNX folder; a
    model the builder cannot export is reported with the reason and scored in torch."""
    shipped = _Shipped()
    hf = run_dir / f".{name}-hf" if baseline else run_dir / name / "hf"
    save_causal_lm(model, tokenizer, hf)
    if not baseline:
        shipped.files["hf"] = f"{name}/hf"
    folder = run_dir / name / "onnx"
    try:
        if not genai:
            raise CompressKitError(GENAI_MISSING)
        check_exportable(hf)
        shipped.parity = _export(hf, folder, model, windows, int4, calibration)
    except CompressKitError as error:
        shipped.skipped = str(error)
        status(f"{name}: no KV-cache ONNX export: {error}", style="yellow")
        shipped.notes.append(f"metrics measured in torch: {error}")
        return shipped
    finally:
        if baseline:
            shutil.rmtree(hf, ignore_errors=True)
    shipped.folder = folder
    shipped.files["onnx"] = f"{name}/onnx"
    if int4 is not None:
        shipped.notes.append(
            "ONNX parity is checked on the float graph, before the int4 rewrite; the int4 "
            "graph's quality is its metrics"
        )
    return shipped


def _genai_installed() -> bool:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return False
    return True


def _int4_settings(steps: Sequence[Any]) -> Int4Record | None:
    """The int4 export a ``quantize_int4`` node of the candidate recorded, if any."""
    return next((s.record for s in steps if isinstance(s.record, Int4Record)), None)


def _export(
    hf: Path,
    folder: Path,
    model: Any,  # noqa: ANN401
    windows: np.ndarray,
    int4: Int4Record | None,
    calibration: np.ndarray,
) -> ParityEntry:
    """Export ``hf`` to ``folder`` (int4 after the float graph is checked); the parity."""
    if int4 is None:
        export_decoder(hf, folder)
        return _parity(model, folder, windows)
    staging = folder.with_name(f".{folder.name}-fp32")
    try:
        export_decoder(hf, staging)
        parity = _parity(model, staging, windows)
        config = Int4Config(
            algorithm=int4.algorithm,
            block_size=int4.block_size,
            symmetric=int4.symmetric,
            head=int4.head,
            accuracy_level=int4.accuracy_level,
        )
        gptq = calibration[: int4.calibration_windows] if config.needs_calibration() else None
        quantize_decoder_int4(staging, folder, config=config, calibration=gptq)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return parity


def _parity(model: Any, folder: Path, windows: np.ndarray) -> ParityEntry:  # noqa: ANN401
    """Teacher-forced logits of the folder (half prefill, then decode) against torch's."""
    reference = torch_logits(model, windows)
    actual = DecoderSession(folder).logits(windows, prefill=max(1, windows.shape[1] // 2))
    error = np.abs(actual - reference)
    scale = float(np.abs(reference).max())
    tolerance = FLOAT_TOLERANCE * scale
    agreement = float((actual.argmax(-1) == reference.argmax(-1)).mean())
    return ParityEntry(
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
        agreement=agreement,
        samples=int(windows.size),
        tolerance=tolerance,
        min_agreement=0.0,
        ok=bool(error.max() <= tolerance) and bool(np.isfinite(actual).all()),
        precision="fp32",
    )


def _logits(session: DecoderSession | None, model: Any, ids: torch.Tensor) -> np.ndarray:  # noqa: ANN401
    if session is not None:
        return session.logits(ids.numpy())  # the whole window in one call
    with torch.no_grad():
        return model(input_ids=ids).logits.float().numpy()  # type: ignore[no-any-return]


def _folder_bytes(folder: Path | None) -> int:
    return onnx_folder_bytes(folder) if folder is not None else 0


def _continuations(folder: Path | None, model: Any, tokenizer: Any) -> list[Continuation]:  # noqa: ANN401
    """Greedy continuations of the fixed prompts: by onnxruntime-genai on the folder (what
    ships, int4 included), else by ``generate`` in torch; none without a tokenizer."""
    if tokenizer is None:
        return []
    if folder is None:
        found = greedy_continuations(model, tokenizer, max_new_tokens=CONTINUATION_TOKENS)
        return [Continuation(**c, runtime="torch") for c in found]
    import onnxruntime_genai as og

    from compresskit.export.decoder_parity import greedy_genai

    genai_model = og.Model(str(folder))
    out = []
    for prompt in DEFAULT_PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = greedy_genai(folder, ids, CONTINUATION_TOKENS, genai_model)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        out.append(Continuation(prompt=prompt, continuation=text, runtime="onnxruntime-genai"))
    return out


def _time(
    entries: list[Entry],
    folders: dict[str, Path],
    windows: np.ndarray,
    batch_sizes: Sequence[int],
    latency_seconds: float,
    genai: bool,
) -> Timing:
    """Time to first token and decode tokens/s of every folder, interleaved; each entry
    gets its numbers and, as latency rows, the decode step (speedup vs the baseline)."""
    if not genai:
        return Timing(skipped={TARGET: GENAI_MISSING})
    if not folders:
        return Timing(skipped={TARGET: "no model was exported to a KV-cache ONNX folder"})
    length = windows.shape[1]
    prompt = max(1, length // 2)
    config = GenerationConfig(
        prompt_lengths=[prompt],
        decode_prompt=prompt,
        new_tokens=max(2, min(32, length - prompt)),
        batch_sizes=sorted(set(batch_sizes)),
        max_seconds=latency_seconds,
        min_repeats=3,
    )
    status(f"timing generation of {len(folders)} ONNX folder(s) with onnxruntime-genai")
    candidates = [
        GenerationCandidate(name=name, runtime="onnxruntime-genai", path=path)
        for name, path in folders.items()
    ]
    result = bench_generation(candidates, windows, config=config)
    base = result.rows[0] if entries[0].name in folders else None
    for entry in entries:
        if entry.name not in folders:
            continue
        row = result.row(entry.name)
        entry.generation = GenerationEntry(
            ttft_ms=row.ttft_ms,
            decode_tok_s=row.decode_tok_s,
            new_tokens=config.new_tokens,
            prompt_tokens=prompt,
            noisy=row.noisy,
        )
        for batch, tok_s in row.decode_tok_s.items():
            step_ms = 1000 * batch / tok_s
            base_tok_s = base.decode_tok_s.get(batch) if base is not None else None
            entry.latency.append(
                Latency(
                    target=TARGET,
                    batch=batch,
                    p50_ms=step_ms,
                    p90_ms=step_ms,
                    repeats=row.samples.get(f"decode b{batch}", 0),
                    throughput=tok_s,
                    noisy=row.noisy,
                    noise_reason="; ".join(row.noise_reasons) or None,
                    speedup=tok_s / base_tok_s if base_tok_s and entry is not entries[0] else None,
                )
            )
    info = TargetInfo(
        target=TARGET,
        runtime="onnxruntime-genai",
        provider="CPUExecutionProvider",
        precision="per model",
        threads=result.threads,
        noisy=any(r.noisy for r in result.rows),
        noise_reasons=sorted({reason for r in result.rows for reason in r.noise_reasons}),
    )
    return Timing(targets=[info])
