from __future__ import annotations

import numpy as np

from compresskit.bench.latency import (
    batch_of,
    median_is_stable,
    robust_cv,
    summarize,
    time_calls,
    time_interleaved,
)


def test_a_steady_series_is_stable_and_a_drifting_one_is_not() -> None:
    rng = np.random.default_rng(0)
    steady = 1e-3 * (1 + 0.02 * rng.standard_normal(400))
    assert median_is_stable(steady)
    drifting = 1e-3 * np.linspace(1.0, 1.5, 400)  # the machine slows down while timing
    assert not median_is_stable(drifting)
    assert not median_is_stable(steady[:5])  # too few samples to tell
    wild = 1e-3 * rng.lognormal(0, 1.0, 40)  # large spread: the median is still uncertain
    assert not median_is_stable(wild)


def test_robust_cv_ignores_rare_outliers() -> None:
    times = np.full(1000, 1.0) + np.linspace(-0.01, 0.01, 1000)
    times[::100] = 50.0  # 1% outliers (interrupts, GC)
    assert robust_cv(times) < 0.01
    assert times.std() / times.mean() > 1.0


def test_summarize_reports_percentiles_and_throughput() -> None:
    times = np.array([1.0, 2.0, 3.0, 4.0, 100.0]) / 1000
    latency = summarize("cpu-ort", 8, times, stable=False)
    assert latency.p50_ms == 3.0 and latency.repeats == 5
    assert latency.p50_ms <= latency.p90_ms <= latency.p99_ms <= 100.0
    assert abs(latency.throughput - 8 / 0.003) < 1e-6
    assert not latency.stable


def test_interleaved_timing_measures_every_callable_until_stable_or_capped() -> None:
    calls = {"a": 0, "b": 0}

    def make(name: str):
        def fn() -> None:
            calls[name] += 1
            sum(range(200))

        return fn

    series = time_interleaved([make("a"), make("b")], warmup=2, min_repeats=10, max_seconds=0.2)
    assert len(series) == 2
    for timed in series:
        assert len(timed.times) >= 10 and (timed.times > 0).all()
        assert timed.stable or timed.seconds >= 0.2
    assert calls["a"] >= 12 and calls["b"] >= 12
    assert len(time_calls(make("a"), warmup=1, min_repeats=5, max_seconds=0.05)) >= 5


def test_batch_of_cycles_samples_and_fits_the_sequence_length() -> None:
    tokens = np.arange(6).reshape(2, 3)
    out = batch_of([tokens], 5, sequence=7)[0]
    assert out.shape == (5, 7)
    assert out[2].tolist() == [0, 1, 2, 0, 1, 2, 0]  # third row cycles back to the first
    assert batch_of([tokens], 1, sequence=2)[0].tolist() == [[0, 1]]
    image = np.zeros((1, 1, 8, 8), dtype=np.float32)
    assert batch_of([image], 4)[0].shape == (4, 1, 8, 8)  # no sequence: unchanged
