"""The measuring loop: warm-up, at least N runs and S seconds, formats interleaved with a rotating start."""

from __future__ import annotations

import time

import pytest

from tumor_edge.bench.timing import RunPlan, measure, measure_interleaved
from tumor_edge.errors import ConfigError


def test_measure_warms_up_then_runs_at_least_n_and_s():
    calls: list[int] = []

    def call(i: int) -> None:
        calls.append(i)
        time.sleep(0.002)

    timings = measure(call, RunPlan(warmup=2, min_runs=5, min_seconds=0.0))
    assert len(timings) == 5 and len(calls) == 7 and calls == list(range(7))
    assert all(t >= 0.0019 for t in timings)
    calls.clear()
    timings = measure(call, RunPlan(warmup=0, min_runs=1, min_seconds=0.05))
    assert sum(timings) >= 0.05 and len(timings) >= 10
    with pytest.raises(ValueError):
        RunPlan(min_runs=0)


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"min_runs": 0}, {"min_seconds": -0.5}])
def test_run_plan_rejects_bad_options_with_a_config_error(kwargs):
    with pytest.raises(ConfigError):
        RunPlan(**kwargs)


def test_interleaved_rounds_alternate_and_each_call_meets_the_plan():
    order: list[str] = []

    def call(key: str, seconds: float):
        def run(i: int) -> float:
            order.append(key)
            return seconds  # a call reports its own duration (as the Keras worker does)
        return run

    # Durations exact in binary, so the seconds add up without rounding.
    timings = measure_interleaved({"fast": call("fast", 1 / 64), "slow": call("slow", 1 / 8)},
                                  RunPlan(warmup=1, min_runs=3, min_seconds=0.25))
    assert order[:2] == ["fast", "slow"]  # warm-up: one each
    assert order[2:8] == ["fast", "slow", "slow", "fast", "fast", "slow"]  # the start rotates each round
    assert len(timings["slow"]) == 3  # min_runs: 3 runs (0.375 s >= 0.25 s)
    assert len(timings["fast"]) == 16  # min_seconds: 0.25 s at 1/64 s a run, alone once slow was done
    assert order[8:] == ["fast"] * 13
