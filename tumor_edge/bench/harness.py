"""`run_bench(BenchConfig) -> dict`: the whole benchmark of one bundle, as one JSON-ready record.

Order of work: the machine and its matmul ceiling, the inputs (real scans, prepared once), then for each thread
count all formats opened together and, per batch size, measured interleaved run by run (so a burst of load on
a shared machine hits all formats alike and the ratios between them hold), then cold starts. Figures derived
from the timings (statistics, ratios, rates, goals) are computed by pure functions in stats.py and
analysis.py.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge import __version__
from tumor_edge.bench.analysis import add_rates, add_ratios, check_goals
from tumor_edge.bench.ceiling import measure_ceiling, merge_ceilings
from tumor_edge.bench.coldstart import measure_cold_start
from tumor_edge.bench.inputs import ImagePool, pool_from_folder, pool_from_run, synthetic_pool, write_probe_image
from tumor_edge.bench.macs import count_macs
from tumor_edge.bench.stats import summarize
from tumor_edge.bench.targets import KERAS_KEY, Session, Target, engine_missing, open_session, target_for
from tumor_edge.bench.timing import RunPlan, measure_interleaved
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, is_optimized_name
from tumor_edge.errors import ModelError, TumorEdgeError
from tumor_edge.machine import load_average, machine_info
from tumor_edge.progress import progress

SCHEMA = "tumor-edge-bench/1"

# Provenance keys under which export may record the training run folder (first match wins).
RUN_KEYS = ("run_dir", "run", "source_run", "run_folder", "training_run")


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
    keras_cold_runs: int = 1  # TensorFlow's cold start takes 10-25 s; one sample says what matters
    ceiling: bool = True
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        if not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"thread counts must be positive integers, got {self.threads}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError(f"batch sizes must be positive integers, got {self.batches}")
        if self.image_count < 1:
            raise ValueError(f"image count must be at least 1, got {self.image_count}")


@dataclass
class Subject:
    """The bundle being benchmarked, resolved: metadata, the files to time, and the Keras reference."""

    metadata: BundleMetadata
    bundle_dir: Path | None
    targets: list[Target]
    run_dir: Path | None
    skipped: list[dict[str, str]]

    @property
    def by_key(self) -> dict[str, Target]:
        return {t.key: t for t in self.targets}


def _key(fmt: str, precision: str, taken: set[str], name: str) -> str:
    key = f"{fmt}-{precision}"
    return key if key not in taken else f"{key}:{name}"


def _find_run(config: BenchConfig, metadata: BundleMetadata) -> tuple[Path | None, Path | None]:
    """(run folder or None, model.keras or None) from --run or the bundle's provenance."""
    candidates: list[Path] = []
    if config.run is not None:
        candidates.append(Path(config.run))
    else:
        for key in RUN_KEYS:
            value = metadata.provenance.get(key)
            if isinstance(value, str) and value:
                candidates.append(Path(value))
    for candidate in candidates:
        if candidate.suffix == ".keras" and candidate.is_file():
            return candidate.parent, candidate
        if (candidate / "model.keras").is_file():
            return candidate, candidate / "model.keras"
    if config.run is not None:
        raise ModelError("no model.keras here (expected a run folder or a .keras file)", config.run)
    return (candidates[0] if candidates and candidates[0].is_dir() else None), None


def resolve_subject(config: BenchConfig) -> Subject:
    path = config.model
    if not path.exists():
        raise ModelError("no such bundle or model file", path)
    if path.is_dir():
        bundle_dir: Path | None = path
        metadata = BundleMetadata.read(path)
        # Pre-optimised twins (model_int8.ort.onnx) are the same model: the backend loads one in place of its
        # source where it fits this machine, so they are not timed separately.
        files = [(name, entry.format, entry.precision) for name, entry in metadata.models.items()
                 if not is_optimized_name(name)]
    else:
        if (path.parent / METADATA_FILE).is_file():
            bundle_dir, metadata = path.parent, BundleMetadata.read(path.parent)
        elif path.suffix.lower() == ".onnx":
            from tumor_edge.runtime.classifier import read_onnx_metadata

            bundle_dir, metadata = None, read_onnx_metadata(path)
        else:
            raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)
        entry = metadata.models.get(path.name)
        fmt = entry.format if entry else path.suffix.lstrip(".").lower()
        files = [(path.name, fmt, entry.precision if entry else "fp32")]
    base = path if path.is_dir() else path.parent
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    taken: set[str] = set()
    for name, fmt, precision in files:
        file = base / name
        key = _key(fmt, precision, taken, name)
        taken.add(key)
        if not file.is_file():
            raise ModelError(f"bundle lists {name} but the file is missing", base)
        missing = engine_missing(file)
        if missing:
            skipped.append({"format": key, "file": name, "reason": missing})
            continue
        targets.append(target_for(key, file, precision))
    run_dir, keras_file = _find_run(config, metadata)
    if config.keras:
        if keras_file is None:
            skipped.append({"format": KERAS_KEY, "file": "model.keras",
                            "reason": "the training run is not at hand (pass --run RUN)"})
        elif engine_missing(keras_file):
            skipped.append({"format": KERAS_KEY, "file": keras_file.name, "reason": engine_missing(keras_file)})
        else:
            targets.insert(0, target_for(KERAS_KEY, keras_file, "fp32"))
    if config.formats is not None:
        available = {t.key for t in targets} | {s["format"] for s in skipped}
        unknown = [f for f in config.formats if f not in available]
        if unknown:
            raise ModelError(f"format(s) {', '.join(unknown)} not in this bundle; it has "
                             f"{', '.join(sorted(available))}", path)
        targets = [t for t in targets if t.key in config.formats]
        skipped = [s for s in skipped if s["format"] in config.formats]
    if not targets:
        raise ModelError("nothing to benchmark here: " + "; ".join(f"{s['format']}: {s['reason']}"
                                                                     for s in skipped), path)
    return Subject(metadata, bundle_dir, targets, run_dir, skipped)


def _image_pool(config: BenchConfig, subject: Subject) -> ImagePool:
    spec = subject.metadata.preprocessing
    if config.images is not None:
        return pool_from_folder(config.images, spec, config.image_count)
    if subject.run_dir is not None:
        pool = pool_from_run(subject.run_dir, spec, config.image_count)
        if pool is not None:
            return pool
    return synthetic_pool(spec, config.image_count)


def _macs(subject: Subject) -> int | None:
    """MACs per image from the bundle's fp32 ONNX (else any ONNX); all formats share the architecture."""
    onnx_targets = sorted((t for t in subject.targets if t.path.suffix == ".onnx"),
                          key=lambda t: t.precision != "fp32")
    if not onnx_targets and subject.bundle_dir is not None:
        onnx_targets = [target_for("onnx", p, "?") for p in sorted(subject.bundle_dir.glob("*.onnx"))]
    for target in onnx_targets:
        macs = count_macs(target.path)
        if macs:
            return macs
    return None


def _open_sessions(subject: Subject, threads: int, inputs, classes: int, workdir: Path) -> dict[str, Session]:
    """Every target opened at this thread count; one that fails to open is reported and left out."""
    sessions: dict[str, Session] = {}
    for target in subject.targets:
        try:
            sessions[target.key] = open_session(target, threads, inputs, classes, workdir)
        except RuntimeError as err:  # a worker process failed (TensorFlow missing pieces, out of memory)
            subject.skipped.append({"format": target.key, "file": target.path.name, "reason": str(err)})
    return sessions


def _row(target: Target, session: Session, threads: int, batch: int, timings: list[float]) -> dict[str, Any]:
    stats = summarize(timings, batch)
    return {"format": target.key, "file": target.path.name, "loaded_file": session.loaded_file,
            "engine": target.engine, "precision": target.precision, "threads": threads, "batch": batch,
            "load_s": session.load_s, **stats.to_dict(), "timings_ms": [t * 1e3 for t in timings]}


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Benchmark a bundle; returns the JSON-ready record (see README's bench section for the fields)."""
    started = time.perf_counter()
    subject = resolve_subject(config)
    machine = machine_info()
    classes = len(subject.metadata.classes)
    pool = _image_pool(config, subject)
    inputs = pool.model_inputs(subject.metadata.preprocessing)
    passes = [measure_ceiling(t) for t in config.threads] if config.ceiling else []
    macs = _macs(subject)
    rows: list[dict[str, Any]] = []
    cold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tumor-edge-bench-") as tmp:
        workdir = Path(tmp)
        steps = [(threads, batch) for threads in config.threads for batch in config.batches]
        bar = iter(progress(steps, "benchmarking", enabled=config.show_progress))
        for threads in config.threads:
            sessions = _open_sessions(subject, threads, inputs, classes, workdir)
            try:
                for batch in config.batches:
                    next(bar, None)
                    for session in sessions.values():
                        session.prepare(batch)
                    timings = measure_interleaved({k: s.timed_call for k, s in sessions.items()}, config.plan)
                    for key, session in sessions.items():
                        rows.append(_row(subject.by_key[key], session, threads, batch, timings[key]))
            finally:
                for session in sessions.values():
                    session.close()
        next(bar, None)
        if config.cold_start:
            probe = write_probe_image(pool, workdir)
            cold_targets = [t for t in subject.targets if t.key not in {s["format"] for s in subject.skipped}]
            for target in progress(cold_targets, "cold starts", enabled=config.show_progress):
                try:
                    runs = min(config.cold_runs, config.keras_cold_runs) if target.engine == KERAS_KEY \
                        else config.cold_runs
                    result = measure_cold_start(target.key, target.path, probe, runs,
                                                threads=max(config.threads),
                                                bundle=subject.bundle_dir if target.engine == KERAS_KEY else None)
                    cold.append(result.to_dict())
                except (RuntimeError, TumorEdgeError) as err:
                    subject.skipped.append({"format": target.key, "file": target.path.name,
                                            "reason": f"cold start: {err}"})
    if config.ceiling:  # again after the formats: the best of both passes is the ceiling
        passes += [measure_ceiling(t) for t in config.threads]
    ceilings = merge_ceilings(passes)
    add_ratios(rows)
    add_rates(rows, macs, {c.threads: c.best_gmacs for c in ceilings})
    goal_threads = max(config.threads)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tumor_edge_version": __version__,
        "machine": machine,
        "load_average_end": load_average(),
        "settings": {"threads": config.threads, "batches": config.batches, **asdict(config.plan),
                     "image_count": config.image_count, "cold_runs": config.cold_runs,
                     "keras_cold_runs": min(config.cold_runs, config.keras_cold_runs),
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
        "ceiling": [c.to_dict() for c in ceilings],
        "ceiling_passes": [c.to_dict() for c in passes],
        "results": rows,
        "cold_start": cold,
        "goals": check_goals(rows, goal_threads, 1, macs,
                             next((c.best_gmacs for c in ceilings if c.threads == goal_threads), None)),
        "skipped": subject.skipped,
        "duration_s": time.perf_counter() - started,
    }
