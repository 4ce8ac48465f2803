"""Parity: every exported file, run by the runtime's own code from the test image files, against Keras.

The Keras reference goes through the training pipeline (the runtime's decode/resize via `load_pixels`, the
run's preprocessing, `model.predict`); each exported file goes through `Classifier.from_bundle(...)`
and its streaming prediction path from the file paths (`device_probabilities`), exactly what `classify` does on a
device. A difference in decoding, resizing, colour handling
or scaling between the two therefore shows up here as lost agreement.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import PARITY_MD
from tumor_edge.metrics import classification_metrics
from tumor_edge.runtime.preprocess import Preprocessing, scale


@dataclass
class ParityThresholds:
    """What fails an export (defaults from DESIGN.md)."""

    max_accuracy_drop: float = 1.0  # percentage points below Keras
    max_auc_drop: float = 0.01  # macro one-vs-rest AUC below Keras
    min_agreement: float = 0.99  # top-1 agreement with Keras, for the precisions below
    agreement_precisions: tuple[str, ...] = ("fp32", "fp16")


@dataclass
class FileParity:
    """One exported file's results on the test images, and how they compare with Keras."""

    file: str
    format: str
    precision: str
    size_bytes: int
    accuracy: float = 0.0
    macro_auc: float | None = None
    per_class_recall: dict[str, float] = field(default_factory=dict)
    delta_accuracy_points: float = 0.0
    delta_auc: float | None = None
    agreement: float = 0.0
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    ms_per_image: float = 0.0
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ParityReport:
    test_origin: str
    n_images: int
    skipped: list[str]
    reference: dict[str, Any]
    files: list[FileParity]
    thresholds: ParityThresholds
    classes: list[str]
    batch_size: int

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.files)

    def failure_line(self, bundle: Path) -> str:
        parts = [f"{f.file} {'; '.join(f.failures)}" for f in self.files if not f.passed]
        return (f"parity failed: {' | '.join(parts)} (files kept in {bundle} for inspection; see "
                f"{bundle / PARITY_MD})")

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "test_data": self.test_origin, "n_images": self.n_images,
                "skipped_unreadable": self.skipped, "classes": self.classes, "batch_size": self.batch_size,
                "thresholds": asdict(self.thresholds), "keras": self.reference,
                "files": {f.file: asdict(f) for f in self.files}}

    def summary(self) -> dict[str, Any]:
        """The part metadata.json keeps (per-file numbers, no confusion matrices)."""
        keep = ("accuracy", "macro_auc", "delta_accuracy_points", "delta_auc", "agreement", "max_abs_diff",
                "passed", "failures")
        return {"passed": self.passed, "test_data": self.test_origin, "n_images": self.n_images,
                "thresholds": asdict(self.thresholds),
                "keras": {k: self.reference[k] for k in ("accuracy", "macro_auc")},
                "files": {f.file: {k: getattr(f, k) for k in keep} for f in self.files}}


def device_probabilities(clf, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    """Probabilities for image files through the runtime's streaming prediction path, the one `classify` uses
    (decode, DICOM frame choice, preprocessing, backend): the one place parity calls the runtime.

    A file the runtime cannot read here was readable for the Keras reference, so it is an error, not a skip.
    """
    from tumor_edge.errors import InputImageError

    classes = list(clf.classes)
    rows = []
    for result in clf.iter_predictions(paths, batch_size=batch_size, frames="middle"):
        if not result.ok:
            raise InputImageError(result.message)
        rows.append([result.probabilities[c] for c in classes])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(classes))


def keras_probabilities(model, pixels: np.ndarray, spec: Preprocessing, batch_size: int = 32,
                        chunk: int = 256) -> np.ndarray:
    """The training pipeline's view: uint8 pixels, scaled per the run's preprocessing, `model.predict`."""
    out = [np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)]
    for start in range(0, len(pixels), chunk):
        batch = scale(pixels[start:start + chunk], spec)
        out.append(np.asarray(model.predict(batch, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.concatenate(out)


def _metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    return classification_metrics(labels, probs, classes)


def evaluate_file(bundle: Path, name: str, fmt: str, precision: str, paths: Sequence[Path], labels: np.ndarray,
                  reference: np.ndarray, ref_metrics: dict[str, Any], classes: Sequence[str],
                  thresholds: ParityThresholds, batch_size: int) -> FileParity:
    """Classify the test files with one bundle file through the runtime and compare with Keras."""
    from tumor_edge.errors import TumorEdgeError
    from tumor_edge.runtime.classifier import Classifier

    path = bundle / name
    row = FileParity(name, fmt, precision, path.stat().st_size if path.exists() else 0)
    try:
        clf = Classifier.from_bundle(bundle, model_file=name)
        t0 = time.perf_counter()
        probs = device_probabilities(clf, paths, batch_size)
        row.ms_per_image = 1000.0 * (time.perf_counter() - t0) / max(1, len(paths))
    except TumorEdgeError as err:
        row.passed, row.error = False, str(err)
        row.failures.append(f"could not run: {err}")
        return row
    m = _metrics(labels, probs, classes)
    row.accuracy, row.macro_auc = m["accuracy"], m["macro_auc"]
    row.per_class_recall = {c: v["recall"] for c, v in m["per_class"].items()}
    row.delta_accuracy_points = 100.0 * (row.accuracy - ref_metrics["accuracy"])
    if row.macro_auc is not None and ref_metrics["macro_auc"] is not None:
        row.delta_auc = row.macro_auc - ref_metrics["macro_auc"]
    row.agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    diff = np.abs(probs - reference)
    row.max_abs_diff, row.mean_abs_diff = float(diff.max()), float(diff.mean())
    _judge(row, ref_metrics, thresholds)
    return row


def _judge(row: FileParity, ref: dict[str, Any], t: ParityThresholds) -> None:
    drop = -row.delta_accuracy_points
    if drop > t.max_accuracy_drop + 1e-9:
        row.failures.append(f"accuracy {100 * row.accuracy:.1f}% is {drop:.1f} points below Keras' "
                            f"{100 * ref['accuracy']:.1f}% (limit {t.max_accuracy_drop:g})")
    if row.delta_auc is not None and -row.delta_auc > t.max_auc_drop + 1e-12:
        row.failures.append(f"macro AUC {row.macro_auc:.4f} is {-row.delta_auc:.4f} below Keras' "
                            f"{ref['macro_auc']:.4f} (limit {t.max_auc_drop:g})")
    if row.precision in t.agreement_precisions and row.agreement < t.min_agreement - 1e-12:
        row.failures.append(f"top-1 agreement with Keras {100 * row.agreement:.1f}% is under "
                            f"{100 * t.min_agreement:g}% (max probability difference {row.max_abs_diff:.3f})")
    row.passed = not row.failures


def run_parity(bundle: Path, model, reference_spec: Preprocessing, files: Sequence[tuple[str, str, str]],
               samples, test_origin: str, classes: Sequence[str], thresholds: ParityThresholds,
               batch_size: int = 16, show_progress: bool = True) -> ParityReport:
    """Evaluate Keras and every (file, format, precision) of the bundle on the test samples."""
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.errors import DatasetError
    from tumor_edge.progress import progress

    loaded = load_pixels(samples, reference_spec, "parity: loading test images", show_progress=show_progress)
    if len(loaded.labels) == 0:
        first = loaded.failures[0] if loaded.failures else "no test images"
        raise DatasetError(f"no readable test images ({first})")
    keras_probabilities(model, loaded.pixels[:1], reference_spec)  # warm-up: graph tracing is not latency
    t0 = time.perf_counter()
    reference = keras_probabilities(model, loaded.pixels, reference_spec)
    ref_metrics = _metrics(loaded.labels, reference, classes)
    ref_metrics["ms_per_image"] = 1000.0 * (time.perf_counter() - t0) / len(loaded.labels)
    paths = [s.path for s in loaded.samples]
    rows = [evaluate_file(bundle, name, fmt, precision, paths, loaded.labels, reference, ref_metrics, classes,
                          thresholds, batch_size)
            for name, fmt, precision in progress(files, "parity: exported files", length=len(files),
                                                 enabled=show_progress)]
    return ParityReport(test_origin, len(paths), loaded.failures, ref_metrics, rows, thresholds, list(classes),
                        batch_size)
