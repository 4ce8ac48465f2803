"""What gets timed: the bundle's files keyed by the format table (a new row there is a new benchmark row), and the
training run's Keras model as the reference. Each file runs through the runtime's open stage
(`Classifier.from_bundle`, as `classify` opens it), the Keras reference in a TensorFlow worker process, so the
harness never imports TensorFlow. Both give the same session interface, so the harness can interleave their runs.

The images they are fed are real preprocessed scans, never zeros, since latency can depend on the values
(denormals, saturating int8 activations): the run's test split or a folder the user names, else synthetic
head-phantom slices (labelled synthetic), all prepared before timing starts.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, member_path
from tumor_edge.contracts.formats import ENGINES, engine_for_suffix, format_of
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.data.dataset import Sample, load_pixels, read_split
from tumor_edge.errors import DatasetError, MissingExtraError, ModelError, TumorEdgeError, first_line
from tumor_edge.runtime import BackendOptions, Classifier, Preprocessing, is_scan_file, read_onnx_metadata
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
        self.loaded_file = self.backend.path.name
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
    return KERAS_KEY if path.suffix.lower() == KERAS_SUFFIX else engine_for_suffix(path.suffix)


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

    def open_sessions(self, threads: int, inputs: np.ndarray, classes: int, workdir: Path) -> dict[str, Session]:
        """Every target opened at this thread count (the Keras reference in its worker, the rest through the
        runtime, here); one that fails to open is reported in `skipped` and left out."""
        sessions: dict[str, Session] = {}
        for target in self.targets:
            kind = KerasReferenceSession if target.engine == KERAS_KEY else RuntimeSession
            try:
                sessions[target.key] = kind(target, threads, inputs, classes, workdir)
            except (RuntimeError, MissingExtraError) as err:  # a worker failed; an engine's package is missing
                self.skipped.append({"format": target.key, "file": target.path.name, "reason": str(err)})
        return sessions


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
        elif missing := engine_missing(keras_file):
            skipped.append({"format": KERAS_KEY, "file": keras_file.name, "reason": missing})
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


# ---- the images fed -------------------------------------------------------------------------------------------


@dataclass
class ImagePool:
    """Decoded, resized uint8 images (N, H, W, 3) and where they came from."""

    pixels: np.ndarray
    source: str
    files: list[Path] = field(default_factory=list)

    def probe_image(self, folder: Path) -> Path:
        """One image file for the cold-start probe: the first real file, else a PNG of the first image."""
        if self.files:
            return self.files[0]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "probe_synthetic.png"
        Image.fromarray(self.pixels[0]).save(path)
        return path


def _round_robin(samples: list, count: int) -> list:
    """Up to `count` samples taking each class in turn, so every class is represented."""
    by_label: dict[int, list] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    rounds = itertools.zip_longest(*(by_label[k] for k in sorted(by_label)))
    return [s for one_round in rounds for s in one_round if s is not None][:count]


def _load(samples: list, spec: Preprocessing, source: str) -> ImagePool:
    loaded = load_pixels(samples, spec, label="loading benchmark images", show_progress=False)
    if len(loaded.samples) == 0:
        raise DatasetError(f"none of the {len(samples)} images could be read ({loaded.failures[:1]})")
    return ImagePool(loaded.pixels, f"{source} ({len(loaded.samples)} images)", [s.path for s in loaded.samples])


def pool_from_run(run_dir: Path, spec: Preprocessing, count: int) -> ImagePool | None:
    """The first `count` images of the run's test split, classes in turn; None when the files are not at hand."""
    run = RunFolder(run_dir)
    if not run.split.is_file():
        return None
    try:
        _, samples = read_split(run.split, "test")
        if not samples or not samples[0].path.exists():  # the dataset moved: the run config knows its root
            root = run.read_config().data_root
            _, samples = read_split(run.split, "test", Path(root)) if root else (None, [])
    except (OSError, KeyError, ValueError, TypeError, TumorEdgeError):
        return None
    samples = [s for s in _round_robin(samples, count) if s.path.is_file()]
    return _load(samples, spec, f"test split of {run_dir}") if samples else None


def pool_from_folder(folder: Path, spec: Preprocessing, count: int) -> ImagePool:
    """Up to `count` scans found under a folder (sorted, recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError("image folder not found", folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_scan_file(p))
    if not files:
        raise DatasetError("no images in this folder", folder)
    step = max(1, len(files) // count)
    return _load([Sample(p, 0) for p in files[::step][:count]], spec, f"images from {folder}")


def phantom_slice(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A synthetic grey head-like slice (skull ring, textured brain, a bright lesion) as uint8 RGB."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.03)
    r = np.hypot((xx - cx) / 0.40, (yy - cy) / 0.46)
    brain = 95 + 30 * np.sin(xx * rng.uniform(15, 30)) * np.cos(yy * rng.uniform(15, 30))
    img = np.where(r < 0.92, brain, np.where(r < 1.0, 200.0, 4.0))
    lx, ly = cx + rng.uniform(-0.2, 0.2), cy + rng.uniform(-0.25, 0.25)
    img = np.where(np.hypot(xx - lx, yy - ly) < rng.uniform(0.04, 0.1), 225.0, img)
    img = img + rng.normal(0, 7, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def image_pool(subject: Subject, images: Path | None, count: int) -> ImagePool:
    """What a benchmark of `subject` feeds: the scans under `images` when given, else the run's test split, else
    synthetic head-phantom slices."""
    spec = subject.metadata.preprocessing
    if images is not None:
        return pool_from_folder(images, spec, count)
    pool = pool_from_run(subject.run_dir, spec, count) if subject.run_dir is not None else None
    if pool is not None:
        return pool
    rng = np.random.default_rng(0)
    pixels = np.stack([phantom_slice(spec.size, rng) for _ in range(count)])
    return ImagePool(pixels, f"synthetic head-phantom slices ({count} images, generated)")


def make_batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Contiguous float32 batches cycling through the pool, so successive runs see different images."""
    n = len(inputs)  # never 0: every pool holds at least one image
    count = max(1, -(-n // batch))
    return [np.ascontiguousarray(inputs[[(j * batch + k) % n for k in range(batch)]], dtype=np.float32)
            for j in range(count)]
