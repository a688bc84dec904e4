"""Report schema round trip, older versions, markdown and the self-contained HTML."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from compresskit.bench.markdown import render_markdown
from compresskit.bench.output import write_reports
from compresskit.bench.plots import pareto_front
from compresskit.bench.report import SCHEMA_VERSION, Report
from compresskit.bench.text import table_rows
from compresskit.errors import CompressKitError

HISTORY = {
    "epochs": [
        {"epoch": 1, "step": 10, "loss": 0.9, "accuracy": 0.8, "metrics": {"accuracy": 0.8}},
        {"epoch": 2, "step": 20, "loss": 0.5, "accuracy": 0.9, "metrics": {"accuracy": 0.9}},
    ],
    "best_epoch": 2,
    "stopped": "completed",
}
STEPS = [
    {
        "id": "prune",
        "name": "prune_channels",
        "seconds": 1.25,
        "records": {
            "widths": {"conv1": [16, 8], "conv2": [32, 16], "head": [10, 10]},
            "params": [1000, 300],
            "macs": [20000, 6000],
            "steps": [{"step": 1, "ratio": 0.5}],
        },
    },
    {
        "id": "distill",
        "name": "distill",
        "seconds": 8.0,
        "records": {
            "history": HISTORY,
            "distill": {
                "terms": [{"loss": "kd", "weight": 0.5}],
                "projectors": {},
                "teacher_cached": True,
                "teacher": "input",
                "stop_at": None,
            },
        },
    },
    {"id": "int8", "name": "quantize", "seconds": 0.5, "records": {"quantized_layers": 3}},
    {"id": "mine", "name": "some_plugin_pass", "seconds": 0.1, "records": {"factor": 5.0}},
]


def entry(name: str, accuracy: float, p50: float, *, noisy: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [] if name == "baseline" else ["quantize"],
        "params": 1000,
        "macs": 20000,
        "onnx_bytes": 4000 if name == "baseline" else 1000,
        "exporter": "dynamo" if name == "baseline" else "legacy",
        "exporter_fallback_reason": None if name == "baseline" else "dynamo exporter failed: X",
        "metrics": {
            "accuracy": accuracy,
            "agreement": 1.0,
            "churn": 0.02,
            "churn_good": 0.005,
            "churn_bad": 0.015,
        },
        "int8_coverage": None if name == "baseline" else 0.95,
        "latency": [
            {
                "target": "cpu-ort",
                "batch": batch,
                "p50_ms": p50 * batch,
                "p90_ms": p50 * batch * 1.1,
                "repeats": 100,
                "p99_ms": p50 * batch * 1.3,
                "throughput": 1000 / p50,
                "noisy": noisy,
                "noise_reason": "load average 4.00 on 2 cores" if noisy else None,
                "speedup": 2.0 / p50,
            }
            for batch in (1, 8)
        ],
        "sessions": [{"target": "cpu-ort", "load_ms": 12.5, "peak_rss_delta_mb": 3.0}],
        "parity": {
            "max_abs_error": 1e-6,
            "mean_abs_error": 1e-7,
            "agreement": 1.0,
            "samples": 100,
            "tolerance": 1e-3,
            "min_agreement": 0.999,
            "ok": True,
        },
        "steps": [] if name == "baseline" else STEPS,
        "verdict": None
        if name == "baseline"
        else {"summary": f"{name} one-line verdict", "lines": [f"{name} verdict line"]},
    }


def report_dict() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "compresskit_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "policy": "p<olicy>",
        "checkpoint": "example:x",
        "data": "tiny",
        "seed": 0,
        "seconds": 1.5,
        "skipped_targets": {"cuda-ort": "CUDAExecutionProvider is not in this build"},
        "targets": [
            {
                "target": "cpu-ort",
                "runtime": "onnxruntime",
                "provider": "CPUExecutionProvider",
                "precision": "as-exported",
                "threads": 2,
                "inter_op_threads": 1,
                "allow_spinning": False,
                "noisy": True,
                "noise_reasons": ["load average 4.00 on 2 cores"],
            }
        ],
        "machine": {"cores": 2, "torch": "2.13.0"},
        "baseline": entry("baseline", 0.95, 2.0),
        "candidates": [entry("int8", 0.94, 1.0, noisy=True), entry("slow", 0.90, 3.0)],
    }


def version_2(data: dict[str, Any]) -> dict[str, Any]:
    """The same report as compresskit wrote it with schema 2."""
    old = json.loads(json.dumps(data)) | {"schema_version": 2}
    for target in old["targets"]:
        target["name"] = target.pop("target")
    for item in [old["baseline"], *old["candidates"]]:
        verdict = item.pop("verdict") or {}
        item["verdict"] = verdict.get("lines", [])
        item["summary"] = verdict.get("summary", "")
    return old


def test_schema_round_trip_then_rendered(tmp_path: Path) -> None:
    report = Report.model_validate(report_dict())
    written = write_reports(report, tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", "report.html"}
    again = Report.load(tmp_path / "report.json")
    assert again == report
    assert again.candidates[0].latency[1].p99_ms == pytest.approx(10.4)
    assert again.targets[0].allow_spinning is False
    assert again.candidates[0].steps[0].records["widths"]["conv1"] == [16, 8]
    assert render_markdown(again) == (tmp_path / "report.md").read_text()


def test_version_1_and_2_reports_still_load_and_newer_ones_are_refused(tmp_path: Path) -> None:
    two = version_2(report_dict())
    (tmp_path / "v2.json").write_text(json.dumps(two))
    loaded = Report.load(tmp_path / "v2.json")
    assert loaded.schema_version == SCHEMA_VERSION  # upgraded in memory
    assert loaded.targets[0].target == "cpu-ort"
    int8 = loaded.candidates[0]
    assert int8.summary == "int8 one-line verdict" and int8.verdict is not None
    assert int8.verdict.lines == ["int8 verdict line"] and int8.verdict.budget_met is None
    assert json.loads((tmp_path / "v2.json").read_text()) == two  # the file is untouched

    one = version_2(report_dict()) | {"schema_version": 1}
    del one["targets"]
    for item in [one["baseline"], *one["candidates"]]:
        for key in ("exporter_fallback_reason", "sessions", "summary"):
            del item[key]
        for latency in item["latency"]:
            for key in ("p99_ms", "throughput", "noisy", "noise_reason"):
                del latency[key]
    (tmp_path / "v1.json").write_text(json.dumps(one))
    old = Report.load(tmp_path / "v1.json")
    assert old.targets == [] and old.candidates[0].verdict.lines == ["int8 verdict line"]  # type: ignore[union-attr]
    assert "int8 verdict line" in render_markdown(old)

    new = report_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "v9.json").write_text(json.dumps(new))
    with pytest.raises(CompressKitError, match="schema_version"):
        Report.load(tmp_path / "v9.json")
    bad = report_dict()
    bad["baseline"]["params"] = "many"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CompressKitError, match="baseline.params"):
        Report.load(tmp_path / "bad.json")
    (tmp_path / "task.json").write_text(json.dumps(report_dict() | {"task": "regression"}))
    with pytest.raises(CompressKitError, match="task 'regression' is not one of"):
        Report.load(tmp_path / "task.json")


def test_markdown_shows_noise_skips_fallbacks_verdicts_and_machine() -> None:
    text = render_markdown(Report.model_validate(report_dict()))
    assert "| int8 |" in text and "1.000*" in text  # noisy p50 is marked
    assert "`cuda-ort` skipped: CUDAExecutionProvider" in text
    assert "**noisy**: load average 4.00" in text and "spinning off" in text
    assert "fallback: dynamo exporter failed: X" in text
    assert "- **int8**: int8 one-line verdict" in text
    assert "session load 12.5 ms, peak memory +3.0 MB" in text
    assert "churn vs baseline 0.0200 (good 0.0050, bad 0.0150)" in text
    assert "machine: cores 2, torch 2.13.0" in text
    assert "| 4.0 kB |" in text and "| 1.0 kB |" in text  # 1 kB is 1000 bytes


def test_records_render_in_markdown_and_html(tmp_path: Path) -> None:
    report = Report.model_validate(report_dict())
    markdown = render_markdown(report)
    assert "### `prune` (prune_channels, 1.2 s)" in markdown
    assert "- pruned 2 of 3 layers; params 1,000 -> 300 (30%); MACs 20.00k -> 6.00k" in markdown
    assert "| conv1 | 16 | 8 | 50% |" in markdown and "| head |" not in markdown
    assert "training curve (loss/val acc): 0.900/0.800 0.500/0.900; kept 2" in markdown
    assert "| 2 (kept) | 20 | 0.5000 | 0.9000 |" in markdown
    assert "losses: kd x0.5; teacher input (outputs cached)" in markdown
    assert "int8: 3 layers" in markdown
    assert "- factor: 5.0" in markdown  # a pass unknown here: its facts, one per line
    write_reports(report, tmp_path)
    html = (tmp_path / "report.html").read_text()
    for text in (
        "<caption>pruned widths</caption>",
        "<td>conv1</td><td>16</td><td>8</td><td>50%</td>",
        "training curve (loss/val acc): 0.900/0.800 0.500/0.900; kept 2",
        "<caption>training curve</caption>",
        "losses: kd x0.5",
        "factor: 5.0",
        "churn vs baseline 0.0200",
        "ORT vs torch (fp32): max abs error 1.00e-06",
        "cpu-ort: session load 12.5 ms, peak memory +3.0 MB",
        "int8 verdict line",
    ):
        assert text in html, text


def test_html_is_self_contained_with_the_plots(tmp_path: Path) -> None:
    write_reports(Report.model_validate(report_dict()), tmp_path)
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2  # the Pareto plot and the size chart
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert 'alt="accuracy vs latency"' in html and 'alt="model size"' in html
    assert "p&lt;olicy&gt;" in html and "p<olicy>" not in html  # escaped
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from elsewhere
    assert "int8 one-line verdict" in html and "cuda-ort" in html


def test_table_columns_come_from_the_task() -> None:
    header, rows = table_rows(Report.model_validate(report_dict()))
    assert header[:7] == ["model", "params", "MACs", "ONNX", "acc", "agree", "int8"]
    assert header[7:] == ["b1 ms", "speedup", "b8 ms", "speedup"]
    assert rows[1][4:7] == ["0.9400", "1.0000", "95%"]


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(2.0, 0.95), (1.0, 0.94), (3.0, 0.90), (1.0, 0.93), (0.5, 0.80)]
    assert pareto_front(points) == [4, 1, 0]


XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 {}\n\n"


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ("avx avx2 fma", "AVX2, no VNNI"),
        ("avx2 avx_vnni", "AVX2, VNNI"),
        ("avx2 avx512f avx512bw", "AVX-512, no VNNI"),
        ("avx2 avx512f avx512_vnni", "AVX-512, VNNI"),
        ("", ""),
    ],
)
def test_the_machine_line_names_the_cpu_and_the_extensions_kernels_use(flags, isa) -> None:
    """Two "x86_64" machines with and without AVX-512 or VNNI give different speedups;
    the report says which one measured (from /proc/cpuinfo; the first processor's)."""
    from compresskit.bench.measurement import cpu_description

    text = XEON.format(flags) + XEON.format("avx512f avx512_vnni")  # a second processor
    expected = "Intel(R) Xeon(R) Processor" + (f"; {isa}" if isa else "")
    assert cpu_description(text) == expected
    assert cpu_description("") is None


def test_machine_info_has_the_cpu_where_linux_says_it() -> None:
    from compresskit.bench.measurement import machine_info

    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this platform")
    info = machine_info()
    report = Report.model_validate(report_dict() | {"machine": info})
    assert f"cpu {info['cpu']}, platform" in render_markdown(report)
