"""The measuring loop: warm-up, then at least N runs and at least S seconds (LiteRT benchmark_model's rule).

Only wall time of the call itself is recorded (perf_counter_ns around it); inputs are prepared beforehand so
decoding and resizing never land in an inference figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RunPlan:
    """How long to measure one configuration."""

    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 3.0

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warm-up runs must be 0 or more, got {self.warmup}")
        if self.min_runs < 1:
            raise ValueError(f"minimum runs must be at least 1, got {self.min_runs}")
        if self.min_seconds < 0:
            raise ValueError(f"minimum seconds must be 0 or more, got {self.min_seconds}")


def measure(call: Callable[[int], object], plan: RunPlan) -> list[float]:
    """Time `call(i)` (i = the run's index, used to rotate inputs) and return per-call seconds.

    Warm-up calls are made and discarded first: they absorb lazy allocation, kernel selection and caches, which
    cold start measures separately.
    """
    for i in range(plan.warmup):
        call(i)
    timings: list[float] = []
    min_ns = int(plan.min_seconds * 1e9)
    clock = time.perf_counter_ns
    spent = 0
    i = plan.warmup
    while len(timings) < plan.min_runs or spent < min_ns:
        start = clock()
        call(i)
        elapsed = clock() - start
        timings.append(elapsed / 1e9)
        spent += elapsed
        i += 1
    return timings
