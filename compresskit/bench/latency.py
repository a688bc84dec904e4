"""Timing: warm-up, then repeats until the median is stable (or a cap), as typed results.

Several models are timed *interleaved* (round-robin, in short rounds) so that drift of
the machine (thermal, other load) hits baseline and candidates alike and their ratio
stays honest. This module imports only numpy and the measurement schema: the benchmark
worker for an ONNX Runtime target never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compresskit.bench.measurement import Latency

# A median is "stable" when its standard error is below this fraction of it ...
REL_PRECISION = 0.01
# ... and the medians of the first and second half of the samples agree this closely.
MAX_DRIFT = 0.05
ROUND_SECONDS = 0.01  # one model's share of a round-robin round


def robust_cv(times: np.ndarray) -> float:
    """Spread of the timings relative to their median, insensitive to rare outliers."""
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / 1.349 / q50) if q50 > 0 else 0.0


def median_is_stable(
    times: Sequence[float] | np.ndarray,
    *,
    min_repeats: int = 10,
    rel_precision: float = REL_PRECISION,
    max_drift: float = MAX_DRIFT,
) -> bool:
    """True when more samples would not move the median: its standard error (1.2533
    sigma / sqrt(n), sigma from the IQR) is within ``rel_precision`` of it, and the two
    halves of the series agree within ``max_drift`` (no trend)."""
    values = np.asarray(times, dtype=np.float64)
    n = len(values)
    if n < max(min_repeats, 4):
        return False
    median = float(np.median(values))
    if median <= 0:
        return True
    error = 1.2533 * robust_cv(values) * median / np.sqrt(n)
    half = n // 2
    drift = abs(float(np.median(values[:half])) - float(np.median(values[half:]))) / median
    return error <= rel_precision * median and drift <= max_drift


def summarize(
    target: str, batch: int, times_s: np.ndarray, *, stable: bool, workload: str | None = None
) -> Latency:
    """Percentiles (ms), robust CV and throughput of timings in seconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1000
    p50, p90, p99 = (float(x) for x in np.percentile(ms, [50, 90, 99]))
    return Latency(
        target=target,
        batch=batch,
        workload=workload,
        p50_ms=p50,
        p90_ms=p90,
        repeats=len(ms),
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        cv=robust_cv(ms),
        throughput=batch / (p50 / 1000) if p50 > 0 else 0.0,
        stable=stable,
    )


def time_calls(
    fn: Callable[[], object], *, warmup: int = 5, min_repeats: int = 20, max_seconds: float = 1.0
) -> np.ndarray:
    """Seconds per call: ``warmup`` untimed calls, then timed ones until the median is
    stable (at least ``min_repeats``) or ``max_seconds`` / 1000 calls are spent."""
    return time_interleaved([fn], warmup=warmup, min_repeats=min_repeats, max_seconds=max_seconds)[
        0
    ].times


@dataclass
class Series:
    """Timings of one callable in an interleaved measurement."""

    times: np.ndarray
    stable: bool
    seconds: float


@dataclass
class _State:
    fn: Callable[[], object]
    per_round: int = 1
    times: list[float] = field(default_factory=list)
    spent: float = 0.0
    done: bool = False
    stable: bool = False


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    warmup: int = 5,
    min_repeats: int = 20,
    max_seconds: float = 1.0,
    max_repeats: int = 5000,
    rel_precision: float = REL_PRECISION,
    on_round: Callable[[], Any] | None = None,
) -> list[Series]:
    """Time several callables in round-robin rounds of ~10 ms each (rotating who goes
    first) until each one's median is stable or it has spent ``max_seconds``."""
    states = [_State(fn) for fn in fns]
    for state in states:
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            state.fn()
        estimate = (time.perf_counter() - start) / max(1, warmup)
        state.per_round = int(min(50, max(1, ROUND_SECONDS / max(estimate, 1e-7))))
    round_index = 0
    while not all(s.done for s in states):
        active = [s for s in states if not s.done]
        shift = round_index % len(active)
        for state in active[shift:] + active[:shift]:
            for _ in range(state.per_round):
                start = time.perf_counter()
                state.fn()
                elapsed = time.perf_counter() - start
                state.times.append(elapsed)
                state.spent += elapsed
        for state in active:
            n = len(state.times)
            if n >= min_repeats and median_is_stable(
                state.times, min_repeats=min_repeats, rel_precision=rel_precision
            ):
                state.done = state.stable = True
            elif n >= max_repeats or (state.spent >= max_seconds and n >= min(min_repeats, 3)):
                state.done = True
        round_index += 1
        if on_round is not None:
            on_round()
    return [Series(np.asarray(s.times), s.stable, s.spent) for s in states]


def batch_of(
    sample: Sequence[np.ndarray], batch: int, *, sequence: int | None = None
) -> tuple[np.ndarray, ...]:
    """``batch`` real samples of every input, cycling through ``sample`` if it has fewer;
    with ``sequence``, the second axis is cut or tiled to that length (token ids, masks)."""
    out = []
    for x in sample:
        x = np.asarray(x)
        reps = -(-batch // x.shape[0])
        x = np.concatenate([x] * reps)[:batch]
        if sequence is not None and x.ndim >= 2 and x.shape[1] != sequence:
            tiles = -(-sequence // x.shape[1])
            x = np.concatenate([x] * tiles, axis=1)[:, :sequence]
        out.append(np.ascontiguousarray(x))
    return tuple(out)
