"""What gets timed: each file of a bundle through the runtime's open stage (`Classifier.from_bundle`, as `classify`
opens it), and the Keras reference in a TensorFlow worker process, so the harness never imports TensorFlow. Both give
the same session interface, so the harness can interleave their runs.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_edge.bench.inputs import make_batches
from tumor_edge.contracts.formats import ENGINES, engine_for_suffix
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.worker import Worker

KERAS_KEY = "keras"
KERAS_SUFFIX = ".keras"
KERAS_WORKER = "tumor_edge.bench.keras_worker"  # the worker's side, imported only there


@dataclass(frozen=True)
class Target:
    key: str  # "onnx-fp32", "tflite-int8", "keras", ...
    path: Path
    engine: str  # a format-table engine ("onnxruntime", "litert", ...) or "keras"
    precision: str


def _check_output(target: Target, shape: tuple[int, ...], finite: bool, batch: int, classes: int) -> None:
    if tuple(shape) != (batch, classes) or not finite:
        raise ModelError(f"unexpected output {tuple(shape)} (finite: {finite}); expected ({batch}, {classes})",
                         target.path)


class RuntimeSession:
    """A bundle file through the device runtime, in this process. Each session gives `load_s` (opening, warm),
    `loaded_file`, `prepare(batch)` (build the batches, run one, check the output), `timed_call(i)` (batch i's
    seconds) and `close()`."""

    def __init__(self, target: Target, threads: int, inputs: np.ndarray, classes: int, workdir: Path):
        self.target, self.inputs, self.classes = target, inputs, classes
        start = time.perf_counter()
        # through the open stage, as classify opens it: the listed sha256 and any trust setting bind the bytes timed
        self.backend = Classifier.from_bundle(target.path, options=BackendOptions(threads=threads)).backend
        self.load_s = time.perf_counter() - start
        self.loaded_file = self.backend.loaded_path.name
        self.feeds: list[np.ndarray] = []

    def prepare(self, batch: int) -> None:
        self.feeds = make_batches(self.inputs, batch)
        out = self.backend.run(self.feeds[0])[0]  # backends return every output; the class scores come first
        _check_output(self.target, out.shape, bool(np.all(np.isfinite(out))), batch, self.classes)

    def timed_call(self, i: int) -> float:
        x = self.feeds[i % len(self.feeds)]
        start = time.perf_counter_ns()
        self.backend.run(x)
        return (time.perf_counter_ns() - start) / 1e9

    def close(self) -> None:
        self.backend = None


class KerasReferenceSession:
    """The Keras model in a worker process of its own (tumor_edge.worker), one per thread count: TensorFlow fixes
    its thread pools when it starts, and stays out of the harness. A worker that fails to start or load is a
    RuntimeError naming the model."""

    def __init__(self, target: Target, threads: int, inputs: np.ndarray, classes: int, workdir: Path):
        self.target, self.classes = target, classes
        inputs_path = workdir / "inputs.npy"
        if not inputs_path.is_file():
            np.save(inputs_path, inputs)
        self.worker = Worker(f"keras reference ({threads} threads)", env={"TF_CPP_MIN_LOG_LEVEL": "2"})
        try:
            self.load_s = float(self.worker.call(f"{KERAS_WORKER}:_load", str(target.path), str(inputs_path),
                                                 threads, name="load"))
        except Exception as err:
            self.worker.close(kill=True)
            raise RuntimeError(f"Keras reference worker for {target.path} stopped: {first_line(err)}") from None
        self.loaded_file = target.path.name

    def prepare(self, batch: int) -> None:
        shape = tuple(self.worker.call(f"{KERAS_WORKER}:_prepare", batch, name="prepare"))
        _check_output(self.target, shape, True, batch, self.classes)

    def timed_call(self, i: int) -> float:
        return float(self.worker.call(f"{KERAS_WORKER}:_run", i, name="run"))

    def close(self) -> None:
        self.worker.close()


Session = RuntimeSession | KerasReferenceSession  # one target opened at one thread count


# The Keras reference is no engine of the format table (no bundle holds it): bench's own row.
KERAS_PACKAGE = ("tensorflow", "pip install 'tumor-edge[train]'")


def engine_of(path: Path) -> str | None:
    """The engine that runs this file: the format table's, by suffix, or the Keras reference for .keras."""
    if path.suffix.lower() == KERAS_SUFFIX:
        return KERAS_KEY
    return engine_for_suffix(path.suffix)


def _required_module(engine: str) -> tuple[str | None, str]:
    """The module an engine needs beyond the runtime's own, and how to install it (the format table's row)."""
    if engine == KERAS_KEY:
        return KERAS_PACKAGE
    row = ENGINES[engine]
    return row.module, row.install_hint()


def engine_missing(path: Path) -> str | None:
    """Why this file cannot be timed here (no engine runs it, or its engine is not installed), or None."""
    engine = engine_of(path)
    if engine is None:
        return f"no engine for {path.suffix!r} files"
    module, hint = _required_module(engine)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({hint})"
    return None


def open_session(target: Target, threads: int, inputs: np.ndarray, classes: int, workdir: Path) -> Session:
    """The Keras reference in its worker, any engine of the format table through the runtime, here."""
    kind = KerasReferenceSession if target.engine == KERAS_KEY else RuntimeSession
    return kind(target, threads, inputs, classes, workdir)
