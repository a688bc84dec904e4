"""The distillation objective of causal language models, for the shared training loop.

Logits are never materialised for a whole batch: the model runs to its final hidden
state (the head is asked for one position only, ``logits_to_keep=1``), and the head is
applied to chunks of positions inside :func:`torch.utils.checkpoint.checkpoint`, so at
most one chunk's logits (``chunk_tokens x vocab``) exist at a time, in the forward pass
and again in the backward pass. Every position predicting a next token is scored.

Loss kinds (see :mod:`compresskit.distill.lm_losses`): ``task`` (next-token cross-entropy
on the window), ``kd`` (forward KL with Hinton's temperature), ``forward_kl``,
``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``, ``taid`` (token level, with the
adaptive schedule), ``on_policy`` (GKD) and ``hidden`` (mapped decoder layers, projected
when widths differ).

On-policy batches sample continuations from the student, right-pad them to the window
length and run them in the same forward as the windows (a causal model never looks
right, so padding needs no mask): the model is called once per step, as DDP requires.

Example::

    objective = LMDistillObjective(specs, student, teacher, example_inputs=(ids,))
    train(student, data, config, objective=objective.as_objective())
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from compresskit.distill import lm_losses as LM
from compresskit.distill import losses as L
from compresskit.distill.hooks import Taps
from compresskit.distill.mapping import map_layers
from compresskit.distill.objective import Term, describe_terms, projector_name
from compresskit.distill.projectors import build_projector
from compresskit.errors import CompressKitError
from compresskit.models.causal_lm import check_same_vocabulary
from compresskit.tasks.base import first_tensor
from compresskit.training.loop import Inputs, Objective, StepState

DEFAULT_CHUNK_TOKENS = 512
LM_KINDS = frozenset({"task", "kd", "taid", "hidden"}) | LM.LM_LOSS_KINDS
# Per token: (student logits, teacher logits or None, next-token targets) -> one value
TokenFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, inside a DistributedDataParallel wrapper if there is one."""
    inner = getattr(model, "module", None)
    return inner if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def token_sums(
    fn: TokenFn,
    s_hidden: torch.Tensor,
    t_hidden: torch.Tensor | None,
    targets: torch.Tensor,
    s_head: nn.Module,
    t_head: nn.Module | None,
    *,
    chunk: int,
) -> torch.Tensor:
    """``fn`` of the logits of every position, summed over positions, computed chunk by
    chunk. With gradients, each chunk is checkpointed: its logits are recomputed in the
    backward pass instead of being kept."""

    def part(h_s: torch.Tensor, h_t: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        s_logits = s_head(h_s).float()
        t_logits = None
        if h_t is not None and t_head is not None:
            with torch.no_grad():
                t_logits = t_head(h_t).float()
        return fn(s_logits, t_logits, y).sum(0)

    total: torch.Tensor | None = None
    for start in range(0, len(s_hidden), chunk):
        window = slice(start, start + chunk)
        args = (s_hidden[window], None if t_hidden is None else t_hidden[window], targets[window])
        if torch.is_grad_enabled() and s_hidden.requires_grad:
            value = checkpoint(part, *args, use_reentrant=False)
        else:
            value = part(*args)
        total = value if total is None else total + value
    assert total is not None
    return total


def divergence(spec: Any, schedule: Any = None) -> TokenFn:
    """The per-token function of a distillation spec (not ``task``/``hidden``)."""
    if isinstance(spec, L.KDLoss | LM.ForwardKLLoss):
        return lambda s, t, y: LM.forward_kl(s, t, spec.temperature)  # type: ignore[arg-type]
    if isinstance(spec, LM.ReverseKLLoss):
        return lambda s, t, y: LM.reverse_kl(s, t, spec.temperature)  # type: ignore[arg-type]
    if isinstance(spec, LM.JSDLoss):
        return lambda s, t, y: LM.generalized_jsd(s, t, spec.beta)  # type: ignore[arg-type]
    if isinstance(spec, LM.SkewKLLoss):
        return lambda s, t, y: LM.skew_kl(s, t, spec.alpha)  # type: ignore[arg-type]
    if isinstance(spec, LM.SkewReverseKLLoss):
        return lambda s, t, y: LM.skew_reverse_kl(s, t, spec.alpha)  # type: ignore[arg-type]
    if isinstance(spec, L.TAIDLoss):
        return lambda s, t, y: LM.token_taid(s, t, schedule.t)  # type: ignore[arg-type]
    if isinstance(spec, LM.OnPolicyLoss):
        if spec.divergence == "jsd":
            return lambda s, t, y: LM.generalized_jsd(s, t, spec.beta)  # type: ignore[arg-type]
        inner = LM.forward_kl if spec.divergence == "forward_kl" else LM.reverse_kl
        return lambda s, t, y: inner(s, t)  # type: ignore[arg-type]
    raise AssertionError(spec)


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompt: torch.Tensor,
    new_tokens: int,
    *,
    temperature: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``new_tokens`` tokens sampled from ``model`` after ``prompt`` (KV cache, no grad)."""
    was_training = model.training
    model.eval()
    cache_arg = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else ("past_key_values")
    )
    out = model(prompt, use_cache=True)
    tokens = []
    try:
        for step in range(new_tokens):
            probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
            chosen = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompt.device)
            tokens.append(chosen)
            if step + 1 < new_tokens:
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                out = model(chosen, use_cache=True, **{cache_arg: cache})
    finally:
        model.train(was_training)
    return torch.cat(tokens, dim=1)


class LMDistillObjective:
    """Builds the terms, hooks and projectors of a causal-LM distillation; computes the
    loss per batch (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[Any],
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        example_inputs: Inputs,
        seed: int = 0,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> None:
        self.teacher = teacher
        self.chunk = chunk_tokens
        self.terms: list[Term] = []
        self.projectors = nn.ModuleDict()
        self.seq_len = int(example_inputs[0].shape[1])
        s_spec: dict[str, tuple[str, Any]] = {}
        t_spec: dict[str, tuple[str, Any]] = {}
        counts: dict[str, int] = {}
        for spec in specs:
            if spec.kind not in LM_KINDS:
                raise CompressKitError(
                    f"distill: the {spec.kind} loss does not apply to a causal-lm task; use "
                    f"{', '.join(sorted(LM_KINDS))}"
                )
            if spec.kind != "task" and teacher is None:
                raise CompressKitError(
                    f"distill: the {spec.kind} loss needs a teacher but there is none; set "
                    "the pass's teacher or keep only the task loss"
                )
            counts[spec.kind] = counts.get(spec.kind, 0) + 1
            name = spec.kind if counts[spec.kind] == 1 else f"{spec.kind}{counts[spec.kind]}"
            term = Term(name, spec)
            if isinstance(spec, L.HiddenLoss):
                assert teacher is not None
                for s_name, t_name in map_layers(student, teacher, spec.layers):
                    s_key, t_key = f"output:{s_name}", f"output:{t_name}"
                    s_spec[s_key], t_spec[t_key] = (s_name, "output"), (t_name, "output")
                    term.pairs.append((s_key, t_key))
            elif isinstance(spec, L.TAIDLoss):
                term.schedule = L.TAIDSchedule(spec)
            elif isinstance(spec, LM.OnPolicyLoss):
                if spec.prompt_tokens + spec.max_new_tokens > self.seq_len:
                    raise CompressKitError(
                        f"distill: on_policy prompt_tokens {spec.prompt_tokens} + "
                        f"max_new_tokens {spec.max_new_tokens} exceed the window of "
                        f"{self.seq_len} tokens; lower them"
                    )
            self.terms.append(term)
        if teacher is not None:
            check_same_vocabulary(student, teacher)
        self.student_taps = Taps(student, s_spec, role="student")
        self.teacher_taps = Taps(teacher, t_spec, role="teacher") if teacher is not None else None
        self._keep_one = "logits_to_keep" in inspect.signature(student.forward).parameters
        self._coin = random.Random(seed)
        self._generator = torch.Generator().manual_seed(seed)
        self._taid_value: dict[str, float] = {}
        self._probe(student, example_inputs[0])

    # -- setup -----------------------------------------------------------------------

    def _probe(self, student: nn.Module, ids: torch.Tensor) -> None:
        """Check that head(final hidden) gives each model's logits; build projectors."""
        with torch.no_grad():
            for role, model, taps in (
                ("student", student, self.student_taps),
                ("teacher", self.teacher, self.teacher_taps),
            ):
                if model is None or taps is None:
                    continue
                was_training = model.training
                model.eval()
                with taps:
                    taps.clear()
                    hidden = self.final_hidden(model, ids)
                    taps.check_single_calls()
                    values = dict(taps.values)
                expected = first_tensor(model(ids, use_cache=False))
                model.train(was_training)
                got = model.get_output_embeddings()(hidden)  # type: ignore[operator]
                if expected is None or not torch.allclose(got, expected, rtol=1e-3, atol=1e-3):
                    raise CompressKitError(
                        f"distill: the {role} ({type(model).__name__}) computes its logits "
                        "other than as its output head applied to the final hidden state "
                        "(a logit scale or soft-cap?), which chunked LM losses rely on"
                    )
                if role == "student":
                    s_values = values
                else:
                    self._projectors(s_values, values)

    def _projectors(
        self, s_values: dict[str, torch.Tensor], t_values: dict[str, torch.Tensor]
    ) -> None:
        for term in self.terms:
            for s_key, t_key in term.pairs:
                s_shape, t_shape = tuple(s_values[s_key].shape), tuple(t_values[t_key].shape)
                where = f"{term.name} {s_key.split(':', 1)[1]} -> {t_key.split(':', 1)[1]}"
                projector = build_projector(
                    s_shape, t_shape, where=where, allowed=term.spec.projector
                )
                if projector is not None:
                    self.projectors[projector_name(s_key, t_key)] = projector

    def describe(self) -> dict[str, Any]:
        terms = describe_terms(self.terms)
        return {"terms": terms, "chunk_tokens": self.chunk, "teacher_cached": False}

    # -- forward passes --------------------------------------------------------------

    def final_hidden(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The hidden state the output head reads, for every position of ``ids``."""
        base: Any = unwrap(model).base_model
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            assert tensor is not None
            captured.append(tensor)

        handle = base.register_forward_hook(hook)
        try:
            model(ids, use_cache=False, **({"logits_to_keep": 1} if self._keep_one else {}))
        finally:
            handle.remove()
        return captured[-1]

    # -- the loss --------------------------------------------------------------------

    def loss(self, model: nn.Module, inputs: Inputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = inputs[0]
        batch, length = ids.shape
        on_policy = [t for t in self.terms if isinstance(t.spec, LM.OnPolicyLoss)]
        spec = on_policy[0].spec if on_policy else None
        sampled: torch.Tensor | None = None
        if spec is not None and self._coin.random() < spec.lmbda:
            prompt = ids[:, : spec.prompt_tokens]
            new = sample_continuations(
                unwrap(model),
                prompt,
                spec.max_new_tokens,
                temperature=spec.temperature,
                generator=self._generator,
            )
            pad = ids.new_zeros(batch, length - prompt.shape[1] - new.shape[1])
            sampled = torch.cat([prompt, new, pad], dim=1)
        run = ids if sampled is None else torch.cat([ids, sampled])
        with self.student_taps:
            self.student_taps.clear()
            h_s = self.final_hidden(model, run)
            s_values = dict(self.student_taps.values)
        h_t, t_values = None, {}
        if self.teacher is not None:
            assert self.teacher_taps is not None
            with torch.no_grad(), self.teacher_taps:
                self.teacher_taps.clear()
                h_t = self.final_hidden(self.teacher, run)
                t_values = dict(self.teacher_taps.values)
        # Off-policy steps score the on_policy term on the windows, with the others.
        terms = self._window_terms(
            model, h_s[:batch], None if h_t is None else h_t[:batch], y, on_policy=sampled is None
        )
        for term in on_policy if sampled is not None else []:
            assert h_t is not None and spec is not None
            start, stop = spec.prompt_tokens - 1, spec.prompt_tokens + spec.max_new_tokens - 1
            terms[term.name] = term.spec.weight * self._mean(
                model, divergence(term.spec), h_s[batch:, start:stop], h_t[batch:, start:stop]
            )
        for term in self.terms:
            if isinstance(term.spec, L.HiddenLoss):
                terms[term.name] = term.spec.weight * self._hidden(term, s_values, t_values, batch)
        return terms

    def _mean(
        self, model: nn.Module, fn: TokenFn, h_s: torch.Tensor, h_t: torch.Tensor | None
    ) -> torch.Tensor:
        flat_s = h_s.reshape(-1, h_s.shape[-1])
        flat_t = None if h_t is None else h_t.reshape(-1, h_t.shape[-1])
        targets = torch.zeros(len(flat_s), dtype=torch.long, device=flat_s.device)
        total = token_sums(
            lambda s, t, y: fn(s, t, y).unsqueeze(-1),
            flat_s,
            flat_t,
            targets,
            self._head(model),
            None if self.teacher is None else self._head(self.teacher),
            chunk=self.chunk,
        )
        return total[0] / max(len(flat_s), 1)

    def _window_terms(
        self,
        model: nn.Module,
        h_s: torch.Tensor,
        h_t: torch.Tensor | None,
        y: torch.Tensor,
        *,
        on_policy: bool,
    ) -> dict[str, torch.Tensor]:
        """Every logit term on the windows, in one chunked pass over the positions."""
        window = [
            t
            for t in self.terms
            if not isinstance(t.spec, L.HiddenLoss)
            and (on_policy or not isinstance(t.spec, LM.OnPolicyLoss))
        ]
        if not window:
            return {}
        fns = [self._token_fn(t) for t in window]
        flat_s = h_s[:, :-1].reshape(-1, h_s.shape[-1])
        flat_t = None if h_t is None else h_t[:, :-1].reshape(-1, h_t.shape[-1])
        targets = y[:, 1:].reshape(-1).long()
        sums = token_sums(
            lambda s, t, tg: torch.stack([fn(s, t, tg) for fn in fns], dim=-1),
            flat_s,
            flat_t,
            targets,
            self._head(model),
            None if self.teacher is None else self._head(self.teacher),
            chunk=self.chunk,
        )
        positions = max(len(flat_s), 1)
        labelled = max(int((targets != -100).sum()), 1)
        terms = {}
        for index, term in enumerate(window):
            count = labelled if isinstance(term.spec, L.TaskLoss) else positions
            value = sums[index] / count
            if isinstance(term.spec, L.TAIDLoss):
                self._taid_value[term.name] = float(value.detach())
            terms[term.name] = term.spec.weight * value
        return terms

    def _token_fn(self, term: Term) -> TokenFn:
        if isinstance(term.spec, L.TaskLoss):
            return lambda s, t, y: LM.next_token_ce(s, y)
        return divergence(term.spec, term.schedule)

    @staticmethod
    def _head(model: nn.Module) -> nn.Module:
        return unwrap(model).get_output_embeddings()  # type: ignore[operator, no-any-return]

    def _hidden(
        self,
        term: Term,
        s_values: dict[str, torch.Tensor],
        t_values: dict[str, torch.Tensor],
        batch: int,
    ) -> torch.Tensor:
        values = []
        for s_key, t_key in term.pairs:
            s, t = s_values[s_key][:batch], t_values[t_key][:batch]
            name = projector_name(s_key, t_key)
            if name in self.projectors:
                s = self.projectors[name](s)
            values.append(L.hidden_loss(s, t, metric=term.spec.metric, channel_dim=s.dim() - 1))
        return torch.stack(values).mean()

    def on_step(self, state: StepState) -> None:
        for term in self.terms:
            if isinstance(term.schedule, L.TAIDSchedule):
                loss = self._taid_value.get(term.name, state.loss)
                term.schedule.update(loss, state.step, state.total_steps)

    def as_objective(self) -> Objective:
        modules = [self.projectors] if len(self.projectors) else []
        return Objective(loss=self.loss, modules=modules, on_step=self.on_step)
