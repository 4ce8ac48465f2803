"""Latency statistics as a pure function of recorded timings: no numpy, no clock, so a test can check every
figure against numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tumor_edge.errors import ConfigError


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
