"""The ``compresskit`` command: thin click wrappers over the Python API."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from compresskit._version import __version__
from compresskit.errors import CompressKitError


class _Group(click.Group):
    """Turns :class:`CompressKitError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CompressKitError as error:
            if "TORCHELASTIC_ERROR_FILE" in os.environ:  # a rank under torchrun: tell it why
                from compresskit.training.distributed import record_error

                record_error(error)
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="compresskit")
def cli() -> None:
    """Compress PyTorch models (prune, distill, quantize), export to ONNX, measure."""


@cli.command(short_help="Prune, distil and quantize a model; export, verify, measure.")
@click.argument("checkpoint", required=False)
@click.option(
    "--policy", default="default", show_default=True, help="Built-in policy name or YAML file."
)
@click.option(
    "--data",
    "data_spec",
    help="digits, fashion-mnist, FILE.npz, a .csv/.jsonl/.parquet of texts and labels, a "
    "folder of class folders of images, or MODULE:FACTORY.",
)
@click.option("--text-column", help="Column of a --data table holding the text (default: text).")
@click.option("--label-column", help="Column of a --data table holding the label (default: label).")
@click.option(
    "--task",
    type=click.Choice(["classification", "embedding", "fidelity"]),
    help="How the model is judged (default: its Hugging Face architecture, else "
    "classification); fidelity: agreement with the original, no labels.",
)
@click.option("--arch", help="MODULE:FACTORY building the architecture of a state-dict checkpoint.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading a fully pickled model (runs code from the file).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory (default runs/<policy>-<time>)."
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of calibration sampling, training order and initialisation.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "legacy"]),
    default="auto",
    show_default=True,
    help="ONNX exporter; auto: dynamo, or legacy for fake-quant models and on failure.",
)
@click.option(
    "--latency-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Time budget per latency measurement.",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Train on N processes on this machine (starts torchrun; see README).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "gloo", "nccl"]),
    help="torch.distributed backend under torchrun (default $COMPRESSKIT_BACKEND or auto).",
)
def compress(
    checkpoint: str | None,
    policy: str,
    data_spec: str | None,
    text_column: str | None,
    label_column: str | None,
    task: str | None,
    arch: str | None,
    trust_pickle: bool,
    out: Path | None,
    seed: int,
    exporter: str,
    latency_seconds: float,
    nproc: int,
    backend: str | None,
) -> None:
    """Compress CHECKPOINT (default: the embedded example:digits-cnn) with a policy.

    Under torchrun (or with --nproc N) the training passes run on every process through
    DistributedDataParallel; rank 0 alone exports, benchmarks and writes the run directory.
    """
    from compresskit.cli.tables import print_report
    from compresskit.compress import run
    from compresskit.data import Columns
    from compresskit.models.loading import load_model
    from compresskit.policies import load_policy
    from compresskit.training import distributed

    if nproc > 1:
        if distributed.launched_by_torchrun():
            raise CompressKitError("--nproc starts torchrun itself; under torchrun leave it out")
        load_policy(policy)  # fail on a bad policy here, not once per process
        distributed.launch(nproc, ["compress", *_forwarded_options(click.get_current_context())])
        return
    with distributed.session(backend) as world:
        loaded_policy = load_policy(policy)
        loaded = load_model(checkpoint, arch=arch, trust_pickle=trust_pickle, task=task)
        result = run(
            loaded_policy,
            model=loaded,
            data=data_spec,
            out=out,
            seed=seed,
            exporter=exporter,  # type: ignore[arg-type]
            latency_seconds=latency_seconds,
            columns=Columns(text_column, label_column),
            task=task,
        )
    if world.is_main:
        print_report(result.report)
        click.echo(f"\nrun directory: {result.run_dir}")


def _forwarded_options(ctx: click.Context) -> list[str]:
    """The command line of ``ctx`` again, without --nproc: what each process runs."""
    argv: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name == "nproc" or value is None or value is False:
            continue
        if isinstance(param, click.Argument):
            argv.append(str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            argv.append(param.opts[0])
        else:
            argv += [param.opts[0], str(value)]
    return argv


@cli.command(short_help="Export a checkpoint to ONNX and check it against torch.")
@click.argument("checkpoint")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the .onnx file."
)
@click.option("--arch", help="MODULE:FACTORY for a state-dict checkpoint.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a fully pickled model.")
@click.option("--data", "data_spec", help="Dataset for inputs and parity (default: the model's).")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    help="Shape of one input without the batch axis, e.g. 3,224,224 (repeat per input); "
    "parity then runs on random inputs.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "legacy"]),
    default="auto",
    show_default=True,
    help="ONNX exporter; auto: dynamo, or legacy for fake-quant models and on failure.",
)
@click.option("--opset", type=click.IntRange(min=13), help="ONNX opset (default 18; legacy 17).")
def export(
    checkpoint: str,
    out: Path,
    arch: str | None,
    trust_pickle: bool,
    data_spec: str | None,
    input_shapes: tuple[str, ...],
    exporter: str,
    opset: int | None,
) -> None:
    """Export CHECKPOINT to ONNX and check ONNX Runtime against torch."""
    from compresskit.export.standalone import export_checkpoint, parse_shape

    result = export_checkpoint(
        checkpoint,
        out,
        arch=arch,
        trust_pickle=trust_pickle,
        data=data_spec,
        input_shapes=[parse_shape(s) for s in input_shapes],
        exporter=exporter,  # type: ignore[arg-type]
        opset=opset,
    )
    exported, parity = result.export, result.parity
    extra = f" + {exported.data_path.name}" if exported.data_path else ""
    click.echo(
        f"wrote {out}{extra} ({exported.bytes:,} bytes, {exported.exporter} exporter"
        + (f"; fallback: {exported.fallback_reason}" if exported.fallback_reason else "")
        + ")"
    )
    click.echo(
        f"ORT vs torch on {result.checked_on} ({parity.precision}): max abs error "
        f"{parity.max_abs_error:.2e} (allowed {parity.tolerance:.2e}), agreement "
        f"{parity.agreement:.4f}"
    )
    if not parity.ok:
        raise CompressKitError(
            f"{out}: ONNX Runtime output differs from torch beyond the {parity.precision} "
            "tolerance (the file is kept for inspection); try --exporter legacy"
        )


@cli.command(short_help="Time ONNX files or checkpoints on targets, interleaved.")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=["cpu-ort"],
    show_default=True,
    help="Target name or YAML file (repeat; 'all' for every built-in target).",
)
@click.option("--batch", default="1,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write results as JSON.")
@click.option(
    "--seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Time cap per model and batch (timing stops earlier once the median is stable).",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    help="Shape of one input without the batch axis (repeat per input).",
)
@click.option("--data", "data_spec", help="Dataset whose inputs to time on.")
@click.option("--arch", help="MODULE:FACTORY for state-dict checkpoints.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading fully pickled models.")
@click.option(
    "--threads", type=click.IntRange(min=1), help="Intra-op threads (overrides the targets')."
)
def bench(
    models: tuple[Path, ...],
    targets: tuple[str, ...],
    batch: str,
    json_out: Path | None,
    seconds: float,
    input_shapes: tuple[str, ...],
    data_spec: str | None,
    arch: str | None,
    trust_pickle: bool,
    threads: int | None,
) -> None:
    """Measure MODELS (.onnx files or torch checkpoints) on targets; the first is the
    baseline of the speedups. Each target runs in its own process."""
    from compresskit.bench.files import bench_files, parse_batches, runs_json
    from compresskit.cli.tables import print_runs
    from compresskit.export.standalone import parse_shape

    runs = bench_files(
        list(models),
        list(targets),
        parse_batches(batch),
        seconds=seconds,
        input_shapes=[parse_shape(s) for s in input_shapes],
        data=data_spec,
        arch=arch,
        trust_pickle=trust_pickle,
        threads=threads,
    )
    print_runs(runs)
    if json_out:
        json_out.write_text(json.dumps(runs_json(list(models), runs), indent=2))


@cli.command(short_help="Re-render a run's report.md and report.html.")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
def report(run_dir: Path) -> None:
    """Re-render report.md and report.html of RUN_DIR from its report.json."""
    from compresskit.bench.output import write_reports
    from compresskit.bench.report import Report
    from compresskit.cli.tables import print_report

    path = run_dir / "report.json" if run_dir.is_dir() else run_dir
    loaded = Report.load(path)
    written = write_reports(loaded, path.parent, json_too=False)
    print_report(loaded)
    click.echo("\nwrote " + ", ".join(str(p) for p in written))


@cli.group(short_help="List, show and validate policies; print their JSON Schema.")
def policies() -> None:
    """List, show, validate policies and print their JSON Schema."""


@policies.command("list")
def policies_list() -> None:
    """Built-in policies with their descriptions."""
    from compresskit.policies.files import builtin_policy_names, policy_summary

    for name in builtin_policy_names():
        click.echo(f"{name:<20} {policy_summary(name)}")


@policies.command("show")
@click.argument("name")
def policies_show(name: str) -> None:
    """Print a policy's YAML."""
    from compresskit.policies.files import policy_text

    click.echo(policy_text(name)[0], nl=False)


@policies.command("validate")
@click.argument("files", nargs=-1, required=True)
def policies_validate(files: tuple[str, ...]) -> None:
    """Validate policy files (the first error is reported, exit 2)."""
    from compresskit.policies import load_policy

    for file in files:
        policy = load_policy(file)
        click.echo(f"{file}: ok ({len(policy.nodes)} nodes)")


@policies.command("schema")
def policies_schema() -> None:
    """Print the JSON Schema of policy files."""
    from compresskit.policies import policy_json_schema

    click.echo(json.dumps(policy_json_schema(), indent=2))


@cli.group(short_help="Export and benchmark targets, and whether they run here.")
def targets() -> None:
    """Export and benchmark targets."""


@targets.command("list")
def targets_list() -> None:
    """Built-in targets and whether they can run here."""
    from compresskit.export.targets import builtin_target_names, load_target, target_available

    for name in builtin_target_names():
        target = load_target(name)
        reason = target_available(target)
        click.echo(
            f"{name:<13} {target.runtime:<11} {target.provider:<26} "
            + ("available" if not reason else "unavailable")
        )
        if reason:
            click.echo(
                textwrap.fill(reason, 78, initial_indent=" " * 14, subsequent_indent=" " * 14)
            )


def main() -> None:
    # SIGTERM (``timeout``, torchrun stopping the survivors of a failed rank) unwinds
    # Python like Ctrl-C does, so a run removes its temporary directory on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    entry: Callable[..., Any] = cli.main
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # a rank under torchrun: record crashes
        from torch.distributed.elastic.multiprocessing.errors import record

        entry = record(entry)
    entry(prog_name="compresskit", standalone_mode=True)
    sys.exit(0)
