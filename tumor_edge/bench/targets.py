"""What gets timed: each file of a bundle through the runtime, and the Keras model as the reference.

A registry keyed by engine kind: runtime files are timed in this process through `open_backend` (exactly what
`classify` runs), the Keras reference in a TensorFlow child process (keras_worker), so the harness itself never
imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumor_edge.bench.inputs import make_batches
from tumor_edge.bench.timing import RunPlan, measure
from tumor_edge.errors import ModelError
from tumor_edge.runtime.backends import BackendOptions, open_backend

KERAS_KEY = "keras"


@dataclass(frozen=True)
class Target:
    key: str  # "onnx-fp32", "tflite-int8", "keras", ...
    path: Path
    engine: str  # "onnxruntime" | "litert" | "keras"
    precision: str


@dataclass
class TargetTiming:
    """Per-call seconds for each batch size at one thread count, and the time to open the model."""

    load_s: float
    timings: dict[int, list[float]] = field(default_factory=dict)
    loaded_file: str | None = None  # what actually ran (onnxruntime may load a pre-optimised twin)


def _check_output(target: Target, out: np.ndarray, batch: int, classes: int) -> None:
    if out.shape != (batch, classes) or not np.all(np.isfinite(out)):
        raise ModelError(f"unexpected output {out.shape} (finite: {bool(np.all(np.isfinite(out)))}); "
                         f"expected ({batch}, {classes})", target.path)


def time_runtime(target: Target, threads: int, inputs: np.ndarray, batches: list[int], plan: RunPlan,
                 classes: int, workdir: Path) -> TargetTiming:
    start = time.perf_counter()
    backend = open_backend(target.path, BackendOptions(threads=threads))
    result = TargetTiming(time.perf_counter() - start,
                          loaded_file=Path(getattr(backend, "loaded_path", target.path)).name)
    for b in batches:
        feeds = make_batches(inputs, b)
        _check_output(target, backend.run(feeds[0]), b, classes)
        result.timings[b] = measure(lambda i, fs=feeds: backend.run(fs[i % len(fs)]), plan)
    return result


def time_keras(target: Target, threads: int, inputs: np.ndarray, batches: list[int], plan: RunPlan,
               classes: int, workdir: Path) -> TargetTiming:
    from tumor_edge.bench.keras_worker import KerasSpec, run_keras_reference

    inputs_path = workdir / "inputs.npy"
    if not inputs_path.is_file():
        np.save(inputs_path, inputs)
    out = Path(tempfile.mkstemp(suffix=".json", dir=workdir)[1])
    out.unlink()
    data = run_keras_reference(KerasSpec(str(target.path), str(inputs_path), threads, list(batches), plan.warmup,
                                         plan.min_runs, plan.min_seconds, str(out)))
    if data["output_shape"][-1:] != [classes]:
        raise ModelError(f"Keras model gives output {data['output_shape']}, expected {classes} classes",
                         target.path)
    return TargetTiming(data["load_s"], data["timings"], target.path.name)


TIMERS: dict[str, Callable[..., TargetTiming]] = {
    "onnxruntime": time_runtime,
    "litert": time_runtime,
    KERAS_KEY: time_keras,
}

# Which engine runs each file suffix, and which Python package it needs (None: always installed).
ENGINE_BY_SUFFIX: dict[str, tuple[str, str | None]] = {
    ".onnx": ("onnxruntime", None),
    ".tflite": ("litert", "ai_edge_litert"),
    ".keras": (KERAS_KEY, "tensorflow"),
}


def engine_missing(path: Path) -> str | None:
    """Why this file cannot be timed here (its engine is not installed), or None."""
    engine, module = ENGINE_BY_SUFFIX.get(path.suffix.lower(), (None, None))
    if engine is None:
        return f"no engine for {path.suffix!r} files"
    if module and importlib.util.find_spec(module) is None:
        hint = {"ai_edge_litert": "pip install 'tumor-edge[tflite]'",
                "tensorflow": "pip install 'tumor-edge[train]'"}[module]
        return f"{module} is not installed ({hint})"
    return None


def target_for(key: str, path: Path, precision: str) -> Target:
    engine, _ = ENGINE_BY_SUFFIX[path.suffix.lower()]
    return Target(key, path, engine, precision)
