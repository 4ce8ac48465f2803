"""The measuring loop: warm-up, then at least N runs and at least S seconds (LiteRT benchmark_model's rule).

Formats run interleaved, one run of each in turn, so a burst of load on a shared machine hits every format
alike and the ratios between them hold. Each timed call reports its own duration, so only inference is timed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
