"""A run's models verified, measured and reported: every model exported and checked
against torch (:mod:`compresskit.evaluation`), timed on the policy's targets
(:mod:`compresskit.bench.harness`), gathered in one :class:`~compresskit.bench.report.Report`.
A transformers causal LM goes its own way (:mod:`compresskit.evaluation_lm`): Hugging Face
directories, KV-cache ONNX folders and generation speed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from compresskit._version import __version__
from compresskit.bench.harness import measure_entries
from compresskit.bench.measurement import TargetInfo, machine_info
from compresskit.bench.report import Entry, Report
from compresskit.data import DataBundle
from compresskit.digest import source_digest
from compresskit.evaluation import RunModel, evaluate_models
from compresskit.export.onnx import Exporter
from compresskit.models.loading import LoadedModel
from compresskit.models.size import position_limit
from compresskit.pipeline import Candidate
from compresskit.policies import Policy
from compresskit.training import distributed


def evaluate_run(
    policy: Policy,
    loaded: LoadedModel,
    bundle: DataBundle,
    candidates: list[Candidate],
    run_dir: Path,
    seed: int,
    exporter: Exporter,
    latency_seconds: float,
    profile: bool,
) -> Report:
    """Verify, measure and judge every model; the report of the run."""
    models = [("baseline", loaded.model, []), *((c.name, c.model, c.nodes) for c in candidates)]
    # A transformers causal LM ships as a Hugging Face directory and a KV-cache ONNX
    # folder; a language model built in code goes the generic way (one ONNX file).
    if bundle.task == "causal-lm" and hasattr(loaded.model, "save_pretrained"):
        lm = _evaluate_lm(policy, loaded, bundle, models, run_dir, latency_seconds)
        return _report(policy, loaded, bundle, seed, *lm)
    metadata = {
        "policy": policy.name,
        "source_checkpoint": loaded.describe(),
        **source_digest(loaded.path, loaded.model),
    }
    entries, onnx_paths = evaluate_models(
        models, bundle, run_dir, metadata=metadata, source=loaded.source, exporter=exporter
    )
    runs = measure_entries(
        entries,
        [(name, model) for name, model, _ in models],
        onnx_paths,
        [x.numpy() for x in bundle.example_inputs(batch_size=2)],
        targets=policy.targets,
        batch_sizes=policy.batch_sizes,
        sequence_length=policy.sequence_length,
        max_seconds=latency_seconds,
        dynamic_sequence=bundle.dynamic_sequence,
        profile=profile,
        max_sequence_length=position_limit(loaded.model),
    )
    skipped = {run.target: run.skipped for run in runs if run.skipped}
    targets = [run.info() for run in runs if not run.skipped]
    return _report(policy, loaded, bundle, seed, entries, targets, skipped)


def _evaluate_lm(
    policy: Policy,
    loaded: LoadedModel,
    bundle: DataBundle,
    models: Sequence[RunModel],
    run_dir: Path,
    latency_seconds: float,
) -> tuple[list[Entry], list[TargetInfo], dict[str, str]]:
    """A causal LM's run: Hugging Face directories, KV-cache ONNX folders, generation."""
    from compresskit.evaluation_lm import evaluate_decoders

    tokenizer = loaded.preprocessing.tokenizer if loaded.preprocessing else None
    entries, timing = evaluate_decoders(
        models,
        bundle,
        run_dir,
        tokenizer=tokenizer,
        batch_sizes=policy.batch_sizes,
        latency_seconds=latency_seconds,
    )
    return entries, timing.targets, timing.skipped


def _report(
    policy: Policy,
    loaded: LoadedModel,
    bundle: DataBundle,
    seed: int,
    entries: list[Entry],
    targets: list[TargetInfo],
    skipped: dict[str, str],
) -> Report:
    baseline, *rest = entries
    return Report(
        compresskit_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        policy=policy.name,
        checkpoint=loaded.describe(),
        data=bundle.name,
        task=bundle.task,
        seed=seed,
        seconds=0.0,
        skipped_targets=skipped,
        targets=targets,
        machine=machine_info(),
        world_size=distributed.current().world_size,
        backend=distributed.current().backend,
        baseline=baseline,
        candidates=rest,
        labels=list(bundle.labels) if bundle.labels else None,
    )
