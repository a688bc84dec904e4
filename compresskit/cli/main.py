"""The ``compresskit`` command: thin click wrappers over the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from compresskit import __version__
from compresskit.errors import CompressKitError


class _Group(click.Group):
    """Turns :class:`CompressKitError` into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CompressKitError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compresskit")
def cli() -> None:
    """Compress PyTorch models (prune, distill, quantize), export to ONNX, measure."""


@cli.command()
@click.argument("checkpoint", required=False)
@click.option(
    "--policy", default="default", show_default=True, help="Built-in policy name or YAML file."
)
@click.option("--data", "data_spec", help="digits, fashion-mnist, FILE.npz or MODULE:FACTORY.")
@click.option("--arch", help="MODULE:FACTORY building the architecture of a state-dict checkpoint.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow loading a fully pickled model (runs code from the file).",
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory (default runs/<policy>-<time>)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True
)
@click.option(
    "--latency-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Time budget per latency measurement.",
)
def compress(
    checkpoint: str | None,
    policy: str,
    data_spec: str | None,
    arch: str | None,
    trust_pickle: bool,
    out: Path | None,
    seed: int,
    exporter: str,
    latency_seconds: float,
) -> None:
    """Compress CHECKPOINT (default: the embedded example:digits-cnn) with a policy."""
    from compresskit.cli.tables import print_report
    from compresskit.compress import run
    from compresskit.models.loading import load_model
    from compresskit.policies import load_policy

    loaded_policy = load_policy(policy)
    loaded = load_model(checkpoint, arch=arch, trust_pickle=trust_pickle)
    result = run(
        loaded_policy,
        model=loaded,
        data=data_spec,
        out=out,
        seed=seed,
        exporter=exporter,  # type: ignore[arg-type]
        latency_seconds=latency_seconds,
    )
    print_report(result.report)
    click.echo(f"\nrun directory: {result.run_dir}")


@cli.command()
@click.argument("checkpoint")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Where to write the .onnx file."
)
@click.option("--arch", help="MODULE:FACTORY for a state-dict checkpoint.")
@click.option("--trust-pickle", is_flag=True)
@click.option("--data", "data_spec", help="Dataset giving the input shape (default: the model's).")
@click.option(
    "--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True
)
def export(
    checkpoint: str,
    out: Path,
    arch: str | None,
    trust_pickle: bool,
    data_spec: str | None,
    exporter: str,
) -> None:
    """Export CHECKPOINT to ONNX and check ONNX Runtime against torch."""
    from compresskit.data import load_data
    from compresskit.export.onnx import export_onnx, needs_legacy_exporter
    from compresskit.export.verify import compare, onnx_outputs, parity_tolerance, torch_outputs
    from compresskit.models.loading import load_model

    loaded = load_model(checkpoint, arch=arch, trust_pickle=trust_pickle)
    spec = data_spec or loaded.default_data
    if spec is None:
        raise CompressKitError("export needs example inputs: pass --data (e.g. digits)")
    bundle = load_data(spec)
    result = export_onnx(loaded.model, bundle.example_inputs(2), out, exporter=exporter)  # type: ignore[arg-type]
    loader = bundle.loader("eval", batch_size=256)
    reference = torch_outputs(loaded.model, loader)
    quantized = needs_legacy_exporter(loaded.model) or result.post_quantization is not None
    tolerance, agreement = parity_tolerance(quantized, reference)
    parity = compare(
        reference, onnx_outputs(out, loader), tolerance=tolerance, min_agreement=agreement
    )
    click.echo(
        f"wrote {out} ({out.stat().st_size:,} bytes, {result.exporter} exporter); ORT vs torch: "
        f"max abs error {parity.max_abs_error:.2e}, agreement {parity.agreement:.4f}"
    )
    if not parity.ok:
        raise CompressKitError(f"{out}: ONNX Runtime output differs from torch beyond tolerance")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", "targets", multiple=True, default=["cpu-ort"], show_default=True)
@click.option("--batch", default="1,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write results as JSON.")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(min=0.05))
def bench(
    model: Path, targets: tuple[str, ...], batch: str, json_out: Path | None, seconds: float
) -> None:
    """Measure the latency of an ONNX MODEL on targets."""
    import onnx
    import torch

    from compresskit.bench.latency import measure
    from compresskit.export.kernels import sample_feed
    from compresskit.export.targets import load_target, target_available

    try:
        sizes = [int(b) for b in batch.split(",")]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise CompressKitError(f"--batch {batch!r}: give positive integers like 1,8,32") from None
    if model.suffix != ".onnx":
        raise CompressKitError(f"{model}: bench takes an .onnx file (export it first)")
    graph = onnx.load(str(model), load_external_data=False)
    sample = tuple(torch.from_numpy(x) for x in sample_feed(graph, batch=1).values())
    rows = []
    for name in targets:
        target = load_target(name).model_copy(update={"batch_sizes": sizes})
        reason = target_available(target)
        if reason or target.runtime != "onnxruntime":
            rows.append({"target": name, "skipped": reason or "bench takes ONNX targets only"})
            continue
        rows += [vars(r) for r in measure(target, sample, onnx_path=model, max_seconds=seconds)]
    for row in rows:
        click.echo(
            "  ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    if json_out:
        json_out.write_text(json.dumps({"model": str(model), "results": rows}, indent=2))


@cli.group()
def policies() -> None:
    """List, show, validate policies and print their JSON Schema."""


@policies.command("list")
def policies_list() -> None:
    """Built-in policies with their descriptions."""
    from compresskit.policies import builtin_policy_names, load_policy

    for name in builtin_policy_names():
        click.echo(f"{name:<20} {load_policy(name).description}")


@policies.command("show")
@click.argument("name")
def policies_show(name: str) -> None:
    """Print a policy's YAML."""
    from compresskit.policies.loader import policy_text

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


@cli.group()
def targets() -> None:
    """Export and benchmark targets."""


@targets.command("list")
def targets_list() -> None:
    """Built-in targets and whether they can run here."""
    from compresskit.export.targets import builtin_target_names, load_target, target_available

    for name in builtin_target_names():
        target = load_target(name)
        reason = target_available(target)
        state = "available" if not reason else f"unavailable: {reason}"
        click.echo(f"{name:<14} {target.runtime:<12} {target.provider:<24} {state}")


def main() -> None:
    cli.main(prog_name="compresskit", standalone_mode=True)
    sys.exit(0)
