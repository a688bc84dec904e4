"""One compression run: load -> pipeline -> export -> verify -> measure -> report.

The output directory is checked before any work starts; everything is written to a
temporary directory beside it and moved into place only when the run is complete, so a
failed or interrupted run (an exception, Ctrl-C, SIGTERM) leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.bench.output import write_reports
from compresskit.bench.probe import measure_costs, measure_p50
from compresskit.bench.report import FailedCandidate, Report
from compresskit.bench.verdict import judge
from compresskit.context import Context, ModelCost
from compresskit.data import Columns, DataBundle
from compresskit.errors import CompressKitError
from compresskit.export.onnx import Exporter
from compresskit.models.hf import HuggingFaceModel
from compresskit.models.hf_head import fit_head
from compresskit.models.loading import LoadedModel
from compresskit.paths import check_output_dir, staged_directory
from compresskit.pipeline import BranchFailure, Pipeline, run_pipeline
from compresskit.policies import Policy, load_policy, pipeline_of, policy_of
from compresskit.progress import status
from compresskit.run_inputs import run_data, run_teacher
from compresskit.run_report import evaluate_run
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
    bundle = run_data(data, loaded, seed, columns, policy.sequence_length, task)
    if isinstance(loaded.model, HuggingFaceModel) and loaded.model.needs_head:
        status(fit_head(loaded.model, bundle, loaded.source))
    torch.manual_seed(seed)
    bundle.check_model(loaded.model)
    teacher = run_teacher(policy, loaded, trust_factory=trust_factory)
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
            report = evaluate_run(
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


def _default_out(name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"
