"""The ``compresskit`` command: thin click wrappers over the Python API (``compress``,
``policies``, ``targets`` here; ``export``, ``bench``, ``report`` in :mod:`.measure`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from compresskit import interrupts
from compresskit.cli import (
    measure,  # noqa: F401  (registers export, bench and report)
    search,  # noqa: F401  (registers search)
)
from compresskit.cli.group import (
    EXIT_FILE_ENV,
    MAX_SECONDS,
    TRUST_FACTORY_HELP,
    Seconds,
    cli,
)
from compresskit.errors import CompressKitError

__all__ = ["cli", "main"]


@cli.command(short_help="Prune, distil and quantize a model; export, verify, measure.")
@click.argument("checkpoint", required=False)
@click.option(
    "--policy", default="default", show_default=True, help="Built-in policy name or YAML file."
)
@click.option(
    "--data",
    "data_spec",
    help="digits, fashion-mnist, FILE.npz, a .csv/.jsonl/.parquet of texts and labels, a "
    "folder of class folders of images, or MODULE:FACTORY; for a causal LM a .txt file, a "
    ".jsonl with a text field (--text-column) or a folder of .txt files.",
)
@click.option("--text-column", help="Column of a --data table holding the text (default: text).")
@click.option("--label-column", help="Column of a --data table holding the label (default: label).")
@click.option(
    "--task",
    type=click.Choice(["classification", "embedding", "fidelity", "causal-lm"]),
    help="How the model is judged (default: its Hugging Face architecture, else "
    "classification); fidelity: agreement with the original, no labels; causal-lm: "
    "perplexity of a decoder LM (a ...ForCausalLM directory or a .gguf file).",
)
@click.option("--arch", help="MODULE:FACTORY building the architecture of a state-dict checkpoint.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading a fully pickled model (runs code from the file).",
)
@click.option("--trust-factory", is_flag=True, help=TRUST_FACTORY_HELP)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory (default runs/<policy>-<time>)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print report.json on stdout (the tables go to stderr).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),
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
    type=Seconds(min=0.05, max=MAX_SECONDS),
    help="Time budget per latency measurement.",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=1024),
    help="Train on N processes on this machine (starts torchrun; see README).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "gloo", "nccl"]),
    help="torch.distributed backend under torchrun (default $COMPRESSKIT_BACKEND or auto).",
)
@click.pass_context
def compress(
    ctx: click.Context,
    checkpoint: str | None,
    policy: str,
    data_spec: str | None,
    text_column: str | None,
    label_column: str | None,
    task: str | None,
    arch: str | None,
    trust_pickle: bool,
    trust_factory: bool,
    out: Path | None,
    as_json: bool,
    seed: int,
    exporter: str,
    latency_seconds: float,
    nproc: int,
    backend: str | None,
) -> None:
    """Compress CHECKPOINT (default: the embedded example:digits-cnn) with a policy.

    Exits 0 when every candidate was built, measured and met the budget; 3 when one
    missed the budget; 4 when one failed ONNX parity or was not measured; 2 on bad input.

    Under torchrun (or with --nproc N) the training passes run on every process through
    DistributedDataParallel; rank 0 alone exports, benchmarks and writes the run directory.
    """
    from rich.console import Console

    from compresskit.bench.verdict import exit_code
    from compresskit.cli.tables import print_report
    from compresskit.compress import run
    from compresskit.data import Columns
    from compresskit.models.loading import load_model
    from compresskit.paths import check_output_dir
    from compresskit.policies import load_policy
    from compresskit.training import distributed

    if nproc > 1:
        if distributed.launched_by_torchrun():
            raise CompressKitError("--nproc starts torchrun itself; under torchrun leave it out")
        load_policy(policy)  # fail on a bad policy here, not once per process
        if out is not None:
            check_output_dir(out)
        ctx.exit(_launch(nproc, _forwarded_options(ctx)))
    with distributed.session(backend) as world:
        loaded_policy = load_policy(policy)
        loaded = load_model(
            checkpoint, arch=arch, trust_pickle=trust_pickle, trust_factory=trust_factory, task=task
        )
        result = run(
            loaded_policy,
            model=loaded,
            data=data_spec,
            out=out,
            seed=seed,
            exporter=exporter,  # type: ignore[arg-type]
            latency_seconds=latency_seconds,
            trust_factory=trust_factory,
            columns=Columns(text_column, label_column),
            task=task,
        )
    if not world.is_main:
        return
    code = exit_code(result.report)
    tables = Console(stderr=True) if as_json else None
    print_report(result.report, tables)
    click.echo(f"\nrun directory: {result.run_dir}", err=as_json)
    if as_json:
        click.echo(result.report.model_dump_json(indent=2))
    if os.environ.get(EXIT_FILE_ENV) and distributed.launched_by_torchrun():
        Path(os.environ[EXIT_FILE_ENV]).write_text(str(code))
        return  # torchrun reads a non-zero exit as a failed rank
    ctx.exit(code)


def _launch(nproc: int, argv: list[str]) -> int:
    """Run ``compress argv`` on ``nproc`` processes; the exit code rank 0 decided."""
    from compresskit.training import distributed

    with tempfile.TemporaryDirectory(prefix="compresskit-exit-") as tmp:
        exit_file = Path(tmp) / "code"
        os.environ[EXIT_FILE_ENV] = str(exit_file)
        try:
            distributed.launch(nproc, ["compress", *argv])
        finally:
            del os.environ[EXIT_FILE_ENV]
        return int(exit_file.read_text()) if exit_file.exists() else 0


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
    # Python like Ctrl-C does, so a run removes its temporary directory on the way out;
    # both are remembered, so a library that loses one cannot let the run carry on.
    interrupts.install()
    entry: Callable[..., Any] = cli.main
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # a rank under torchrun: record crashes
        from torch.distributed.elastic.multiprocessing.errors import record

        entry = record(entry)
    try:
        entry(prog_name="compresskit", standalone_mode=True)
    except SystemExit as stop:
        if interrupts.received() is None:
            raise
        # Interrupted, and unwound: temporary files are gone and the one line is printed.
        # Leave with that status now: interpreter finalisation after an interrupt
        # sometimes ended the process by SIGINT instead (2 runs in 32, under load).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code if isinstance(stop.code, int) else 1)
    sys.exit(0)
