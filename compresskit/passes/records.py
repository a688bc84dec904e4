"""The record of each built-in pass: the facts it leaves for the report, typed, and its
summary (see :mod:`compresskit.records`). A pass names its class in ``record_cls``.

Field names are the keys the passes record (and report.json keeps), so reports written
before records were typed still validate against these classes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compresskit.records import Line, PassRecord, Table
from compresskit.units import human_bytes, ratio, si

Pair = tuple[int, int]  # (before, after)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Epoch(_Part):
    """One validation of a training run (after ``step`` optimizer steps)."""

    epoch: int
    step: int = 0
    loss: float
    accuracy: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict)
    parts: dict[str, float] = Field(default_factory=dict)
    lr: float = 0.0


class History(_Part):
    """A training run: loss and validation metrics per epoch, the epoch kept, why it stopped."""

    epochs: list[Epoch] = Field(default_factory=list)
    best_epoch: int | None = None
    stopped: str = "completed"

    def _monitor(self) -> tuple[str, str]:
        # Embedding tasks validate by cosine to the teacher, language models by perplexity;
        # neither has an accuracy.
        metrics = self.epochs[0].metrics if self.epochs else {}
        if "perplexity" in metrics:
            return "perplexity", "val ppl"
        return ("cosine", "val cos") if "cosine" in metrics else ("accuracy", "val acc")

    def _value(self, epoch: Epoch, key: str) -> float:
        return epoch.metrics.get(key, epoch.accuracy if key == "accuracy" else 0.0)

    def curve(self, what: str = "training curve") -> str:
        """One line: loss/metric per validation (the first 12), the epoch kept."""
        key, label = self._monitor()
        points = " ".join(f"{e.loss:.3f}/{self._value(e, key):.3f}" for e in self.epochs[:12])
        return (
            f"{what} (loss/{label}): {points}"
            + (" ..." if len(self.epochs) > 12 else "")
            + (f"; kept {self.best_epoch}" if self.best_epoch is not None else "")
            + (f"; {self.stopped}" if self.stopped != "completed" else "")
        )

    def table(self, title: str = "training curve") -> Table:
        metrics = sorted({k for e in self.epochs for k in e.metrics}) or ["accuracy"]
        parts = sorted({k for e in self.epochs for k in e.parts})
        rows = [
            [
                str(e.epoch) + (" (kept)" if e.epoch == self.best_epoch else ""),
                str(e.step),
                f"{e.loss:.4f}",
                *(f"{self._value(e, k):.4f}" for k in metrics),
                *(f"{e.parts.get(k, 0.0):.4f}" for k in parts),
                f"{e.lr:.2g}",
            ]
            for e in self.epochs
        ]
        header = ["epoch", "step", "loss", *(f"val {k}" for k in metrics), *parts, "lr"]
        return Table(title=title, header=header, rows=rows)

    def blocks(self, what: str = "training curve") -> list[Line | Table]:
        if not self.epochs:
            return []
        return [Line(text=self.curve(what)), self.table(what)]


class PruneStep(_Part):
    """One step of a pruning schedule: the ratio, the size or latency reached on the way
    to its goal (the ratios tried), and the fine-tuning after it."""

    step: int | None = None
    ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    goal: float | None = None
    tried: list[list[float]] | None = None
    note: str | None = None
    finetune: History | None = None

    def text(self) -> str:
        parts = [f"step {self.step}" if self.step is not None else "start"]
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:g}")
        for name in ("macs", "params", "latency"):
            value = getattr(self, name)
            if value is not None:
                shown = f"{value:.3f} ms" if name == "latency" else si(value)
                parts.append(f"{name} {shown}")
        if self.goal is not None:
            parts.append(
                f"goal {self.goal:.3f}" if self.latency is not None else f"goal {si(self.goal)}"
            )
        if self.tried:
            parts.append(f"{len(self.tried)} tried")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)


def _size_line(params: Pair | None, macs: Pair | None) -> str:
    parts = []
    if params:
        parts.append(f"params {params[0]:,} -> {params[1]:,} ({ratio(*params)})")
    if macs:
        parts.append(f"MACs {si(macs[0])} -> {si(macs[1])} ({ratio(*macs)})")
    return "; ".join(parts)


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class PruneRecord(PassRecord):
    """Structured pruning: widths per layer (before, after), size, the schedule's steps."""

    widths: dict[str, Pair] = Field(default_factory=dict)
    params: Pair | None = None
    macs: Pair | None = None
    steps: list[PruneStep] = Field(default_factory=list)

    def summary(self) -> list[Line | Table]:
        changed = {k: v for k, v in self.widths.items() if v[0] != v[1]}
        blocks: list[Line | Table] = [
            Line(
                text=f"pruned {len(changed)} of {len(self.widths)} layers"
                + (f"; {_size_line(self.params, self.macs)}" if self.params or self.macs else "")
            )
        ]
        if changed:
            rows = [[name, str(a), str(b), ratio(a, b)] for name, (a, b) in changed.items()]
            blocks.append(
                Table(title="pruned widths", header=["layer", "before", "after", "kept"], rows=rows)
            )
        if len(self.steps) > 1 or any(s.goal is not None or s.note for s in self.steps):
            blocks += [Line(text=step.text()) for step in self.steps]
        for step in self.steps:
            if step.finetune is not None:
                blocks += step.finetune.blocks(f"fine-tuning after step {step.step}")
        return blocks + super().summary()


class RoundToCandidate(_Part):
    """One rounding of the pruned widths, measured (or why it was not)."""

    round_to: int
    up: bool = Field(default=False, description="widths rounded up (more channels), not down")
    macs: int | None = None
    p50_ms: float | None = None
    eligible: bool = False
    widths: list[int] = Field(default_factory=list)
    note: str | None = None


class WidthSweep(_Part):
    """round_to auto: each candidate rounding's MACs and p50 on the target, the choice."""

    target: str
    batch: int
    max_mac_change: float
    candidates: list[RoundToCandidate] = Field(default_factory=list)
    chosen: int
    chosen_up: bool = False

    def blocks(self) -> list[Line | Table]:
        chosen = f"{self.chosen}" + (" up" if self.chosen_up else "")
        rows = [
            [
                f"{c.round_to}"
                + (" up" if c.up else "")
                + (" (chosen)" if (c.round_to, c.up) == (self.chosen, self.chosen_up) else ""),
                si(c.macs) if c.macs is not None else "-",
                f"{c.p50_ms:.3f}" if c.p50_ms is not None else "-",
                "yes" if c.eligible else (c.note or "no: too many MACs lost"),
            ]
            for c in self.candidates
        ]
        title = f"round_to sweep on {self.target} b{self.batch}"
        header = ["round_to", "MACs", "p50 ms", f"within {self.max_mac_change:.0%} MACs"]
        return [
            Line(text=f"round_to {chosen}: the fastest rounding measured on {self.target}"),
            Table(title=title, header=header, rows=rows),
        ]


class PruneChannelsRecord(PruneRecord):
    """Channel pruning; with ``heads``, attention heads per module (before, after); with
    ``round_to: auto``, the rounding sweep."""

    heads: dict[str, Pair] = Field(default_factory=dict)
    round_to_sweep: WidthSweep | None = None

    def summary(self) -> list[Line | Table]:
        blocks = super().summary()
        if self.round_to_sweep is not None:
            blocks += self.round_to_sweep.blocks()
        if self.heads:
            rows = [[name, str(a), str(b)] for name, (a, b) in self.heads.items()]
            blocks.append(
                Table(title="attention heads", header=["module", "before", "after"], rows=rows)
            )
        return blocks


class PruneBlocksRecord(PassRecord):
    """Whole blocks removed, ranked by measured sensitivity."""

    sensitivity: dict[str, float] = Field(default_factory=dict)
    removed: list[str] = Field(default_factory=list)
    depth: Pair | None = None
    params: Pair | None = None
    macs: Pair | None = None
    steps: list[PruneStep] = Field(default_factory=list)
    finetune: History | None = None

    def summary(self) -> list[Line | Table]:
        depth = f" of {self.depth[0]}" if self.depth else ""
        blocks: list[Line | Table] = [
            Line(
                text=f"removed {len(self.removed)}{depth} blocks: {_names(self.removed)}"
                + (f"; {_size_line(self.params, self.macs)}" if self.params or self.macs else "")
            )
        ]
        if self.sensitivity:
            rows = [
                [name, f"{score:.4g}", "removed" if name in self.removed else ""]
                for name, score in sorted(self.sensitivity.items(), key=lambda t: t[1])
            ]
            blocks.append(
                Table(title="block sensitivity", header=["block", "sensitivity", ""], rows=rows)
            )
        blocks += [Line(text=step.text()) for step in self.steps]
        if self.finetune is not None:
            blocks += self.finetune.blocks("fine-tuning")
        return blocks + super().summary()


FloatCause = Literal["excluded", "sensitivity", "speed"]


class UnitLatency(_Part):
    """One unit (a layer or a block) measured in each precision (kernel ms per call)."""

    unit: str
    layers: list[str]
    costs_ms: dict[str, float]
    chosen: str


class LatencyPlanRecord(_Part):
    """Precision by measured latency: what each unit costs in each precision on the
    target, what was chosen, and the mixed model timed against all-int8."""

    target: str
    batch: int
    granularity: str
    min_gain: float
    units: list[UnitLatency] = Field(default_factory=list)
    float_p50_ms: float | None = None
    int8_p50_ms: float | None = None
    mixed_p50_ms: float | None = None
    accepted: bool = True
    note: str | None = None

    def blocks(self) -> list[Line | Table]:
        precisions = sorted({k for u in self.units for k in u.costs_ms}, reverse=True)
        rows = [
            [u.unit, *(f"{u.costs_ms[k]:.3f}" if k in u.costs_ms else "-" for k in precisions)]
            + [u.chosen]
            for u in self.units
        ]
        title = f"precision by latency on {self.target} b{self.batch} (per {self.granularity})"
        header = [self.granularity, *(f"{k} ms" for k in precisions), "runs in"]
        kept = [u for u in self.units if u.chosen == "float"]
        text = f"precision by latency: {len(kept)} of {len(self.units)} units float for speed"
        if self.mixed_p50_ms is not None and self.int8_p50_ms is not None:
            text += f"; p50 mixed {self.mixed_p50_ms:.3f} ms vs all-int8 {self.int8_p50_ms:.3f} ms"
        if self.note:
            text += f"; {self.note}"
        return [Line(text=text), Table(title=title, header=header, rows=rows)]


class StaticQuantRecord(PassRecord):
    """Static int8: layers quantized or kept float, calibration, mixed-precision plan."""

    quantized_layers: int = 0
    float_layers: list[str] = Field(default_factory=list)
    calibration: str | None = None
    calibration_samples: int | None = None
    calibration_errors: dict[str, float] = Field(
        default_factory=dict,
        description="calibration auto: each method's relative output error against float",
    )
    unused_layers: list[str] = Field(default_factory=list)
    sensitivity: dict[str, float] = Field(default_factory=dict)
    float_layer_reasons: dict[str, str] = Field(default_factory=dict)
    calibration_accuracy_drop: float | None = None
    calibration_cosine_drop: float | None = None
    float_mac_fraction: float | None = None
    integer_residuals: list[str] = Field(
        default_factory=list, description="residual adds / concatenations on int8 inputs"
    )
    float_residuals: dict[str, str] = Field(
        default_factory=dict, description="residual adds / concatenations left float, and why"
    )
    float_causes: dict[str, FloatCause] = Field(
        default_factory=dict,
        description="why each float layer is float: excluded by the policy, sensitive to "
        "quantization, or not faster in int8 on the target",
    )
    latency_plan: LatencyPlanRecord | None = None

    def summary(self) -> list[Line | Table]:
        text = f"int8: {self.quantized_layers} layers"
        if self.calibration:
            text += f", {self.calibration} calibration"
            if self.calibration_samples is not None:
                text += f" on {self.calibration_samples:,} samples"
            if self.calibration_errors:
                tried = ", ".join(f"{k} {v:.2e}" for k, v in self.calibration_errors.items())
                text += f" (chosen by output error: {tried})"
        if self.float_layers:
            shown = [
                f"{name} ({self.float_causes[name]})" if name in self.float_causes else name
                for name in self.float_layers
            ]
            text += f"; kept in float: {_names(shown)}"
        blocks: list[Line | Table] = [Line(text=text)]
        if self.latency_plan is not None:
            blocks += self.latency_plan.blocks()
        if self.float_layer_reasons:
            rows = [[name, why] for name, why in self.float_layer_reasons.items()]
            blocks.append(Table(title="kept in float", header=["layer", "why"], rows=rows))
        drops = {
            "accuracy": (self.calibration_accuracy_drop, ".2%"),
            "cosine": (self.calibration_cosine_drop, ".4f"),
        }
        for metric, (drop, form) in drops.items():
            if drop is not None:
                blocks.append(
                    Line(
                        text=f"mixed precision: calibration {metric} drop {drop:{form}}, "
                        f"{self.float_mac_fraction or 0.0:.0%} of MACs in float"
                    )
                )
        if self.unused_layers:
            blocks.append(
                Line(text=f"never called by forward (left float): {_names(self.unused_layers)}")
            )
        if self.integer_residuals:
            blocks.append(
                Line(
                    text=f"int8 residuals: {len(self.integer_residuals)} adds / concatenations "
                    f"take int8 inputs ({_names(self.integer_residuals)})"
                )
            )
        if self.float_residuals:
            rows = [[op, why] for op, why in self.float_residuals.items()]
            blocks.append(Table(title="residual ops left float", header=["op", "why"], rows=rows))
        return blocks + super().summary()


class QATRecord(StaticQuantRecord):
    """Quantization-aware training: the PTQ starting point and the training run."""

    history: History | None = None
    ptq_val: dict[str, float] | None = None  # the monitored val metric after PTQ
    freeze_step: int | None = None
    train_steps: int | None = None
    distilled: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_reports(cls, data: Any) -> Any:
        """Reports before ``ptq_val`` kept ``ptq_val_accuracy``."""
        if isinstance(data, dict) and "ptq_val_accuracy" in data:
            data = dict(data)
            accuracy = data.pop("ptq_val_accuracy")
            data.setdefault("ptq_val", None if accuracy is None else {"accuracy": accuracy})
        return data

    def summary(self) -> list[Line | Table]:
        # A model that was already fake-quantized records notes only, no PTQ facts.
        blocks = super().summary() if self.quantized_layers else PassRecord.summary(self)
        facts = []
        for metric, value in (self.ptq_val or {}).items():
            facts.append(f"val {metric} after PTQ {value:.4f}")
        if self.freeze_step is not None and self.train_steps is not None:
            facts.append(f"quantizers frozen at step {self.freeze_step} of {self.train_steps}")
        if self.distilled:
            facts.append("distilled from the teacher")
        if facts:
            blocks.append(Line(text="QAT: " + "; ".join(facts)))
        if self.history is not None:
            blocks += self.history.blocks()
        return blocks


class QuantizeDynamicRecord(PassRecord):
    """Dynamic int8 (ORT DynamicQuantizeMatMul): Linear layers converted or kept float."""

    quantized_layers: int = 0
    float_layers: list[str] = Field(default_factory=list)
    scheme: str | None = None
    unused_layers: list[str] = Field(default_factory=list)

    def summary(self) -> list[Line | Table]:
        text = (
            f"dynamic int8 ({self.scheme or 'ort-dynamic'}): {self.quantized_layers} Linear layers"
        )
        if self.float_layers:
            text += f"; kept in float: {_names(self.float_layers)}"
        blocks: list[Line | Table] = [Line(text=text)]
        if self.unused_layers:
            blocks.append(
                Line(text=f"never called by forward (left float): {_names(self.unused_layers)}")
            )
        return blocks + super().summary()


class QuantizeEmbeddingsRecord(PassRecord):
    """int8 embedding tables (a scale per row)."""

    int8_embeddings: list[str] = Field(default_factory=list)
    float_embeddings: list[str] = Field(default_factory=list)
    embedding_bytes_before: int | None = None
    embedding_bytes_after: int | None = None

    def summary(self) -> list[Line | Table]:
        text = f"int8 embedding tables: {_names(self.int8_embeddings)}"
        before, after = self.embedding_bytes_before, self.embedding_bytes_after
        if before is not None and after is not None:
            text += f"; {human_bytes(before)} -> {human_bytes(after)} ({ratio(before, after)})"
        if self.float_embeddings:
            text += f"; kept in float: {_names(self.float_embeddings)}"
        return [Line(text=text), *super().summary()]


class WeightOnlyRecord(PassRecord):
    """bitsandbytes weight-only layers (torch serving; not exportable to ONNX)."""

    dtype: str | None = None
    replaced_layers: int = 0
    float_layers: list[str] = Field(default_factory=list)
    # 4-bit layers bitsandbytes' packed CPU kernel cannot take: name -> why (generic path)
    generic_kernel_layers: dict[str, str] = Field(default_factory=dict)
    linear_weight_bytes: Pair | None = None
    model_state_bytes: Pair | None = None
    memory_saved_bytes: int | None = None
    onnx: str | None = None

    def summary(self) -> list[Line | Table]:
        text = f"bitsandbytes {self.dtype}: {self.replaced_layers} Linear layers"
        if self.linear_weight_bytes:
            a, b = self.linear_weight_bytes
            text += f"; their weights {human_bytes(a)} -> {human_bytes(b)} ({ratio(a, b)})"
        if self.memory_saved_bytes is not None:
            text += f"; model state {human_bytes(self.memory_saved_bytes)} smaller"
        blocks: list[Line | Table] = [Line(text=text)]
        if self.float_layers:
            blocks.append(Line(text=f"kept in float: {_names(self.float_layers)}"))
        if self.generic_kernel_layers:
            names = _names(list(self.generic_kernel_layers))
            blocks.append(Line(text=f"on bitsandbytes' generic 4-bit kernel: {names}"))
        if self.onnx:
            blocks.append(Line(text=self.onnx))
        return blocks + super().summary()


class DistillTerm(_Part):
    """One loss term of a distillation objective."""

    loss: str
    weight: float
    pairs: list[tuple[str, str]] | None = None
    final_t: float | None = None
    final_temperature: float | None = None

    def text(self) -> str:
        text = f"{self.loss} x{self.weight:g}"
        if self.pairs:
            text += f" ({len(self.pairs)} layer pairs)"
        if self.final_t is not None:
            text += f" (final t {self.final_t:g})"
        if self.final_temperature is not None:
            text += f" (final temperature {self.final_temperature:g})"
        return text


class DistillSetup(_Part):
    """The objective a distillation ran: terms, projectors, the teacher and its cache."""

    terms: list[DistillTerm] = Field(default_factory=list)
    projectors: dict[str, Pair] = Field(default_factory=dict)
    teacher_cached: bool = False
    teacher: str = "input"
    stop_at: float | None = None
    # Causal LMs: next-token logits are computed this many tokens at a time.
    chunk_tokens: int | None = None


class DistillRecord(PassRecord):
    """Distillation: the objective and the training run."""

    history: History | None = None
    distill: DistillSetup | None = None

    def summary(self) -> list[Line | Table]:
        blocks: list[Line | Table] = []
        setup = self.distill
        if setup is not None:
            text = "losses: " + ", ".join(t.text() for t in setup.terms)
            text += f"; teacher {setup.teacher}" + (
                " (outputs cached)" if setup.teacher_cached else ""
            )
            if setup.projectors:
                text += f"; {len(setup.projectors)} projectors"
            if setup.stop_at is not None:
                text += f"; stops at val {setup.stop_at:.4f}"
            blocks.append(Line(text=text))
            pairs = [(t.loss, s, d) for t in setup.terms for s, d in t.pairs or []]
            if pairs:
                blocks.append(
                    Table(
                        title="layer pairs",
                        header=["loss", "student", "teacher"],
                        rows=[list(p) for p in pairs],
                    )
                )
        if self.history is not None:
            blocks += self.history.blocks()
        return blocks + super().summary()


class DecoderDepthRecord(PassRecord):
    """Decoder layers removed, ranked by what the calibration windows notice."""

    importance: dict[str, float] = Field(default_factory=dict)
    criterion: str | None = None
    removed: list[int] = Field(default_factory=list)
    depth: Pair | None = None
    params: Pair | None = None

    def summary(self) -> list[Line | Table]:
        depth = f" of {self.depth[0]}" if self.depth else ""
        blocks: list[Line | Table] = [
            Line(
                text=f"removed {len(self.removed)}{depth} decoder layers "
                f"({', '.join(map(str, self.removed))}) by {self.criterion}"
                + (f"; {_size_line(self.params, None)}" if self.params else "")
            )
        ]
        if self.importance:
            rows = [
                [layer, f"{score:.4g}", "removed" if int(layer) in self.removed else ""]
                for layer, score in self.importance.items()
            ]
            blocks.append(
                Table(title="layer importance", header=["layer", "importance", ""], rows=rows)
            )
        return blocks + super().summary()


class DecoderWidthRecord(PassRecord):
    """Heads, MLP neurons and hidden channels kept in every decoder layer."""

    widths: dict[str, Pair] = Field(default_factory=dict)
    importance: str | None = None
    params: Pair | None = None

    def summary(self) -> list[Line | Table]:
        changed = ", ".join(
            f"{name} {before} -> {after}"
            for name, (before, after) in self.widths.items()
            if before != after
        )
        line = f"decoder widths ({self.importance}): {changed or 'unchanged'}"
        if self.params:
            line += f"; {_size_line(self.params, None)}"
        return [Line(text=line), *super().summary()]
