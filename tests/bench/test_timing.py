"""The measuring loop: warm-up, at least N runs and S seconds, formats interleaved with a rotating start; and the
latency statistics, against numpy on skewed timings."""

from __future__ import annotations

import numpy as np
import pytest

from tumor_edge.bench.harness import RunPlan, measure_interleaved, percentile, summarize
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


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
@pytest.mark.parametrize("batch", [1, 8])
def test_summarize_matches_numpy(n, batch):
    rng = np.random.default_rng(n)
    timings = list(rng.lognormal(-3.0, 0.5, n))  # seconds, skewed like real latencies
    stats = summarize(timings, batch)
    ms = np.array(timings) * 1000
    assert stats.runs == n and stats.batch == batch
    assert stats.min_ms == pytest.approx(ms.min())
    assert stats.max_ms == pytest.approx(ms.max())
    for q, value in ((50, stats.p50_ms), (90, stats.p90_ms), (99, stats.p99_ms)):
        assert value == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert stats.mean_ms == pytest.approx(ms.mean(), rel=1e-12)
    assert stats.std_ms == pytest.approx(ms.std(ddof=1) if n > 1 else 0.0, rel=1e-9, abs=1e-12)
    assert stats.images_per_s == pytest.approx(batch * n / ms.sum() * 1000)
    assert stats.to_dict()["p50_per_image_ms"] == pytest.approx(np.median(ms) / batch)


def test_percentile_and_summary_reject_nonsense():
    # ConfigError: the project's error family, and still a ValueError for library callers.
    with pytest.raises(ConfigError):
        percentile([], 50)
    with pytest.raises(ConfigError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        summarize([], 1)
    with pytest.raises(ConfigError):
        summarize([0.1], 0)
