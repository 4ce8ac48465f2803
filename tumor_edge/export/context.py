"""`ExportContext`: what the converters share (the source, the folders, the images, the rows done so far).

It is plain data that pickles, so a converter runs the same in this process or in another (tumor_edge.worker).
Everything expensive that several converters use (the SavedModel, the calibration and validation pixels) is made
once, on disk, under the export's work folder, behind a lock file: two converters never build the same thing
twice or read a half-written file.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.formats import BY_KEY, ModelFormat
from tumor_edge.data.dataset import load_pixels
from tumor_edge.errors import DatasetError, ModelError
from tumor_edge.export.config import ExportConfig
from tumor_edge.export.parity import keras_probabilities
from tumor_edge.export.samples import SampleSet, stratified_subset
from tumor_edge.export.source import SAVED_MODEL_FILE, ModelSource, load_source
from tumor_edge.export.tflite_export import export_saved_model
from tumor_edge.runtime import scale


@dataclass
class ExportedFile:
    """One row of the export: a table format and what became of it."""

    key: str  # the format table's key ("onnx-int8")
    file: str
    format: str
    precision: str
    engine: str  # what runs it on a device ("onnxruntime", "litert")
    seconds: float = 0.0
    status: str = "ok"  # "ok" or "failed: <reason>"
    extra: dict[str, Any] = field(default_factory=dict)  # the converter's facts, for metadata

    @classmethod
    def of(cls, fmt: ModelFormat) -> ExportedFile:
        return cls(fmt.key, fmt.file, fmt.format, fmt.precision, fmt.engine)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Pixels:
    """Decoded images (uint8 NHWC, read-only memory map) and their labels."""

    pixels: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ExportContext:
    config: ExportConfig
    source: ModelSource
    out: Path
    work: Path
    results: dict[str, ExportedFile] = field(default_factory=dict)  # table key -> row, rows done so far

    @property
    def spec(self):
        """The preprocessing the bundle declares (and the converters calibrate with)."""
        return self.source.preprocessing

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def model(self):
        """The Keras model the converters convert (ModelSource.converted_model, loaded once per process)."""
        return kept(self.source).converted_model

    @property
    def keras_model(self):
        """The single-output Keras model: the float reference the int8 files are scored against."""
        return kept(self.source).model

    def needs_ok(self, key: str) -> Path:
        """The path of the file another row made; a ModelError when that row failed or was not asked for."""
        done = self.results.get(key)
        if done is None or not done.ok:
            raise ModelError(f"needs {BY_KEY[key].file if key in BY_KEY else key}, which was not exported")
        return self.out / done.file

    # ------------------------------------------------------------------- made once, shared through the disk

    def saved_model(self) -> Path:
        """The SavedModel every TFLite row converts from."""
        path = self.work / "saved_model"
        with _made_once(path):
            if not (path / SAVED_MODEL_FILE).is_file():
                export_saved_model(self.model, path)
        return path

    def calibration(self) -> Pixels:
        """Training-split pixels (stratified subset), decoded by the runtime's code at the bundle's size."""
        if not self.source.calibration:
            raise DatasetError("no calibration images")
        return self._pixels("calibration", self.source.calibration, self.config.calib_count)

    def validation(self) -> Pixels | None:
        """Validation-split pixels the int8 calibration methods are compared on; None without a validation split."""
        if not self.source.validation:
            return None
        return self._pixels("validation", self.source.validation, self.config.select_count)

    def _pixels(self, name: str, images: SampleSet, count: int) -> Pixels:
        path, labels = self.work / f"{name}_pixels.npy", self.work / f"{name}_labels.npy"
        with _made_once(path):
            if not path.is_file():
                loaded = load_pixels(stratified_subset(images.samples, count, self.config.seed), self.spec,
                                     f"loading {name} images", show_progress=self.config.show_progress)
                if len(loaded.labels) == 0:
                    raise DatasetError(f"no readable {name} images ({images.origin})")
                np.save(labels, loaded.labels)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, loaded.pixels)
                tmp.replace(path)
        return Pixels(np.load(path, mmap_mode="r"), np.load(labels))


# ---------------------------------------------------------------- the model, loaded once per process

# The source this process has loaded the model of (at most one). A source pickles without its model, so every
# job reaching the TensorFlow worker brings a model-less copy; `kept` hands it the loaded one instead.
_KEPT: dict[tuple[str, str], ModelSource] = {}


def kept(source: ModelSource) -> ModelSource:
    """This process's loaded twin of `source` (same path and sha256), else `source`, kept from now on."""
    key = (str(source.path), source.sha256)
    if key not in _KEPT:
        _KEPT.clear()
        _KEPT[key] = source
    return _KEPT[key]


def forget_models() -> None:
    """Drop the kept model (an in-process export calls it at its end)."""
    _KEPT.clear()


def load_and_keep(config: ExportConfig) -> ModelSource:
    """`load_source` in the process that will convert: the loaded model stays here for the jobs that follow."""
    return kept(load_source(config))


def keras_outputs(source: ModelSource, samples, reference_spec, heatmap_spec) -> dict[str, Any]:
    """The Keras model's test-set outputs for parity, computed where the model is loaded: probabilities (and ms
    per image) on the pixels parity decodes with `reference_spec`, and the heatmaps on those `heatmap_spec`
    decodes (None: no heatmap output). Each comes with a digest of its pixels, so the parent can check it is
    comparing the same images it decoded itself."""

    model = kept(source)
    out: dict[str, Any] = {}
    loaded = load_pixels(samples, reference_spec, "keras reference: loading test images", show_progress=False)
    if len(loaded.labels):
        keras_probabilities(model.model, np.asarray(loaded.pixels[:1]), reference_spec)  # warm-up: tracing
        t0 = time.perf_counter()
        probs = keras_probabilities(model.model, loaded.pixels, reference_spec)
        out["reference"] = (probs, 1000.0 * (time.perf_counter() - t0) / len(loaded.labels))
        out["reference_digest"] = pixels_digest(loaded.pixels)
    if heatmap_spec is not None:
        pixels = loaded.pixels if heatmap_spec == reference_spec else load_pixels(
            samples, heatmap_spec, "keras heatmaps: loading test images", show_progress=False).pixels
        converted = model.converted_model
        maps = [np.asarray(converted.predict(scale(np.asarray(pixels[s:s + 16]), reference_spec), verbose=0)[1],
                           np.float32) for s in range(0, len(pixels), 16)]
        out["heatmaps"] = np.concatenate(maps) if maps else np.zeros((0,), np.float32)
        out["heatmaps_digest"] = pixels_digest(pixels)
    return out


def pixels_digest(pixels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() + str(tuple(pixels.shape))


@contextlib.contextmanager
def _made_once(path: Path):
    """An exclusive lock beside `path` for as long as the block makes (or finds) it."""
    lock = path.with_name(path.name + ".lock")
    try:
        import fcntl
    except ImportError:  # Windows: converters there run one at a time (no background rows overlap)
        yield
        return
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
