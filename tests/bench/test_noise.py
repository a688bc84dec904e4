"""Noisy-machine detection on synthetic CPU accounting."""

from __future__ import annotations

from compresskit.bench.noise import MachineSample, assess, sample_machine

TICKS = 100.0  # per second


def sample(wall: float, busy: float, steal: float, own: float, load: float) -> MachineSample:
    """Counters after ``wall`` seconds on a 2-core machine (busy/steal in core-seconds)."""
    total = int(wall * 2 * TICKS)
    return MachineSample(
        wall=wall,
        busy_ticks=int(busy * TICKS),
        steal_ticks=int(steal * TICKS),
        total_ticks=total,
        own_cpu_seconds=own,
        loadavg=load,
        cores=2,
    )


START = sample(0.0, 0.0, 0.0, 0.0, 1.0)


def test_a_quiet_machine_is_not_noisy() -> None:
    # 10 s, we used 10 core-seconds, the machine was busy 10.5 core-seconds in all
    noise = assess(START, sample(10, 10.5, 0, 10, 1.1), ticks_per_second=TICKS)
    assert not noise.noisy and noise.reasons == []
    assert noise.others_busy is not None and noise.others_busy < 0.05


def test_other_processes_make_it_noisy() -> None:
    noise = assess(START, sample(10, 18, 0, 10, 1.0), ticks_per_second=TICKS)
    assert noise.noisy
    assert any("other processes used 40%" in r for r in noise.reasons)


def test_cpu_steal_makes_it_noisy() -> None:
    noise = assess(START, sample(10, 10, 2, 10, 1.0), ticks_per_second=TICKS)
    assert noise.noisy and noise.steal is not None and abs(noise.steal - 0.1) < 1e-9
    assert any("steal" in r for r in noise.reasons)


def test_high_load_average_makes_it_noisy() -> None:
    noise = assess(START, sample(10, 10, 0, 10, 4.0), ticks_per_second=TICKS)
    assert noise.noisy and any("load average 4.00" in r for r in noise.reasons)


def test_spread_timings_make_it_noisy() -> None:
    quiet = sample(10, 10, 0, 10, 1.0)
    noise = assess(START, quiet, cvs={"b1": 0.02, "b32": 0.4}, ticks_per_second=TICKS)
    assert noise.noisy and noise.reasons == ["timings of b32 vary (robust CV 40%)"]


def test_sampling_this_machine_gives_sane_counters() -> None:
    first, second = sample_machine(), sample_machine()
    assert second.wall >= first.wall and first.cores >= 1
    assert second.total_ticks >= first.total_ticks
    noise = assess(first, second)
    assert isinstance(noise.noisy, bool)
