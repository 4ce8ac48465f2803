"""`run_bench(BenchConfig) -> dict`: the whole benchmark of one bundle, as one JSON-ready record.

The matmul ceiling, the inputs (prepared once), then per thread count every format opened together and
measured interleaved per batch size, then cold starts, then the ceiling again; derived figures come from pure
functions (here and in analysis.py).

The measuring loop: warm-up, then at least N runs and at least S seconds (LiteRT benchmark_model's rule). Formats
run interleaved, one run of each in turn, so a burst of load on a shared machine hits every format alike and the
ratios between them hold. Each timed call reports its own duration, so only inference is timed. The latency
statistics are pure functions (no numpy, no clock), so a test can check every figure against numpy.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge import __version__
from tumor_edge.bench.analysis import INT8_PAIR, add_rates, add_ratios, check_goals, count_macs, head_to_head
from tumor_edge.bench.ceiling import Ceiling, ceiling_table, isa_peak, measure_ceilings, merge_ceilings, peak_problems
from tumor_edge.bench.coldstart import measure_cold_start
from tumor_edge.bench.targets import KERAS_KEY, Session, Subject, image_pool, resolve_subject
from tumor_edge.contracts.formats import ENGINES
from tumor_edge.errors import ConfigError, TumorEdgeError
from tumor_edge.machine import load_average, machine_info
from tumor_edge.progress import progress
from tumor_edge.runtime import scale

SCHEMA = "tumor-edge-bench/1"


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


@dataclass
class BenchConfig:
    """Everything one benchmark run needs; the CLI and benchmarks/run_suite.py both fill it."""

    model: Path  # a bundle folder, or one model file of a bundle (or a lone .onnx with embedded metadata)
    formats: list[str] | None = None  # None: every file of the bundle, plus Keras when at hand
    threads: list[int] = field(default_factory=lambda: [1, 2])
    batches: list[int] = field(default_factory=lambda: [1, 8])
    plan: RunPlan = field(default_factory=RunPlan)
    images: Path | None = None  # a folder of scans; default: the run's test split, else synthetic
    image_count: int = 16
    run: Path | None = None  # the training run folder or its model.keras; default: from bundle provenance
    keras: bool = True
    cold_start: bool = True
    cold_runs: int = 3
    keras_cold_runs: int = 1  # TensorFlow's cold start is slow; one sample says what matters
    ceiling: bool = True  # the float32 and int8 matmul ceilings, before and after the formats
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if not self.threads or any(t < 1 for t in self.threads):
            raise ConfigError(f"thread counts must be positive integers, got {self.threads}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batches}")
        if self.image_count < 1:
            raise ConfigError(f"image count must be at least 1, got {self.image_count}")


def _macs(subject: Subject) -> int | None:
    """MACs per image from the bundle's fp32 ONNX (else any ONNX file it lists); all formats share the
    architecture."""
    suffix = ENGINES["onnxruntime"].suffix
    paths = [t.path for t in sorted((t for t in subject.targets if t.path.suffix.lower() == suffix),
                                    key=lambda t: t.precision != "fp32")]
    if not paths and subject.bundle_dir is not None:
        paths = [subject.bundle_dir / name for name in subject.metadata.models if name.lower().endswith(suffix)]
    return next((macs for macs in map(count_macs, paths) if macs), None)


def _ceiling_pass(threads: list[int], unavailable: dict[str, str]) -> list[Ceiling]:
    """Every ceiling kind at every thread count (a fresh process each); kinds this machine cannot measure are
    noted in `unavailable`."""
    out: list[Ceiling] = []
    for t in threads:
        ceilings, missing = measure_ceilings(t)
        out += ceilings
        unavailable.update(missing)
    return out


def _row(session: Session, threads: int, batch: int, timings: list[float]) -> dict[str, Any]:
    target, stats = session.target, summarize(timings, batch)
    return {"format": target.key, "file": target.path.name, "loaded_file": session.loaded_file,
            "engine": target.engine, "precision": target.precision, "threads": threads, "batch": batch,
            "load_s": session.load_s, **stats.to_dict(), "timings_ms": [t * 1e3 for t in timings]}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Benchmark a bundle; returns the JSON-ready record (see README's bench section for the fields)."""
    started = time.perf_counter()
    subject = resolve_subject(config.model, config.run, config.keras, config.formats)
    machine = machine_info()
    pool = image_pool(subject, config.images, config.image_count)
    inputs = scale(pool.pixels, subject.metadata.preprocessing)
    unavailable: dict[str, str] = {}
    passes = _ceiling_pass(config.threads, unavailable) if config.ceiling else []
    macs = _macs(subject)
    keras_cold_runs = min(config.cold_runs, config.keras_cold_runs)
    rows: list[dict[str, Any]] = []
    cold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tumor-edge-bench-") as tmp:
        workdir = Path(tmp)
        steps = [(threads, batch) for threads in config.threads for batch in config.batches]
        bar = iter(progress(steps, "benchmarking", enabled=config.show_progress))
        for threads in config.threads:
            sessions = subject.open_sessions(threads, inputs, len(subject.metadata.classes), workdir)
            try:
                for batch in config.batches:
                    next(bar, None)
                    for session in sessions.values():
                        session.prepare(batch)
                    timings = measure_interleaved({k: s.timed_call for k, s in sessions.items()}, config.plan)
                    for key, session in sessions.items():
                        rows.append(_row(session, threads, batch, timings[key]))
            finally:
                for session in sessions.values():
                    session.close()
        next(bar, None)
        if config.cold_start:
            probe = pool.probe_image(workdir)
            cold_targets = [t for t in subject.targets if t.key not in {s["format"] for s in subject.skipped}]
            for target in progress(cold_targets, "cold starts", enabled=config.show_progress):
                try:
                    runs = keras_cold_runs if target.engine == KERAS_KEY else config.cold_runs
                    cold.append(measure_cold_start(target.key, target.path, probe, runs, threads=max(config.threads),
                                                   bundle=subject.bundle_dir if target.engine == KERAS_KEY else None))
                except (RuntimeError, TumorEdgeError) as err:
                    subject.skipped.append({"format": target.key, "file": target.path.name,
                                            "reason": f"cold start: {err}"})
    if config.ceiling:  # again after the formats: the best of both passes is the ceiling
        passes += _ceiling_pass(config.threads, unavailable)
    ceilings = merge_ceilings(passes)
    table = ceiling_table(ceilings)
    peak = isa_peak()
    add_ratios(rows)
    add_rates(rows, macs, table)
    goal_threads = max(config.threads)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tumor_edge_version": __version__,
        "machine": machine,
        "load_average_end": load_average(),
        "settings": {"threads": config.threads, "batches": config.batches, **asdict(config.plan),
                     "image_count": config.image_count, "cold_runs": config.cold_runs,
                     "keras_cold_runs": keras_cold_runs,
                     "timer": "perf_counter_ns around each call; inputs prepared before timing",
                     "schedule": "interleaved: one run of each format in turn until each has its runs and seconds"},
        "model": {
            "source": str(config.model),
            "name": subject.metadata.name,
            "classes": subject.metadata.classes,
            "input_hw": list(subject.metadata.preprocessing.size),
            "macs_per_image": macs,
            "gmac_per_image": macs / 1e9 if macs else None,
            "keras_reference": next((str(t.path) for t in subject.targets if t.engine == KERAS_KEY), None),
            "inputs": pool.source,
            "files": {t.key: {"file": t.path.name, "engine": t.engine, "size_bytes": t.path.stat().st_size}
                      for t in subject.targets},
        },
        "ceiling": [asdict(c) for c in ceilings],
        "ceiling_passes": [asdict(c) for c in passes],
        "ceiling_unavailable": unavailable,
        "isa_peak": asdict(peak) if peak else None,
        "ceiling_problems": peak_problems(ceilings, peak),
        "results": rows,
        "int8_engines": head_to_head(rows, *INT8_PAIR),
        "cold_start": cold,
        "goals": check_goals(rows, goal_threads, 1, macs,
                             {kind: by_threads[goal_threads] for kind, by_threads in table.items()
                              if goal_threads in by_threads}),
        "skipped": subject.skipped,
        "duration_s": time.perf_counter() - started,
    }
