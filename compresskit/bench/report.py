"""The run report (``report.json``): a versioned schema, and loading of older versions.

Rendering lives elsewhere: :mod:`compresskit.bench.markdown`, :mod:`compresskit.bench.html`
and :mod:`compresskit.cli.tables` read a :class:`Report`; :mod:`compresskit.bench.verdict`
judges it; :mod:`compresskit.bench.output` writes the files.

Schema history:

- 1 -> 2: latency percentiles, throughput and noise flags, per-target thread settings,
  session load time and memory, exporter fallback reasons and a one-line summary per
  candidate. ``task`` was added within version 2 with a default.
- 2 -> 3: one measurement schema (:mod:`compresskit.bench.measurement`): ``latency`` items
  may name a ``workload``; ``targets`` items name their target in ``target`` (was
  ``name``). ``task`` is any registered task's name. The verdict is machine-readable:
  each candidate's ``verdict`` is an object (``budget_met``, ``faster``, ``low_bit``,
  ``measured``, ``parity_ok``, reason ``codes``, and the ``summary`` and ``lines`` people
  read; it was a list of lines, with ``summary`` beside it), the run has one too, and the
  ``budget`` it was judged against is kept. Step ``records`` are the passes' typed
  records as JSON (:mod:`compresskit.records`). ``profiles`` (where each model's time
  goes, per torch module) was added within version 3 with a default.

Within version 3, with defaults: ``failed`` (candidates whose branch failed, with the
node, pass and reason), ``labels`` (class names by label id), each entry's ``notes``, and
for causal LMs each entry's ``generation`` (time to first token, decode tokens/s) and
``continuations`` (greedy continuations of fixed prompts).

Versions 1 and 2 still load: :func:`upgrade` rewrites them to version 3 in memory
(their verdict lines and summary kept, the machine-readable fields left null; the run's
``verdict`` and ``budget`` null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compresskit.bench.measurement import Latency, Profile, Session, TargetInfo, TargetRun
from compresskit.budget import Budget
from compresskit.errors import CompressKitError
from compresskit.records import Line, PassRecord, Table, generic_summary

SCHEMA_VERSION = 3


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParityEntry(_Model):
    """ONNX Runtime vs torch on the evaluation split."""

    max_abs_error: float
    mean_abs_error: float
    agreement: float
    samples: int
    tolerance: float
    min_agreement: float
    ok: bool
    precision: str = "fp32"
    nonfinite: int = Field(default=0, description="NaN/inf values in one output, not the other")
    quantization_error: float | None = Field(
        default=None,
        description="int8: mean |torch's output - the float baseline's|, the noise ORT may "
        "differ from torch by",
    )


class StepEntry(_Model):
    """One node a candidate went through: its pass, time, and the pass's record."""

    id: str
    name: str = Field(description="pass name")
    seconds: float
    records: dict[str, Any] = Field(
        default_factory=dict, description="the pass's record (its record_cls) as JSON"
    )

    def record(self) -> PassRecord | None:
        """The typed record, when the pass is registered here and the facts fit its
        record class (reports of older versions, passes of other code: None)."""
        from compresskit.passes import registered_passes

        cls = registered_passes().get(self.name)
        if cls is None:
            return None
        try:
            return cls.record_cls.model_validate(self.records)
        except ValidationError:
            return None

    def summary(self) -> list[Line | Table]:
        """What the report shows of this step: its record's own summary, or one line per
        recorded fact when the record cannot be typed."""
        record = self.record()
        return record.summary() if record is not None else generic_summary(self.records)


class Continuation(_Model):
    """A fixed prompt and a model's greedy continuation of it (causal LMs)."""

    prompt: str
    continuation: str
    runtime: str = Field(description="what generated it: onnxruntime-genai or torch")


class GenerationEntry(_Model):
    """A causal LM's generation speed in onnxruntime-genai (medians, one run interleaved)."""

    ttft_ms: dict[int, float] = Field(description="prompt length -> time to first token")
    decode_tok_s: dict[int, float] = Field(description="batch -> decode tokens per second")
    prompt_tokens: int = Field(description="prompt length of the decode runs")
    new_tokens: int
    noisy: bool = False


class Verdict(_Model):
    """A candidate judged against the baseline and the budget, for machines (the flags and
    reason codes: null where not applicable) and for people (``summary``, ``lines``).

    Reason codes: ``accuracy_over_budget``, ``agreement_below_budget``,
    ``cosine_below_budget`` (the task's judgement), ``int8_coverage_below_budget``,
    ``int8_not_used``, ``not_faster_<target>_b<batch>``, ``not_measured_<target>``,
    ``no_target_ran``, ``parity_failed``, ``export_skipped``.
    """

    budget_met: bool | None = Field(
        default=None, description="quality and int8 coverage within the budget"
    )
    faster: bool | None = Field(
        default=None, description="faster than the baseline at every measured batch"
    )
    low_bit: bool | None = Field(
        default=None, description="a quantized candidate really runs in low-bit kernels"
    )
    measured: bool | None = Field(default=None, description="timed on every target that ran")
    parity_ok: bool | None = Field(
        default=None, description="ONNX Runtime matches torch (null: not exported)"
    )
    reasons: list[str] = Field(default_factory=list, description="reason codes")
    summary: str = Field(default="", description="one line: speed, int8, quality")
    lines: list[str] = Field(default_factory=list, description="the verdict in sentences")


class RunVerdict(_Model):
    """Every candidate's verdict combined: a flag is false when it is false for one
    candidate, null when it applies to none. ``reasons`` are ``candidate: code``."""

    budget_met: bool | None = None
    faster: bool | None = None
    low_bit: bool | None = None
    measured: bool | None = None
    parity_ok: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    summary: str = ""


class Entry(_Model):
    """The baseline or one candidate."""

    name: str
    nodes: list[str] = Field(description="names of the passes applied, in order")
    params: int
    macs: int
    onnx_bytes: int
    exporter: str
    exporter_fallback_reason: str | None = Field(
        default=None, description="why the dynamo exporter was not used, when it failed"
    )
    precision: str = Field(default="fp32", description="fp32, fp16 or int8 (parity tolerance)")
    metrics: dict[str, float] = Field(
        description="the task's metrics (classification: accuracy, agreement, kl, churn "
        "vs the baseline; embedding: cosine to the baseline, cosine_p5, cosine_min, mse)"
    )
    int8_coverage: float | None = None
    latency: list[Latency] = Field(default_factory=list)
    sessions: list[Session] = Field(default_factory=list)
    profiles: list[Profile] = Field(
        default_factory=list,
        description="where the time goes: ONNX Runtime's profile per target and batch, "
        "kernel time per torch module",
    )
    parity: ParityEntry | None = Field(default=None, description="None when not exported")
    export_skipped: str | None = Field(
        default=None, description="why this candidate has no ONNX file (e.g. bitsandbytes)"
    )
    steps: list[StepEntry] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(
        default_factory=list, description="what the run could not write or do for it"
    )
    verdict: Verdict | None = Field(default=None, description="None for the baseline")
    generation: GenerationEntry | None = Field(
        default=None, description="causal LMs: time to first token and decode tokens/s"
    )
    continuations: list[Continuation] = Field(
        default_factory=list, description="causal LMs: greedy continuations of fixed prompts"
    )

    @property
    def summary(self) -> str:
        return self.verdict.summary if self.verdict else ""

    def latency_at(self, target: str, batch: int) -> Latency | None:
        return next(
            (x for x in self.latency if (x.target, x.batch, x.workload) == (target, batch, None)),
            None,
        )

    def profile_at(self, target: str, batch: int) -> Profile | None:
        return next(
            (x for x in self.profiles if (x.target, x.batch, x.workload) == (target, batch, None)),
            None,
        )


class FailedCandidate(_Model):
    """A candidate the run could not make: the node that failed, its pass and why."""

    name: str
    node: str
    pass_name: str
    error: str = Field(description="one line: what failed and how to get past it")

    @property
    def line(self) -> str:
        return f"FAILED in node {self.node!r} ({self.pass_name}): {self.error}"


class Report(_Model):
    """What ``compresskit compress`` measured; ``report.json`` in the run directory."""

    schema_version: int = SCHEMA_VERSION
    compresskit_version: str
    created: str
    policy: str
    checkpoint: str
    data: str
    task: str = Field(
        default="classification",
        description="the task the metrics score (compresskit.tasks): accuracy for "
        "classification, the cosine of each embedding to the baseline's for embedding",
    )
    seed: int
    seconds: float
    world_size: int = Field(default=1, description="processes that ran the training passes")
    backend: str | None = Field(default=None, description="torch.distributed backend, if any")
    budget: Budget | None = Field(default=None, description="what the verdicts judged against")
    skipped_targets: dict[str, str] = Field(default_factory=dict)
    targets: list[TargetInfo] = Field(default_factory=list)
    machine: dict[str, Any] = Field(default_factory=dict)
    baseline: Entry
    candidates: list[Entry]
    failed: list[FailedCandidate] = Field(
        default_factory=list, description="candidates whose branch failed (not measured)"
    )
    labels: list[str] | None = Field(
        default=None, description="class names by label id, when the data named its classes"
    )
    verdict: RunVerdict | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from compresskit.tasks import get_task

        try:
            get_task(value)
        except CompressKitError as error:
            raise ValueError(str(error)) from None
        return value

    def entries(self) -> list[Entry]:
        return [self.baseline, *self.candidates]

    def noisy(self) -> bool:
        return any(x.noisy for e in self.entries() for x in e.latency)

    @classmethod
    def load(cls, path: Path) -> Report:
        """Read a ``report.json`` of this or an older schema version."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CompressKitError(f"{path}: not a readable report.json ({error})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise CompressKitError(
                f"{path}: report schema_version {version!r} is not one this compresskit reads "
                f"(1 to {SCHEMA_VERSION}); upgrade compresskit"
            )
        try:
            return cls.model_validate(upgrade(data))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise CompressKitError(f"{path}: {field}: {first['msg']}") from None


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A report of schema 1 or 2 as version 3 data. Leaves ``data`` unchanged."""
    if data.get("schema_version", SCHEMA_VERSION) >= 3:
        return data
    data = json.loads(json.dumps(data))  # a deep copy
    data["schema_version"] = SCHEMA_VERSION
    for target in data.get("targets", []):
        if isinstance(target, dict) and "name" in target:
            target["target"] = target.pop("name")
    for entry in [data.get("baseline"), *data.get("candidates", [])]:
        if not isinstance(entry, dict):
            continue
        lines = entry.pop("verdict", None) or []
        summary = entry.pop("summary", "") or ""
        if lines or summary:
            entry["verdict"] = {"lines": lines, "summary": summary}
    return data


def add_measurements(entries: list[Entry], runs: list[TargetRun]) -> None:
    """Each entry's sessions and latencies from the target runs (matched by name)."""
    for run in runs:
        if run.skipped:
            continue
        for entry in entries:
            measured = run.model(entry.name)
            if measured is not None:
                entry.sessions.append(measured.session)
                entry.latency += measured.latency
                entry.profiles += measured.profiles
