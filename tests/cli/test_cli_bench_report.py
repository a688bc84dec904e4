"""`compresskit bench` on any model, `export` on its own, `report RUN_DIR`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from click.testing import CliRunner

from compresskit.bench.measurement import BenchDocument
from compresskit.cli.main import cli
from compresskit.export.onnx import onnx_metadata
from compresskit.export.targets import builtin_target_names
from compresskit.testing import TinyCNN


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_export_and_bench_a_state_dict_given_its_input_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    arch = "compresskit.testing.tiny:TinyCNN"
    exported = invoke(
        "export", str(tmp_path / "w.pt"), "--arch", arch, "--input-shape", "1,8,8",
        "--out", str(tmp_path / "m.onnx"),
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert "random inputs (fp32)" in exported.output and "dynamo exporter" in exported.output
    props = onnx_metadata(tmp_path / "m.onnx")
    assert props["source_sha256_of"] == "file" and len(props["source_sha256"]) == 64

    bench = invoke(
        "bench", str(tmp_path / "m.onnx"), str(tmp_path / "w.pt"), "--arch", arch,
        "--input-shape", "1,8,8", "--target", "cpu-ort-1t", "--target", "torch-cpu",
        "--batch", "1,2", "--seconds", "0.05", "--json", str(tmp_path / "b.json"),
    )  # fmt: skip
    assert bench.exit_code == 0, bench.output
    document = BenchDocument.model_validate_json((tmp_path / "b.json").read_text())
    assert document.schema_version == 2 and document.models[0].endswith("m.onnx")
    rows = {
        (x.target, m.name, x.batch) for t in document.targets for m in t.models for x in m.latency
    }
    assert rows == {
        ("cpu-ort-1t", "m", 1), ("cpu-ort-1t", "m", 2), ("cpu-ort-1t", "w", 1),
        ("cpu-ort-1t", "w", 2), ("torch-cpu", "w", 1), ("torch-cpu", "w", 2),
    }  # fmt: skip
    # the .onnx cannot run on torch: said so, per model, not dropped
    torch_run = next(t for t in document.targets if t.target == "torch-cpu")
    assert any(m.name == "m" and "torch model" in " ".join(m.skipped) for m in torch_run.models)
    for run in document.targets:  # the baseline (m.onnx) did not run on torch: no ratio there
        for x in (x for m in run.models for x in m.latency):
            assert x.p50_ms > 0 and x.p99_ms is not None and x.throughput is not None
            assert (x.speedup is None) == (run.target == "torch-cpu")


def test_bench_profile_says_where_each_models_time_goes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.onnx.export(
        TinyCNN().eval(), (torch.randn(1, 1, 8, 8),), tmp_path / "m.onnx", dynamo=False,
        input_names=["x"], dynamic_axes={"x": {0: "batch"}},
    )  # fmt: skip
    bench = invoke(
        "bench", str(tmp_path / "m.onnx"), "--target", "cpu-ort-1t", "--batch", "4",
        "--seconds", "0.05", "--profile", "--json", str(tmp_path / "b.json"),
    )  # fmt: skip
    assert bench.exit_code == 0, bench.output
    printed = " ".join(bench.output.split())  # titles wrap at the table's width
    assert "m: where the time goes on cpu-ort-1t, batch 4" in printed
    assert "m: by kernel type on cpu-ort-1t, batch 4" in printed
    document = BenchDocument.model_validate_json((tmp_path / "b.json").read_text())
    (profile,) = document.targets[0].models[0].profiles
    assert "Conv" in " ".join(profile.by_op) and profile.kernel_ms > 0


def test_bench_all_targets_lists_every_skip_with_its_reason(tmp_path: Path) -> None:
    torch.save(TinyCNN().state_dict(), tmp_path / "w.pt")
    from compresskit.export.onnx import export_onnx

    export_onnx(TinyCNN(), (torch.randn(2, 1, 8, 8),), tmp_path / "m.onnx", exporter="legacy")
    result = invoke(
        "bench", str(tmp_path / "m.onnx"), "--target", "all", "--batch", "1", "--threads", "1",
        "--seconds", "0.05", "--json", str(tmp_path / "b.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert [t["target"] for t in data["targets"]] == builtin_target_names()
    measured = {t["target"] for t in data["targets"] if t["models"]}
    skipped = {t["target"]: t["skipped"] for t in data["targets"] if t["skipped"]}
    assert measured | set(skipped) == set(builtin_target_names())
    assert all(t["threads"] == 1 for t in data["targets"] if not t["skipped"])
    for name, reason in skipped.items():
        assert reason and f"{name} skipped: " in " ".join(result.output.split())


def test_report_re_renders_markdown_and_html(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(json.dumps(REPORT))
    before = (run_dir / "report.json").read_text()
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").read_text().startswith("# compresskit run: policy `tiny`")
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert (run_dir / "report.json").read_text() == before  # the data is not rewritten
    assert "int8" in result.output and "report.html" in result.output

    (run_dir / "report.json").write_text(json.dumps({**REPORT, "schema_version": 99}))
    refused = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert refused.exit_code == 2 and "schema_version 99" in refused.output


def _entry(name: str, accuracy: float, p50: float) -> dict:
    return {
        "name": name,
        "nodes": [] if name == "baseline" else ["quantize"],
        "params": 100,
        "macs": 1000,
        "onnx_bytes": 2048,
        "exporter": "dynamo",
        "metrics": {"accuracy": accuracy, "agreement": 1.0},
        "latency": [
            {
                "target": "cpu-ort",
                "batch": 1,
                "p50_ms": p50,
                "p90_ms": p50,
                "repeats": 9,
                "speedup": 1.0 / p50,
            },
        ],  # fmt: skip
        "parity": {
            "max_abs_error": 0.0,
            "mean_abs_error": 0.0,
            "agreement": 1.0,
            "samples": 8,
            "tolerance": 1e-3,
            "min_agreement": 0.999,
            "ok": True,
        },  # fmt: skip
    }


REPORT = {
    "schema_version": 2,
    "compresskit_version": "0.1.0",
    "created": "2026-01-01T00:00:00+00:00",
    "policy": "tiny",
    "checkpoint": "w.pt",
    "data": "tiny",
    "seed": 0,
    "seconds": 1.0,
    "baseline": _entry("baseline", 0.9, 1.0),
    "candidates": [_entry("int8", 0.89, 0.5)],
}


def _report_with_records():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from test_report import report_dict

    from compresskit.bench.report import Report

    return Report.model_validate(report_dict())


def test_the_table_fits_80_columns_and_log_lines_stay_whole() -> None:
    from rich.console import Console

    from compresskit.cli.tables import print_report

    report = _report_with_records()
    narrow = Console(file=io.StringIO(), width=80)
    print_report(report, narrow)
    text = narrow.file.getvalue()  # type: ignore[attr-defined]
    table_lines = text[: text.index("* noisy")].splitlines()  # the tables come first
    assert all(len(line.rstrip()) <= 80 for line in table_lines), text
    assert "…" not in text  # no cell cut short
    for value in ("1,000", "20.00k", "4.0 kB", "0.9400", "95%", "1.000*", "2.00x", "24.000"):
        assert value in text, value
    # The verdict and record lines are whole lines in a log, not wrapped at 80 columns.
    assert any(len(line) > 80 and "pruned 2 of 3 layers" in line for line in text.splitlines())
    wide = Console(file=io.StringIO(), width=160)
    print_report(report, wide)
    header = next(line for line in wide.file.getvalue().splitlines() if "params" in line)  # type: ignore[attr-defined]
    assert "b1 ms" in header and "acc" in header  # one table when it fits


def test_status_lines_show_node_ids_and_are_whole_in_a_log(monkeypatch) -> None:
    from rich.console import Console

    from compresskit import progress

    log = Console(file=io.StringIO(), width=80, stderr=False)
    monkeypatch.setattr(progress, "console", log)
    monkeypatch.setenv("COMPRESSKIT_QUIET", "0")
    progress.status("[prune] prune_channels")
    progress.status("[red]not markup[/red] " + "x" * 120, style="red")
    lines = log.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[0] == "· [prune] prune_channels"
    assert lines[1] == "· [red]not markup[/red] " + "x" * 120
