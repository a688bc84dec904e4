"""Options: compress, --out, export, bench and report."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from corpus_kit import ARCH, Case, Kit, fifo, link, mkdir, read_only

# -- options -------------------------------------------------------------------------------


def option_cases() -> Iterator[Case]:
    def compress_with(option: str, value: str, *expect: str) -> Case:
        case_id = f"opt-compress{option}-{value[:20]}".replace("/", "_")
        return Case(case_id, lambda kit: kit.with_option(kit.compress(), option, value), expect)

    for value in ("0", "-1", "x", "1.5", "100000"):
        yield compress_with("--nproc", value, "--nproc")
    for value in ("-1", str(2**64), "x", "1e3", str(2**63)):
        yield compress_with("--seed", value, "--seed")
    for value in ("0", "-1", "x", "1e9", "nan", "inf"):
        yield compress_with("--latency-seconds", value, "--latency-seconds")
    yield compress_with("--exporter", "magic", "--exporter")
    yield compress_with("--backend", "mpi", "--backend")
    yield compress_with("--policy", "no-such-policy", "no-such-policy")
    yield compress_with("--policy", "", "policy")
    yield compress_with("--unknown-option", "1", "--unknown-option")
    yield from _out_cases()
    yield from _export_cases()
    yield from _bench_cases()
    yield Case("report-missing", lambda kit: ["report", str(kit.dir / "nope")], ("nope",))
    yield Case(
        "report-no-json",
        lambda kit: ["report", str(mkdir(kit.dir / "run"))],
        ("report.json",),
    )
    yield Case(
        "report-junk-json",
        lambda kit: ["report", str(kit.file("run/report.json", "{junk").parent)],
        ("report.json",),
    )
    yield Case(
        "report-wrong-json",
        lambda kit: ["report", str(kit.file("run/report.json", '{"a": 1}').parent)],
        ("report.json",),
    )


def _out_cases() -> Iterator[Case]:
    def out_case(case_id: str, out: Callable[[Kit], Path], *expect: str) -> Case:
        return Case(
            f"out-{case_id}",
            lambda kit: kit.with_option(kit.compress(), "--out", str(out(kit))),
            ("--out", *expect),
        )

    yield out_case("a-file", lambda kit: kit.file("taken.txt", "x"), "not a directory")
    yield out_case("symlink-to-file", lambda kit: link(kit, "taken.txt", "link"), "not a directory")
    yield out_case("dev-null", lambda kit: Path("/dev/null"), "not a directory")
    yield out_case("under-a-file", lambda kit: kit.file("f.txt", "x") / "run", "is a file")
    yield out_case("deep-under-a-file", lambda kit: kit.file("g.txt", "x") / "a" / "b", "is a file")
    yield out_case("proc", lambda kit: Path("/proc/compresskit-run"), "cannot write")
    yield out_case("sys", lambda kit: Path("/sys/compresskit-run"), "cannot write")
    yield out_case("not-empty", lambda kit: kit.file("full/keep.txt", "mine").parent, "not empty")
    yield out_case("broken-symlink", lambda kit: link(kit, "absent-target", "dangling"), "broken")
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot refuse it
        yield out_case("read-only", lambda kit: read_only(kit) / "run", "cannot write")


def _export_cases() -> Iterator[Case]:
    def export(kit: Kit, *extra: str) -> list[str]:
        args = ["export", str(kit.weights), "--arch", ARCH, "--input-shape", "1,8,8"]
        return args + ["--out", str(kit.dir / "m.onnx"), *extra]

    def export_with(case_id: str, option: str, value: Callable[[Kit], str], *expect: str) -> Case:
        return Case(
            f"export-{case_id}",
            lambda kit: kit.with_option(export(kit), option, value(kit)),
            expect,
        )

    yield export_with("out-no-suffix", "--out", lambda kit: str(kit.dir / "m.bin"), ".onnx")
    yield export_with(
        "out-directory", "--out", lambda kit: str(mkdir(kit.dir / "d.onnx")), "directory"
    )  # noqa: E501
    yield export_with(
        "out-under-file", "--out", lambda kit: str(kit.file("f", "x") / "m.onnx"), "is a file"
    )  # noqa: E501
    yield export_with(
        "out-missing-dir", "--out", lambda kit: str(kit.dir / "no" / "m.onnx"), "does not exist"
    )  # noqa: E501
    yield export_with("out-proc", "--out", lambda kit: "/proc/m.onnx", "cannot write")
    for value in ("0", "-3", "a,b", "", "3,100000,100000", "1,8,x"):
        yield export_with(
            f"shape-{value or 'empty'}", "--input-shape", lambda kit, v=value: v, "--input-shape"
        )  # noqa: E501
    for value in ("5", "99", "x"):
        yield export_with(f"opset-{value}", "--opset", lambda kit, v=value: v, "--opset")
    yield export_with("exporter", "--exporter", lambda kit: "magic", "--exporter")
    yield export_with("shape-mismatch", "--input-shape", lambda kit: "3,8,8", "--input-shape")
    yield Case(
        "export-no-inputs",
        lambda kit: ["export", str(kit.weights), "--arch", ARCH, "--out", str(kit.dir / "m.onnx")],
        ("--input-shape",),
    )
    yield Case(
        "export-out-is-the-checkpoint",
        lambda kit: [
            "export",
            str(kit.file("same.onnx", "x")),
            "--arch",
            ARCH,
            "--input-shape",
            "1,8,8",
            "--out",
            str(kit.dir / "same.onnx"),
        ],  # fmt: skip
        ("same.onnx",),
    )


def _bench_cases() -> Iterator[Case]:
    def onnx_file(kit: Kit) -> Path:
        from compresskit.testing.tiny import TinyCNN

        path = kit.dir / "tiny.onnx"
        if not path.exists():
            from compresskit.export.onnx import export_onnx

            export_onnx(TinyCNN(), (torch.zeros(2, 1, 8, 8),), path, exporter="legacy")
        return path

    def bench(kit: Kit, *extra: str) -> list[str]:
        return ["bench", str(onnx_file(kit)), "--seconds", "0.05", *extra]

    for value in ("0", "", "a", "1,,x", "-1", "99999", "1.5", ",,"):
        yield Case(
            f"bench-batch-{value or 'empty'}",
            lambda kit, v=value: bench(kit, "--batch", v),
            ("--batch",),
        )
    for value in ("0", "100000", "x"):
        yield Case(
            f"bench-threads-{value}",
            lambda kit, v=value: bench(kit, "--threads", v),
            ("--threads",),
        )
    for value in ("0", "1e9", "x"):
        yield Case(
            f"bench-seconds-{value}",
            lambda kit, v=value: bench(kit, "--seconds", v),
            ("--seconds",),
        )
    yield Case(
        "bench-json-directory",
        lambda kit: bench(kit, "--json", str(mkdir(kit.dir / "j"))),
        ("--json", "directory"),
    )
    yield Case(
        "bench-json-missing-parent",
        lambda kit: bench(kit, "--json", str(kit.dir / "nodir" / "x.json")),
        ("--json", "does not exist"),
    )
    yield Case(
        "bench-json-under-file",
        lambda kit: bench(kit, "--json", str(kit.file("jf", "x") / "x.json")),
        ("--json", "is a file"),
    )
    yield Case(
        "bench-json-is-the-model",
        lambda kit: bench(kit, "--json", str(onnx_file(kit))),
        ("--json", "inputs"),
    )
    yield Case("bench-target-unknown", lambda kit: bench(kit, "--target", "tpu"), ("tpu",))
    for name, content, expect in [
        ("syntax", b"runtime: [\n", "YAML"),
        ("binary", b"\x00\x01\x02" * 20, "binary"),
        ("python-tag", b"!!python/object/apply:os.system ['touch pwned']\n", "tag"),
        ("not-utf8", b"name: \xff\xfe\n", "UTF-8"),
        (
            "unknown-field",
            b"name: t\nruntime: onnxruntime\nprovider: CPUExecutionProvider\nx: 1\n",
            "x",
        ),  # noqa: E501
        ("huge", b"#" + b"x" * 2_000_000, "kB"),
    ]:
        yield Case(
            f"bench-target-file-{name}",
            lambda kit, c=content: bench(kit, "--target", str(kit.file("t.yaml", c))),
            (expect,),
            markers=("pwned",),
        )
    yield Case(
        "bench-target-directory",
        lambda kit: bench(kit, "--target", str(mkdir(kit.dir / "t.yaml"))),
        ("t.yaml",),
    )
    yield Case(
        "bench-shape-count",
        lambda kit: bench(kit, "--input-shape", "1,8,8", "--input-shape", "3"),
        ("--input-shape",),
    )
    for name, content in [("zero", b""), ("junk", b"junk" * 50), ("text", b"ir_version: 7\n")]:
        yield Case(
            f"bench-onnx-{name}",
            lambda kit, c=content, n=name: ["bench", str(kit.file(f"{n}.onnx", c))],
            ("ONNX",),
        )
    yield Case(
        "bench-onnx-fifo",
        lambda kit: ["bench", str(fifo(kit.dir / "f.onnx"))],
        ("not a regular file",),
    )
    yield Case("bench-missing", lambda kit: ["bench", str(kit.dir / "absent.onnx")], ("absent",))
    yield Case(
        "bench-checkpoint-no-shape",
        lambda kit: ["bench", str(kit.weights), "--arch", ARCH],
        ("--input-shape",),
    )
    yield Case(
        "bench-checkpoint-no-arch",
        lambda kit: ["bench", str(kit.weights), "--input-shape", "1,8,8"],
        ("--arch",),
    )
