"""``compresskit export``, ``bench`` and ``report``: one model to ONNX, any models timed,
a run's report re-rendered."""

from __future__ import annotations

import json
from pathlib import Path

import click

from compresskit.cli.group import MAX_SECONDS, TRUST_FACTORY_HELP, Seconds, cli
from compresskit.errors import CompressKitError


@cli.command(short_help="Export a checkpoint to ONNX and check it against torch.")
@click.argument("checkpoint")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the .onnx file."
)
@click.option("--arch", help="MODULE:FACTORY for a state-dict checkpoint.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a fully pickled model.")
@click.option("--trust-factory", is_flag=True, help=TRUST_FACTORY_HELP)
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
@click.option(
    "--opset", type=click.IntRange(min=13, max=23), help="ONNX opset (default 18; legacy 17)."
)
def export(
    checkpoint: str,
    out: Path,
    arch: str | None,
    trust_pickle: bool,
    trust_factory: bool,
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
        trust_factory=trust_factory,
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
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path, allow_dash=True),
    help="Write results as JSON to a file ('-': stdout, the tables go to stderr).",
)
@click.option(
    "--seconds",
    default=1.0,
    show_default=True,
    type=Seconds(min=0.05, max=MAX_SECONDS),
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
@click.option("--trust-factory", is_flag=True, help=TRUST_FACTORY_HELP)
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=256),
    help="Intra-op threads (overrides the targets').",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also say where the time goes (ONNX Runtime targets): costliest modules and "
    "kernel types per model and batch.",
)
@click.pass_context
def bench(
    ctx: click.Context,
    models: tuple[Path, ...],
    targets: tuple[str, ...],
    batch: str,
    json_out: Path | None,
    seconds: float,
    input_shapes: tuple[str, ...],
    data_spec: str | None,
    arch: str | None,
    trust_pickle: bool,
    trust_factory: bool,
    threads: int | None,
    profile: bool,
) -> None:
    """Measure MODELS (.onnx files or torch checkpoints) on targets; the first is the
    baseline of the speedups. Each target runs in its own process.

    Exits 4 when a model could not be loaded or run on a target that ran (listed with the
    reason), 2 on bad input."""
    from rich.console import Console

    from compresskit.bench.files import bench_files, parse_batches, runs_json
    from compresskit.bench.verdict import EXIT_FAILED
    from compresskit.cli.tables import print_runs
    from compresskit.export.standalone import parse_shape
    from compresskit.paths import check_output_file, write_text_atomic

    to_stdout = json_out is not None and str(json_out) == "-"
    if json_out is not None and not to_stdout:
        check_output_file(json_out, what="--json", inputs=models)
    runs = bench_files(
        list(models),
        list(targets),
        parse_batches(batch),
        seconds=seconds,
        input_shapes=[parse_shape(s) for s in input_shapes],
        data=data_spec,
        arch=arch,
        trust_pickle=trust_pickle,
        trust_factory=trust_factory,
        threads=threads,
        profile=profile,
    )
    print_runs(runs, Console(stderr=True) if to_stdout else None)
    document = json.dumps(runs_json(list(models), runs), indent=2)
    if to_stdout:
        click.echo(document)
    elif json_out is not None:
        write_text_atomic(json_out, document)
    failed = [m.name for run in runs if not run.skipped for m in run.models if m.error]
    if failed:
        click.echo(f"not measured: {', '.join(dict.fromkeys(failed))}", err=True)
        ctx.exit(EXIT_FAILED)


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
