"""`ExportContext`: what the converters share (the source, the folders, the images, the rows done so far).

It is plain data that pickles, so a converter runs the same in this process or in a child process of its own
(export/isolate.py). Everything expensive that several converters use is made once, on disk, under the export's
work folder: the SavedModel the TFLite rows convert from, the calibration and validation pixels. A lock file
makes the first process that needs one make it while the others wait, so a background converter and a
foreground one never build the same thing twice or read a half-written file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.formats import BY_KEY, ModelFormat
from tumor_edge.errors import DatasetError, ModelError
from tumor_edge.export.config import ExportConfig
from tumor_edge.export.foreign import SAVED_MODEL_FILE
from tumor_edge.export.samples import stratified_subset
from tumor_edge.export.source import ModelSource


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
        """The Keras model the converters convert (loaded on first use in each process): probabilities first,
        then the heatmap and OOD outputs where the head allows (ModelSource.converted_model)."""
        return self.source.converted_model

    def needs_ok(self, key: str) -> Path:
        """The path of the file another row made; a ModelError when that row failed or was not asked for."""
        done = self.results.get(key)
        if done is None or not done.ok:
            raise ModelError(f"needs {BY_KEY[key].file if key in BY_KEY else key}, which was not exported")
        return self.out / done.file

    # ------------------------------------------------------------------- made once, shared through the disk

    def saved_model(self) -> Path:
        """Keras 3's SavedModel export of the model, which every TFLite row converts from."""
        from tumor_edge.export.tflite_export import export_saved_model

        path = self.work / "saved_model"
        with _made_once(path):
            if not (path / SAVED_MODEL_FILE).is_file():
                export_saved_model(self.model, path)
        return path

    def calibration_file(self) -> Path:
        """Training-split pixels (stratified subset) as .npy, decoded by the runtime's code at the bundle's size."""
        return self._pixels_file("calibration", self._calibration_samples)

    def calibration(self) -> Pixels:
        return self._load(self.calibration_file())

    def validation(self) -> Pixels | None:
        """Validation-split pixels the int8 calibration methods are compared on; None without a validation split."""
        if not self.source.validation:
            return None
        return self._load(self._pixels_file("validation", self._validation_samples))

    def _calibration_samples(self):
        if self.source.calibration is None or not self.source.calibration.samples:
            raise DatasetError("no calibration images")
        return stratified_subset(self.source.calibration.samples, self.config.calib_count, self.config.seed), \
            self.source.calibration.origin

    def _validation_samples(self):
        return stratified_subset(self.source.validation.samples, self.config.select_count, self.config.seed), \
            self.source.validation.origin

    def _pixels_file(self, name: str, samples_of) -> Path:
        from tumor_edge.data.dataset import load_pixels

        path = self.work / f"{name}_pixels.npy"
        with _made_once(path):
            if not path.is_file():
                samples, origin = samples_of()
                loaded = load_pixels(samples, self.spec, f"loading {name} images",
                                     show_progress=self.config.show_progress)
                if len(loaded.labels) == 0:
                    raise DatasetError(f"no readable {name} images ({origin})")
                np.save(path.with_name(f"{name}_labels.npy"), loaded.labels)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, loaded.pixels)
                tmp.replace(path)
        return path

    @staticmethod
    def _load(path: Path) -> Pixels:
        labels = np.load(path.with_name(path.name.replace("_pixels.npy", "_labels.npy")))
        return Pixels(np.load(path, mmap_mode="r"), labels)


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


__all__ = ["ExportContext", "ExportedFile", "Pixels"]
