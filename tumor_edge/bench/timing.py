"""The measuring loop: warm-up, then at least N runs and at least S seconds (LiteRT benchmark_model's rule), and
the latency statistics of what it recorded.

Formats run interleaved, one run of each in turn, so a burst of load on a shared machine hits every format
alike and the ratios between them hold. Each timed call reports its own duration, so only inference is timed.
The statistics are pure functions (no numpy, no clock), so a test can check every figure against numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tumor_edge.errors import ConfigError


@dataclass(frozen=True)
class RunPlan:
    """How long to measure one configuration."""

    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"warm-up runs must be 0 or more, got {self.warmup}")
        if self.min_runs < 1:
            raise ConfigError(f"minimum runs must be at least 1, got {self.min_runs}")
        if self.min_seconds < 0:
            raise ConfigError(f"minimum seconds must be 0 or more, got {self.min_seconds}")


# A timed call: run number in, that run's duration in seconds out.
TimedCall = Callable[[int], float]


def measure_interleaved(calls: dict[str, TimedCall], plan: RunPlan) -> dict[str, list[float]]:
    """Per-run seconds for each call: `plan.warmup` untimed runs each, then rounds of one run each until a call
    has its runs and seconds; the start rotates so no format always follows the same neighbour."""
    for i in range(plan.warmup):
        for call in calls.values():
            call(i)
    timings: dict[str, list[float]] = {key: [] for key in calls}
    spent: dict[str, float] = dict.fromkeys(calls, 0.0)
    round_no = 0
    while True:
        pending = [k for k in calls if len(timings[k]) < plan.min_runs or spent[k] < plan.min_seconds]
        if not pending:
            return timings
        shift = round_no % len(pending)
        for key in pending[shift:] + pending[:shift]:
            seconds = calls[key](plan.warmup + len(timings[key]))
            timings[key].append(seconds)
            spent[key] += seconds
        round_no += 1


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks: numpy's default, as
    onnxruntime's perf test and most latency tools report it."""
    if not sorted_values:
        raise ConfigError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"percentile must be in [0, 100], got {q}")
    h = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


@dataclass(frozen=True)
class LatencyStats:
    """One configuration's latency, in milliseconds per call (one call = one batch)."""

    runs: int
    batch: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float  # sample standard deviation (ddof=1); 0 for a single run
    max_ms: float
    total_s: float  # the measured runs only, warm-up excluded
    images_per_s: float  # sustained throughput: batch * runs / total time

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p50_per_image_ms": self.p50_ms / self.batch}


def summarize(timings_s: Sequence[float], batch: int = 1) -> LatencyStats:
    """Summarise per-call wall times (seconds) of calls that each processed `batch` images."""
    if not timings_s:
        raise ConfigError("no timings to summarise")
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    values = sorted(float(t) * 1000.0 for t in timings_s)
    n = len(values)
    total_ms = math.fsum(values)
    mean = total_ms / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return LatencyStats(
        runs=n,
        batch=batch,
        min_ms=values[0],
        p50_ms=percentile(values, 50),
        p90_ms=percentile(values, 90),
        p99_ms=percentile(values, 99),
        mean_ms=mean,
        std_ms=math.sqrt(var),
        max_ms=values[-1],
        total_s=total_ms / 1000.0,
        images_per_s=batch * n / (total_ms / 1000.0) if total_ms > 0 else math.inf,
    )
