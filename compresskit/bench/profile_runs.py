"""Profiling in the benchmark worker: every model of a job, on each of its inputs, with ONNX
Runtime's profiler on, the calls interleaved so that noise hits all models alike.

The worker times first and profiles after (the profiler's own cost never reaches a
latency). Each model gets fresh sessions with profiling on per input plan; the first call
of each is dropped, and each node's median over the rest is what counts
(:func:`compresskit.bench.profile.summarize`). Never imports torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compresskit import interrupts
from compresskit.bench.measurement import Profile
from compresskit.bench.profile import node_modules, read_trace, summarize

# (batch, workload name or None, the inputs cycled): what the worker times a model on.
Plan = tuple[int, str | None, list[Any]]


class ProfilingSessions:
    """Session options that profile into ``workdir``, and the sessions opened with them
    (a model opened by a factory may open several)."""

    def __init__(self, workdir: Path, tag: str, *, save_optimized: bool) -> None:
        self.workdir = workdir
        self.tag = tag
        self.save_optimized = save_optimized
        self.opened: list[tuple[Any, Any, Path | None]] = []

    def configure(self, options: Any) -> Path | None:
        """Profile the next session; returns where ORT writes its optimised graph."""
        index = len(self.opened)
        options.enable_profiling = True
        options.profile_file_prefix = str(self.workdir / f"profile-{self.tag}-{index}")
        if not self.save_optimized:
            return None
        optimized = self.workdir / f"optimized-{self.tag}-{index}.onnx"
        options.optimized_model_filepath = str(optimized)
        return optimized

    def opened_session(self, session: Any, source: Any, optimized: Path | None) -> None:
        self.opened.append((session, source, optimized))

    def calls(self) -> list[dict[str, float]]:
        """Node times per call (the first dropped), summed over this model's sessions."""
        merged: list[dict[str, float]] | None = None
        for session, _, _ in self.opened:
            per_call = read_trace(Path(session.end_profiling()), skip=1)
            if merged is None:
                merged = per_call
                continue
            for total, extra in zip(merged, per_call, strict=False):
                for name, ms in extra.items():
                    total[name] = total.get(name, 0.0) + ms
        return merged or []

    def node_map(self) -> dict[str, tuple[str, str]]:
        """Profiled node -> (module, op) for every session opened."""
        import onnx

        nodes: dict[str, tuple[str, str]] = {}
        for _, source, optimized in self.opened:
            if isinstance(source, bytes):
                exported = onnx.load_from_string(source)
            else:
                exported = onnx.load(str(source), load_external_data=False)
            graph = None
            if optimized is not None and optimized.exists():
                graph = onnx.load(str(optimized), load_external_data=False)
            nodes.update(node_modules(exported, graph))
        return nodes


# Opens one model (a job's spec) with the given sessions and returns its call on a plan.
OpenCall = Callable[[dict, ProfilingSessions, list[Any]], Callable[[], object]]


def profile_plans(
    specs: Sequence[dict],
    plans: Sequence[Sequence[Plan | None]],
    open_call: OpenCall,
    *,
    target: str,
    workdir: Path,
    runs: int = 10,
    max_seconds: float = 1.0,
) -> dict[str, list[Profile]]:
    """A :class:`Profile` per model (by name) and plan: ``runs`` calls each (at least 3
    within ``max_seconds`` per plan), round-robin, the first model first in turn.
    ``plans[i]`` are model ``i``'s inputs per plan (None: it cannot take that plan)."""
    profiles: dict[str, list[Profile]] = {spec["name"]: [] for spec in specs}
    node_maps: dict[str, dict[str, tuple[str, str]]] = {}
    for plan_index in range(max((len(own) for own in plans), default=0)):
        opened: list[tuple[str, ProfilingSessions, Callable[[], object], Plan]] = []
        for model_index, (spec, own) in enumerate(zip(specs, plans, strict=True)):
            plan = own[plan_index] if plan_index < len(own) else None
            if plan is None:
                continue
            name = spec["name"]
            sessions = ProfilingSessions(
                workdir, f"{model_index}-{plan_index}", save_optimized=name not in node_maps
            )
            try:
                call = open_call(spec, sessions, plan[2])
                call()  # dropped: the first call allocates
            except Exception as error:  # profiles are extra evidence; timings stand alone
                interrupts.check(error)
                print(f"profiling {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
                continue
            opened.append((name, sessions, call, plan))
        _interleave([call for _, _, call, _ in opened], runs=runs, max_seconds=max_seconds)
        for name, sessions, _, (batch, workload, _) in opened:
            calls = sessions.calls()
            if not calls:
                continue
            if name not in node_maps:
                node_maps[name] = sessions.node_map()
            profiles[name].append(
                summarize(calls, node_maps[name], target=target, batch=batch, workload=workload)
            )
    return profiles


def _interleave(calls: Sequence[Callable[[], object]], *, runs: int, max_seconds: float) -> None:
    start = time.perf_counter()
    for round_index in range(runs):
        if round_index >= 3 and time.perf_counter() - start > max_seconds:
            return
        shift = round_index % max(1, len(calls))
        for call in [*calls[shift:], *calls[:shift]]:
            call()
