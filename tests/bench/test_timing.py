"""The measuring loop: warm-up, at least N runs and S seconds, formats interleaved with a rotating start."""

from __future__ import annotations

import pytest

from tumor_edge.bench.timing import RunPlan, measure_interleaved
from tumor_edge.errors import ConfigError


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
