"""One compression run: load -> pipeline -> export -> verify -> measure -> report.

The output directory is checked before any work starts; everything is written to a
temporary directory beside it and moved into place only when the run is complete, so a
failed or interrupted run (an exception, Ctrl-C, SIGTERM) leaves nothing behind.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit._version import __version__
from compresskit.bench.harness import measure_entries
from compresskit.bench.measurement import TargetInfo, machine_info
from compresskit.bench.output import write_reports
from compresskit.bench.probe import measure_costs, measure_p50
from compresskit.bench.report import Entry, FailedCandidate, Report
from compresskit.bench.verdict import judge
from compresskit.context import Context, ModelCost
from compresskit.data import Columns, DataBundle, load_data
from compresskit.data.preprocessing import DEFAULT_TEXT_LENGTH
from compresskit.digest import source_digest
from compresskit.errors import CompressKitError
from compresskit.evaluation import RunModel, evaluate_models
from compresskit.export.onnx import Exporter
from compresskit.models.hf import HuggingFaceModel
from compresskit.models.hf_head import fit_head
from compresskit.models.loading import LoadedModel, load_model
from compresskit.models.size import position_limit
from compresskit.paths import check_output_dir, staged_directory
from compresskit.pipeline import BranchFailure, Candidate, Pipeline, run_pipeline
from compresskit.policies import Policy, load_policy, pipeline_of, policy_of
from compresskit.progress import status
from compresskit.tasks import get_task
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
    profile: bool = True,
    trust_factory: bool = False,
    columns: Columns | None = None,
    task: str | None = None,
) -> RunResult:
    """Compress ``model`` with ``policy`` (a policy name or file, a :class:`Policy`, or a
    :class:`Pipeline` built in code) and measure every candidate against the baseline;
    with ``profile``, ONNX Runtime targets also say where each model's time goes.
    ``trust_factory`` allows teachers saved by compresskit to run the architecture factory
    they record (see :func:`~compresskit.models.loading.load_model`). ``columns`` names the
    text and label columns of a table given as ``data``; ``task`` says how the model is
    judged (default: what a Hugging Face model's head computes, else the data's task).

    Example::

        result = compresskit.run("default")
        result.report.candidates[0].latency[0].speedup
    """
    started = time.perf_counter()
    if not 0 <= seed < 2**63:
        raise CompressKitError(f"--seed {seed}: give an integer from 0 to 2**63-1")
    world = distributed.setup()  # joins torchrun's process group; one process otherwise
    if isinstance(policy, Pipeline):
        policy = policy_of(policy)
    elif not isinstance(policy, Policy):
        policy = load_policy(policy)
    pipeline = pipeline_of(policy, where=f"policy {policy.name}")
    final = Path(out) if out is not None else _default_out(policy.name)
    if world.is_main:
        check_output_dir(final)
    loaded = LoadedModel.of(model)
    bundle = _bundle(data, loaded, seed, columns, policy.sequence_length, task)
    if isinstance(loaded.model, HuggingFaceModel) and loaded.model.needs_head:
        status(fit_head(loaded.model, bundle, loaded.source))
    torch.manual_seed(seed)
    bundle.check_model(loaded.model)
    teacher = _teacher(policy, loaded, trust_factory=trust_factory)
    ctx = Context(
        data=bundle,
        teacher=teacher,
        example_inputs=bundle.example_inputs(batch_size=2),
        seed=seed,
        budget=policy.budget,
        latency_probe=_rank_zero_p50,
        profile_probe=_rank_zero_costs,
        trust_factory=trust_factory,
    )
    # Every rank runs every pass (training passes together, through DDP) ...
    failures: list[BranchFailure] = []
    # A failing branch is set aside in one process; across processes every rank must stop
    # (a rank that skipped a branch would wait forever in the others' collectives).
    candidates = run_pipeline(
        pipeline, loaded.model, ctx, failures=failures if world.world_size == 1 else None
    )

    def write_outputs() -> Report:
        with staged_directory(final) as tmp:
            report = _evaluate(
                policy, loaded, bundle, candidates, tmp, seed, exporter, latency_seconds, profile
            )
            report.failed = [
                FailedCandidate(name=name, node=f.node, pass_name=f.pass_name, error=f.error)
                for f in failures
                for name in f.candidates
            ]
            report = judge(report, policy.budget)
            report.seconds = time.perf_counter() - started
            write_reports(report, tmp)
        return report

    # ... and rank 0 alone exports, measures and writes, once the others are done.
    report = distributed.main_only(write_outputs, what="export, benchmarks and report")
    models = {"baseline": loaded.model, **{c.name: c.model for c in candidates}}
    return RunResult(report, models, final)


def _rank_zero_p50(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], **at: Any) -> float:
    """A measurement steers a pass: rank 0 measures and every rank takes its answer, so
    that all ranks build the same model (one process: just the measurement)."""
    return distributed.main_only(lambda: measure_p50(model, example_inputs, **at), what="timing")


def _rank_zero_costs(
    models: Sequence[nn.Module], example_inputs: tuple[torch.Tensor, ...], **at: Any
) -> list[ModelCost]:
    return distributed.main_only(
        lambda: measure_costs(models, example_inputs, **at), what="profiling"
    )


def _bundle(
    data: DataBundle | str | None,
    loaded: LoadedModel,
    seed: int,
    columns: Columns | None,
    sequence_length: int | None,
    task: str | None,
) -> DataBundle:
    if isinstance(data, DataBundle):
        return _with_task(data, task)
    model_task = loaded.source.get("task")  # a Hugging Face model says what it computes
    chosen = task or (model_task if isinstance(model_task, str) else None)
    if chosen == "causal-lm":
        return _text_windows(data, loaded, seed, columns, sequence_length)
    spec = data or loaded.default_data
    if spec is None:
        raise CompressKitError(
            "no data given and the model has no default dataset: pass --data "
            "(digits, fashion-mnist, a .npz file, a .csv of texts, an image folder or "
            "module:factory)"
        )
    bundle = load_data(
        spec,
        seed=seed,
        preprocessing=loaded.preprocessing,
        columns=columns,
        sequence_length=sequence_length,
    )
    return _with_task(bundle, chosen)


def _text_windows(
    data: str | None,
    loaded: LoadedModel,
    seed: int,
    columns: Columns | None,
    sequence_length: int | None,
) -> DataBundle:
    """Documents tokenized with the model's own tokenizer, split by document and packed
    into windows of the policy's sequence length (see :mod:`compresskit.data.text`)."""
    from compresskit.data.text import load_text

    if data is None:
        raise CompressKitError(
            "no data given: a causal language model needs --data (a .txt file, a .jsonl file "
            "with a text field, or a folder of .txt files)"
        )
    preprocessing = loaded.preprocessing
    tokenizer = preprocessing.tokenizer if preprocessing is not None else None
    length = preprocessing.text_length(sequence_length) if preprocessing else sequence_length
    return load_text(
        data,
        tokenizer,
        seq_len=length or DEFAULT_TEXT_LENGTH,
        seed=seed,
        text_field=(columns.text if columns else None) or "text",
    )


def _with_task(bundle: DataBundle, task: str | None) -> DataBundle:
    if task is None or task == bundle.task:
        return bundle
    labelled = get_task(task).labelled
    return replace(bundle, task=task, num_classes=bundle.num_classes if labelled else None)


def _teacher(policy: Policy, loaded: LoadedModel, *, trust_factory: bool) -> nn.Module:
    teacher = (
        copy.deepcopy(loaded.model)
        if policy.teacher == "input"
        else load_model(policy.teacher, trust_factory=trust_factory).model
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
