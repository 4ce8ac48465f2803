"""What gets timed: the bundle's files keyed by the format table (a new row there is a new benchmark row), and the
training run's Keras model as the reference. Each file runs through the runtime's open stage
(`Classifier.from_bundle`, as `classify` opens it), the Keras reference in a TensorFlow worker process, so the
harness never imports TensorFlow. Both give the same session interface, so the harness can interleave their runs.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumor_edge.bench.inputs import make_batches
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, member_path
from tumor_edge.contracts.formats import ENGINES, engine_for_suffix, format_of
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.errors import ModelError, first_line
from tumor_edge.runtime import BackendOptions, Classifier, read_onnx_metadata
from tumor_edge.worker import Worker

KERAS_KEY = "keras"
KERAS_SUFFIX = ".keras"
KERAS_WORKER = "tumor_edge.bench.coldstart"  # the worker's side of the Keras reference


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


def engine_missing(path: Path) -> str | None:
    """Why this file cannot be timed here (no engine runs it, or its engine is not installed), or None."""
    engine = engine_of(path)
    if engine is None:
        return f"no engine for {path.suffix!r} files"
    # the module an engine needs beyond the runtime's own, and how to install it (the format table's row)
    module, hint = KERAS_PACKAGE if engine == KERAS_KEY else (ENGINES[engine].module, ENGINES[engine].install_hint())
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed ({hint})"
    return None


def open_session(target: Target, threads: int, inputs: np.ndarray, classes: int, workdir: Path) -> Session:
    """The Keras reference in its worker, any engine of the format table through the runtime, here."""
    kind = KerasReferenceSession if target.engine == KERAS_KEY else RuntimeSession
    return kind(target, threads, inputs, classes, workdir)


# The provenance key under which export records the training run folder.
RUN_KEY = "run_dir"
# The file name of a run's Keras model, as the run-folder contract defines it.
KERAS_FILE = RunFolder(Path()).model.name
ONNX_ENGINE = "onnxruntime"


@dataclass
class Subject:
    """The bundle being benchmarked, resolved: metadata, the files to time, and the Keras reference."""

    metadata: BundleMetadata
    bundle_dir: Path | None
    targets: list[Target]
    run_dir: Path | None
    skipped: list[dict[str, str]]


def format_key(name: str, fmt: str, precision: str, taken: set[str]) -> str:
    """The format table's key for a bundle file ("onnx-int8"); a file the table does not know is named by its
    container and precision, and a second file of the same key by its file name too."""
    row = format_of(name)
    key = row.key if row is not None else f"{fmt}-{precision}"
    return key if key not in taken else f"{key}:{name}"


def find_run(run: Path | None, metadata: BundleMetadata) -> tuple[Path | None, Path | None]:
    """(run folder or None, its Keras model or None) from `run` (a run folder or its model file) or the
    bundle's provenance."""
    recorded = metadata.provenance.get(RUN_KEY)
    candidate = Path(run) if run is not None else Path(recorded) if isinstance(recorded, str) and recorded else None
    if candidate is not None:
        if candidate.name == KERAS_FILE and candidate.is_file():
            return candidate.parent, candidate
        folder = RunFolder(candidate)
        if folder.model.is_file():
            return folder.path, folder.model
    if run is not None:
        raise ModelError(f"no {KERAS_FILE} here (expected a run folder or its {KERAS_FILE})", run)
    return (candidate if candidate is not None and candidate.is_dir() else None), None


def _bundle_files(path: Path) -> tuple[Path | None, BundleMetadata, list[tuple[str, str, str]]]:
    """(bundle folder, metadata, [(file name, container, precision)]) for a bundle folder or one of its files."""
    if path.is_dir():
        metadata = BundleMetadata.read(path)
        return path, metadata, [(name, e.format, e.precision) for name, e in metadata.models.items()]
    if (path.parent / METADATA_FILE).is_file():
        bundle_dir, metadata = path.parent, BundleMetadata.read(path.parent)
    elif engine_of(path) == ONNX_ENGINE:  # a lone .onnx carries its metadata inside
        bundle_dir, metadata = None, read_onnx_metadata(path)
    else:
        raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)
    entry = metadata.models.get(path.name)
    row = format_of(path.name)
    fmt = entry.format if entry else row.format if row else path.suffix.lstrip(".").lower()
    precision = entry.precision if entry else row.precision if row else "fp32"
    return bundle_dir, metadata, [(path.name, fmt, precision)]


def resolve_subject(model: Path, run: Path | None = None, keras: bool = True,
                    formats: list[str] | None = None) -> Subject:
    """The targets of a benchmark of `model` (a bundle folder, one of its files, or a lone .onnx with embedded
    metadata); formats whose engine is not installed here are listed in `skipped`, not failed."""
    path = Path(model)
    if not path.exists():
        raise ModelError("no such bundle or model file", path)
    bundle_dir, metadata, files = _bundle_files(path)
    base = path if path.is_dir() else path.parent
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    taken: set[str] = set()
    for name, fmt, precision in files:
        file = member_path(base, name) if bundle_dir is not None else path
        key = format_key(name, fmt, precision, taken)
        taken.add(key)
        if not file.is_file():
            raise ModelError(f"bundle lists {name} but the file is missing", base)
        missing = engine_missing(file)
        if missing:
            skipped.append({"format": key, "file": name, "reason": missing})
            continue
        targets.append(Target(key, file, engine_of(file), precision))
    run_dir, keras_file = find_run(run, metadata)
    if keras:
        if keras_file is None:
            skipped.append({"format": KERAS_KEY, "file": KERAS_FILE,
                            "reason": "the training run is not at hand (pass --run RUN)"})
        elif engine_missing(keras_file):
            skipped.append({"format": KERAS_KEY, "file": keras_file.name, "reason": engine_missing(keras_file)})
        else:
            targets.insert(0, Target(KERAS_KEY, keras_file, KERAS_KEY, "fp32"))
    if formats is not None:
        available = {t.key for t in targets} | {s["format"] for s in skipped}
        unknown = [f for f in formats if f not in available]
        if unknown:
            raise ModelError(f"format(s) {', '.join(unknown)} not in this bundle; it has "
                             f"{', '.join(sorted(available))}", path)
        targets = [t for t in targets if t.key in formats]
        skipped = [s for s in skipped if s["format"] in formats]
    if not targets:
        raise ModelError("nothing to benchmark here: " + "; ".join(f"{s['format']}: {s['reason']}"
                                                                     for s in skipped), path)
    return Subject(metadata, bundle_dir, targets, run_dir, skipped)
