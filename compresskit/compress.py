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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from compresskit._version import __version__
from compresskit.bench.harness import measure_entries
from compresskit.bench.measurement import machine_info
from compresskit.bench.output import write_reports
from compresskit.bench.probe import measure_p50
from compresskit.bench.report import FailedCandidate, Report
from compresskit.bench.verdict import judge
from compresskit.context import Context
from compresskit.data import Columns, DataBundle, load_data
from compresskit.digest import source_digest
from compresskit.errors import CompressKitError
from compresskit.evaluation import evaluate_models
from compresskit.export.onnx import Exporter
from compresskit.models.hf import HuggingFaceModel
from compresskit.models.hf_head import fit_head
from compresskit.models.loading import LoadedModel, load_model
from compresskit.models.size import position_limit
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
    columns: Columns | None = None,
    task: str | None = None,
) -> RunResult:
    """Compress ``model`` with ``policy`` (a policy name or file, a :class:`Policy`, or a
    :class:`Pipeline` built in code) and measure every candidate against the baseline.
    ``columns`` names the text and label columns of a table given as ``data``; ``task``
    says how the model is judged (default: what a Hugging Face model's head computes, else
    the data's task).

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
    loaded = LoadedModel.of(model)
    bundle = _bundle(data, loaded, seed, columns, policy.sequence_length, task)
    if isinstance(loaded.model, HuggingFaceModel) and loaded.model.needs_head:
        status(fit_head(loaded.model, bundle, loaded.source))
    torch.manual_seed(seed)
    bundle.check_model(loaded.model)
    teacher = _teacher(policy, loaded)
    ctx = Context(
        data=bundle,
        teacher=teacher,
        example_inputs=bundle.example_inputs(batch_size=2),
        seed=seed,
        budget=policy.budget,
        latency_probe=measure_p50,
    )
    final = Path(out) if out is not None else _default_out(policy.name)
    if world.is_main and final.exists() and any(final.iterdir()):
        raise CompressKitError(f"--out {final} exists and is not empty; choose another directory")
    # Every rank runs every pass (training passes together, through DDP) ...
    failures: list[BranchFailure] = []
    candidates = run_pipeline(pipeline, loaded.model, ctx, failures=failures)

    def write_outputs() -> Report:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            report = _evaluate(
                policy, loaded, bundle, candidates, tmp, seed, exporter, latency_seconds
            )
            report.failed = [
                FailedCandidate(name=name, node=f.node, pass_name=f.pass_name, error=f.error)
                for f in failures
                for name in f.candidates
            ]
            report = judge(report, policy.budget)
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
    model_task = loaded.source.get("task")  # a Hugging Face model says what it computes
    return _with_task(bundle, task or (model_task if isinstance(model_task, str) else None))


def _with_task(bundle: DataBundle, task: str | None) -> DataBundle:
    if task is None or task == bundle.task:
        return bundle
    labelled = get_task(task).labelled
    return replace(bundle, task=task, num_classes=bundle.num_classes if labelled else None)


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
    """Verify, measure and judge every model; the report of the run."""
    models = [("baseline", loaded.model, []), *((c.name, c.model, c.nodes) for c in candidates)]
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
        max_sequence_length=position_limit(loaded.model),
    )
    baseline, *rest = entries
    report = Report(
        compresskit_version=__version__,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        policy=policy.name,
        checkpoint=loaded.describe(),
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
        labels=list(bundle.labels) if bundle.labels else None,
    )
    return report
