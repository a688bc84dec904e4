"""Report schema round trip, older versions, markdown and the self-contained HTML."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from compresskit.bench.plots import pareto_front
from compresskit.bench.report import SCHEMA_VERSION, Report, render_markdown, write_reports
from compresskit.errors import CompressKitError


def entry(name: str, accuracy: float, p50: float, *, noisy: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [] if name == "baseline" else ["quantize"],
        "params": 1000,
        "macs": 20000,
        "onnx_bytes": 4096 if name == "baseline" else 1024,
        "exporter": "dynamo" if name == "baseline" else "legacy",
        "exporter_fallback_reason": None if name == "baseline" else "dynamo exporter failed: X",
        "metrics": {"accuracy": accuracy, "agreement": 1.0},
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
        "summary": "" if name == "baseline" else f"{name} one-line verdict",
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
                "name": "cpu-ort",
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
        "baseline": entry("baseline", 0.95, 2.0),
        "candidates": [entry("int8", 0.94, 1.0, noisy=True), entry("slow", 0.90, 3.0)],
    }


def test_schema_round_trip(tmp_path: Path) -> None:
    report = Report.model_validate(report_dict())
    path = tmp_path / "report.json"
    path.write_text(report.model_dump_json())
    again = Report.load(path)
    assert again == report
    assert again.candidates[0].latency[1].p99_ms == pytest.approx(10.4)
    assert again.targets[0].allow_spinning is False


def test_version_1_reports_still_load_and_newer_ones_are_refused(tmp_path: Path) -> None:
    old = report_dict()
    old["schema_version"] = 1
    del old["targets"]
    for item in [old["baseline"], *old["candidates"]]:
        for key in ("exporter_fallback_reason", "sessions", "summary"):
            del item[key]
        for latency in item["latency"]:
            for key in ("p99_ms", "throughput", "noisy", "noise_reason"):
                del latency[key]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    loaded = Report.load(tmp_path / "v1.json")
    assert loaded.schema_version == 1 and loaded.targets == []
    new = report_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "v9.json").write_text(json.dumps(new))
    with pytest.raises(CompressKitError, match="schema_version"):
        Report.load(tmp_path / "v9.json")
    bad = report_dict()
    bad["baseline"]["params"] = "many"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CompressKitError, match="baseline.params"):
        Report.load(tmp_path / "bad.json")


def test_markdown_shows_noise_skips_fallbacks_and_verdicts() -> None:
    text = render_markdown(Report.model_validate(report_dict()))
    assert "| int8 |" in text and "1.000*" in text  # noisy p50 is marked
    assert "`cuda-ort` skipped: CUDAExecutionProvider" in text
    assert "**noisy**: load average 4.00" in text and "spinning off" in text
    assert "fallback: dynamo exporter failed: X" in text
    assert "- **int8**: int8 one-line verdict" in text
    assert "session load 12.5 ms, peak memory +3.0 MB" in text


def test_html_is_self_contained_with_the_plots(tmp_path: Path) -> None:
    written = write_reports(Report.model_validate(report_dict()), tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", "report.html"}
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2  # the Pareto plot and the size chart
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert 'alt="accuracy vs latency"' in html and 'alt="model size"' in html
    assert "p&lt;olicy&gt;" in html and "p<olicy>" not in html  # escaped
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing loaded from elsewhere
    assert "int8 one-line verdict" in html and "cuda-ort" in html


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(2.0, 0.95), (1.0, 0.94), (3.0, 0.90), (1.0, 0.93), (0.5, 0.80)]
    assert pareto_front(points) == [4, 1, 0]
