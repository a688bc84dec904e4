"""The distillation objective handed to the training loop: weighted loss terms over the
student's and the teacher's logits and tapped layers, projectors as extra trainable
modules, and schedules (DTS temperature, TAID interpolation) advanced per step.

The teacher runs in eval mode without gradients; for data that fits (``cache``), its
logits and tapped layers are computed once over the training split, and the batches
carry sample indices to look them up.

Example::

    objective = DistillObjective(specs, student, teacher, example_inputs=x)
    train(student, data, config, objective=objective.as_objective())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from compresskit.distill import losses as L
from compresskit.distill.hooks import Capture, Taps
from compresskit.distill.mapping import check_names, classifier_name, map_layers
from compresskit.distill.projectors import ChannelProjector, build_projector, channel_dim
from compresskit.errors import CompressKitError
from compresskit.training.loop import Inputs, Objective, StepState, to_device


def projector_name(s_key: str, t_key: str) -> str:
    """The module name of the projector from student layer ``s_key`` to teacher ``t_key``."""
    return f"{s_key}->{t_key}".replace(".", "_")


def describe_terms(terms: Sequence[Term]) -> list[dict[str, Any]]:
    """What the report shows of each loss term: weight, layer pairs, schedule state."""
    described = []
    for term in terms:
        entry: dict[str, Any] = {"loss": term.name, "weight": term.spec.weight}
        if term.pairs:
            entry["pairs"] = [[s.split(":", 1)[1], t.split(":", 1)[1]] for s, t in term.pairs]
        if isinstance(term.schedule, L.TAIDSchedule):
            entry["final_t"] = round(term.schedule.t, 4)
        if isinstance(term.schedule, L.DTSSchedule):
            entry["final_temperature"] = round(term.schedule.temperature, 4)
        described.append(entry)
    return described


@dataclass
class Term:
    """One weighted loss of the policy, with the tap keys it compares."""

    name: str
    spec: Any  # one of the LossSpec classes
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (student key, teacher key)
    schedule: Any = None


def _key(capture: Capture, name: str) -> str:
    return f"{capture}:{name}"


class IndexedDataset(Dataset):
    """Yields ``(*inputs, index, label)``: the index finds cached teacher outputs."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        *inputs, label = self.dataset[index]
        return (*inputs, torch.tensor(index), label)


class DistillObjective:
    """Builds the terms, the hooks and the projectors; computes the loss per batch."""

    def __init__(
        self,
        specs: Sequence[Any],
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_inputs: Inputs,
    ) -> None:
        self.teacher = teacher
        self.terms: list[Term] = []
        self.projectors = nn.ModuleDict()
        student_spec: dict[str, tuple[str, Capture]] = {}
        teacher_spec: dict[str, tuple[str, Capture]] = {}
        counts: dict[str, int] = {}
        for spec in specs:
            counts[spec.kind] = counts.get(spec.kind, 0) + 1
            name = spec.kind if counts[spec.kind] == 1 else f"{spec.kind}{counts[spec.kind]}"
            term = Term(name, spec)
            if spec.kind != "task" and teacher is None:
                raise CompressKitError(
                    f"distill: the {spec.kind} loss needs a teacher but there is none; set "
                    "the pass's teacher to a checkpoint or keep only the task loss"
                )
            layer_pairs: list[tuple[str, str]] = []
            capture: Capture = "output"
            if isinstance(spec, L.HiddenLoss | L.AttentionLoss):
                assert teacher is not None
                kind = "attention" if isinstance(spec, L.AttentionLoss) else "hidden"
                capture = "attention" if kind == "attention" else "output"
                layer_pairs = map_layers(student, teacher, spec.layers, kind=kind)
            elif isinstance(spec, L.RKDDistanceLoss | L.RKDAngleLoss):
                assert teacher is not None
                capture = "input"
                if spec.layer is None:
                    layer_pairs = [(classifier_name(student), classifier_name(teacher))]
                else:
                    check_names(student, [spec.layer.student], "student")
                    check_names(teacher, [spec.layer.teacher], "teacher")
                    layer_pairs = [(spec.layer.student, spec.layer.teacher)]
                    capture = "output"
            for s_name, t_name in layer_pairs:
                s_key, t_key = _key(capture, s_name), _key(capture, t_name)
                student_spec[s_key] = (s_name, capture)
                teacher_spec[t_key] = (t_name, capture)
                term.pairs.append((s_key, t_key))
            if isinstance(spec, L.TAIDLoss):
                term.schedule = L.TAIDSchedule(spec)
            elif isinstance(spec, L.DTSLoss):
                term.schedule = L.DTSSchedule(spec)
            self.terms.append(term)
        self.student_taps = Taps(student, student_spec, role="student")
        self.teacher_taps = Taps(teacher, teacher_spec, role="teacher") if teacher else None
        self.cache: dict[str, torch.Tensor] | None = None
        self.channel_dims: dict[str, int] = {}
        self._taid_value: dict[str, float] = {}
        self._probe(student, example_inputs)

    # -- setup ---------------------------------------------------------------------

    def _probe(self, student: nn.Module, inputs: Inputs) -> None:
        """One forward of both models: checks the task and layer shapes, builds projectors."""
        was_training = student.training
        student.eval()
        with torch.no_grad(), self.student_taps:
            self.student_taps.clear()
            logits = student(*inputs)
            self.student_taps.check_single_calls()
            s_values = dict(self.student_taps.values)
        student.train(was_training)
        if self.teacher is None:
            return
        t_logits, t_values = self._teacher_forward(inputs)
        if t_logits.shape != logits.shape:
            raise CompressKitError(
                f"distill: the teacher outputs {tuple(t_logits.shape)} but the student "
                f"{tuple(logits.shape)}; the teacher must solve the same task (same classes)"
            )
        for term in self.terms:
            for s_key, t_key in term.pairs:
                s_shape, t_shape = tuple(s_values[s_key].shape), tuple(t_values[t_key].shape)
                pair = f"{term.name} {s_key.split(':', 1)[1]} -> {t_key.split(':', 1)[1]}"
                self.channel_dims[s_key] = channel_dim(t_shape)
                if isinstance(term.spec, L.HiddenLoss):
                    projector = build_projector(
                        s_shape, t_shape, where=pair, allowed=term.spec.projector
                    )
                    if projector is not None:
                        self.projectors[projector_name(s_key, t_key)] = projector
                elif isinstance(term.spec, L.AttentionLoss) and s_shape[2:] != t_shape[2:]:
                    raise CompressKitError(
                        f"distill: {pair}: attention maps {s_shape} and {t_shape} differ in "
                        "sequence length; map attention modules of the same inputs"
                    )

    def describe(self) -> dict[str, Any]:
        """What the report shows: terms, their layer pairs, projectors, schedule state."""
        terms = describe_terms(self.terms)
        projectors = {
            name: [p.in_features, p.out_features]
            for name, p in self.projectors.items()
            if isinstance(p, ChannelProjector)
        }
        return {"terms": terms, "projectors": projectors, "teacher_cached": self.cache is not None}

    # -- teacher outputs -----------------------------------------------------------

    @torch.no_grad()
    def _teacher_forward(self, inputs: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.teacher is not None and self.teacher_taps is not None
        with self.teacher_taps:
            self.teacher_taps.clear()
            logits = self.teacher(*inputs)
            self.teacher_taps.check_single_calls()
            return logits, dict(self.teacher_taps.values)

    def cache_bytes(self, example_inputs: Inputs, samples: int) -> int:
        """Bytes the teacher's outputs over ``samples`` samples would take."""
        if self.teacher is None:
            return 0
        logits, values = self._teacher_forward(example_inputs)
        per_batch = sum(t.numel() * t.element_size() for t in [logits, *values.values()])
        return per_batch * samples // max(len(example_inputs[0]), 1)

    def build_cache(self, dataset: Dataset, device: torch.device, batch_size: int = 256) -> None:
        """Teacher logits and tapped layers for every sample of ``dataset``, in order.

        Only for tensors with a fixed shape per sample (padded text varies: not cached)."""
        chunks: dict[str, list[torch.Tensor]] = {}
        for batch in DataLoader(dataset, batch_size=batch_size):
            *inputs, _ = to_device(batch, device)
            logits, values = self._teacher_forward(tuple(inputs))
            for key, value in {"logits": logits, **values}.items():
                chunks.setdefault(key, []).append(value.cpu())
        self.cache = {key: torch.cat(parts) for key, parts in chunks.items()}

    def _teacher_outputs(
        self, inputs: Inputs, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cache is None or index is None:
            return self._teacher_forward(inputs)
        device = inputs[0].device
        rows = index.cpu()
        got = {key: value[rows].to(device, non_blocking=True) for key, value in self.cache.items()}
        return got.pop("logits"), got

    # -- the loss --------------------------------------------------------------------

    def loss(self, model: nn.Module, inputs: Inputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        index = None
        if self.cache is not None:
            *rest, index = inputs
            inputs = tuple(rest)
        with self.student_taps:
            self.student_taps.clear()
            logits = model(*inputs)
            s_values = dict(self.student_taps.values)
        t_logits, t_values = (
            (None, {}) if self.teacher is None else self._teacher_outputs(inputs, index)
        )
        terms: dict[str, torch.Tensor] = {}
        for term in self.terms:
            value = self._term(term, logits, y, t_logits, s_values, t_values)
            terms[term.name] = term.spec.weight * value
        return terms

    def _term(
        self,
        term: Term,
        logits: torch.Tensor,
        y: torch.Tensor,
        t_logits: torch.Tensor | None,
        s_values: dict[str, torch.Tensor],
        t_values: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        spec = term.spec
        if isinstance(spec, L.TaskLoss):
            return F.cross_entropy(logits, y)
        assert t_logits is not None
        if isinstance(spec, L.KDLoss):
            return L.kd_loss(logits, t_logits, spec.temperature)
        if isinstance(spec, L.OutputLoss):
            return L.output_loss(logits, t_logits, spec.metric)
        if isinstance(spec, L.NKDLoss):
            target = y if spec.target == "label" else t_logits.argmax(-1)
            return L.nkd_loss(
                logits, t_logits, target, temperature=spec.temperature, gamma=spec.gamma
            )
        if isinstance(spec, L.DTSLoss):
            target = y if spec.target == "label" else t_logits.argmax(-1)
            with torch.no_grad():
                gap = float(F.cross_entropy(logits, target) - F.cross_entropy(t_logits, target))
            return L.kd_loss(logits, t_logits, term.schedule.update(gap))
        if isinstance(spec, L.TAIDLoss):
            value = L.taid_loss(logits, t_logits, term.schedule.t)
            self._taid_value[term.name] = float(value.detach())
            return value
        values = []
        for s_key, t_key in term.pairs:
            s, t = s_values[s_key], t_values[t_key]
            if isinstance(spec, L.HiddenLoss):
                name = projector_name(s_key, t_key)
                if name in self.projectors:
                    s = self.projectors[name](s)
                values.append(
                    L.hidden_loss(s, t, metric=spec.metric, channel_dim=self.channel_dims[s_key])
                )
            elif isinstance(spec, L.AttentionLoss):
                values.append(L.attention_kl(s, t))
            elif isinstance(spec, L.RKDDistanceLoss):
                values.append(L.rkd_distance(s, t))
            elif isinstance(spec, L.RKDAngleLoss):
                values.append(L.rkd_angle(s, t))
            else:  # pragma: no cover - the union is closed
                raise AssertionError(spec)
        return torch.stack(values).mean()

    def on_step(self, state: StepState) -> None:
        for term in self.terms:
            if isinstance(term.schedule, L.DTSSchedule):
                term.schedule.progress = state.step / max(state.total_steps, 1)
            elif isinstance(term.schedule, L.TAIDSchedule):
                loss = self._taid_value.get(term.name, state.loss)
                term.schedule.update(loss, state.step, state.total_steps)

    def as_objective(self) -> Objective:
        modules = [self.projectors] if len(self.projectors) else []
        return Objective(loss=self.loss, modules=modules, on_step=self.on_step)
