"""Parity: every exported file, run by the runtime's own code from the test image files, against Keras.

The Keras reference goes through the training pipeline (the runtime's decode/resize via `load_pixels`, the
run's preprocessing, `model.predict`); each exported file, opened once by the runtime, goes through its streaming
prediction path from the file paths (`Classifier.probabilities_for_files`), exactly what `classify` does on a
device. A difference in decoding, resizing, colour handling or scaling between the two therefore shows up here
as lost agreement.

Calibration per file: the runtime returns temperature-scaled probabilities (the bundle's T); each file's ECE
is measured on those and on the same probabilities with the scaling undone (calibration.undo_temperature), so
the report shows what scaling does for every exported file, int8 included, not only for the Keras model.

`check_files` opens each file once, from its bytes with the bundle's metadata as export holds it in memory (the
sha256 export just computed), for all its checks: parity, heatmap parity, and its reference record for
`tumor-edge verify`; so metadata.json is written once, when everything it records is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.temperature import apply_temperature, ece_before_after, undo_temperature
from tumor_edge.contracts.bundle import PARITY_MD, BundleMetadata, ReferenceSet
from tumor_edge.data.dataset import load_pixels
from tumor_edge.errors import DatasetError, MissingExtraError, TumorEdgeError
from tumor_edge.export.config import ExportConfig, ParityThresholds
from tumor_edge.export.parity_stats import FAIL, NOT_PROVEN, PASS, judge
from tumor_edge.export.reference import add_outputs, new_reference
from tumor_edge.export.trust_outputs import heatmap_correlation
from tumor_edge.metrics import classification_metrics
from tumor_edge.progress import progress
from tumor_edge.runtime import Classifier, Preprocessing, open_backend, scale


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
    verdict: str = PASS  # pass | fail | not proven (export/parity_stats.py)
    failures: list[str] = field(default_factory=list)  # why it failed, or why it is not proven
    images_needed: int | None = None  # for "not proven": test images that would prove it at the observed rates
    statistics: dict[str, Any] = field(default_factory=dict)  # intervals, McNemar
    calibration: dict[str, Any] = field(default_factory=dict)  # ECE before/after the bundle's temperature
    error: str | None = None
    # The file's probabilities before scaling (for the reliability diagram); not part of the JSON report.
    raw_probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS


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
    labels: np.ndarray | None = None  # test labels in file order (for the reliability diagram)
    reference_raw: np.ndarray | None = None  # Keras probabilities before scaling
    temperature: float | None = None  # the bundle's calibration temperature (None: not recorded)

    @property
    def verdict(self) -> str:
        """fail if any file fails, else not proven if any is not proven, else pass."""
        verdicts = {f.verdict for f in self.files}
        return FAIL if FAIL in verdicts else NOT_PROVEN if NOT_PROVEN in verdicts else PASS

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def failure_line(self, bundle: Path) -> str:
        parts = [f"{f.file} {'; '.join(f.failures)}" for f in self.files if f.verdict == self.verdict]
        if self.verdict == FAIL:
            head = "parity failed"
        else:
            needed = [f.images_needed for f in self.files if f.verdict == NOT_PROVEN]
            head = (f"parity not proven on {self.n_images} test images ("
                    + ("no test size would prove it at the observed rates" if None in needed
                       else f"about {max(needed)} would prove it at the observed rates") + ")")
        return f"{head}: {' | '.join(parts)} (files kept in {bundle}; see {bundle / PARITY_MD})"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.verdict, "test_data": self.test_origin,
                "n_images": self.n_images,
                "skipped_unreadable": self.skipped, "classes": self.classes, "batch_size": self.batch_size,
                "thresholds": asdict(self.thresholds), "keras": self.reference,
                "files": {f.file: {**{k: v for k, v in asdict(f).items() if k != "raw_probabilities"},
                                   "passed": f.passed} for f in self.files}}

    def summary(self) -> dict[str, Any]:
        """The part metadata.json keeps (per-file numbers, no confusion matrices)."""
        keep = ("accuracy", "macro_auc", "delta_accuracy_points", "delta_auc", "agreement", "max_abs_diff",
                "passed", "verdict", "failures", "images_needed", "calibration")
        return {"passed": self.passed, "verdict": self.verdict, "test_data": self.test_origin,
                "n_images": self.n_images,
                "thresholds": asdict(self.thresholds),
                "keras": {k: self.reference[k] for k in ("accuracy", "macro_auc")},
                "files": {f.file: {k: getattr(f, k) for k in keep} for f in self.files}}


def keras_probabilities(model, pixels: np.ndarray, spec: Preprocessing, batch_size: int = 32,
                        chunk: int = 256) -> np.ndarray:
    """The training pipeline's view: uint8 pixels, scaled per the run's preprocessing, `model.predict`."""
    out = [np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)]
    for start in range(0, len(pixels), chunk):
        batch = scale(pixels[start:start + chunk], spec)
        out.append(np.asarray(model.predict(batch, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.concatenate(out)


@dataclass
class ParityInputs:
    """The test images every file is compared on (decoded once, with the training pipeline's preprocessing) and
    the Keras reference's probabilities and figures on them."""

    origin: str
    paths: list[Path]
    labels: np.ndarray
    skipped: list[str]  # unreadable for the reference: left out, and reported
    probabilities: np.ndarray  # Keras', temperature-scaled as the bundle's runtime scales them
    metrics: dict[str, Any]
    raw: np.ndarray  # Keras' before scaling
    temperature: float | None


def parity_inputs(reference: Callable[[np.ndarray], tuple[np.ndarray, float]], reference_spec: Preprocessing,
                  samples, origin: str, classes: Sequence[str], temperature: float | None,
                  show_progress: bool = True) -> ParityInputs:
    """Decode the test samples and take the Keras reference on them: `reference(pixels)` gives its probabilities
    and its ms per image; they are scaled by `temperature` (the bundle's), as the runtime scales each file's."""
    loaded = load_pixels(samples, reference_spec, "parity: loading test images", show_progress=show_progress)
    if len(loaded.labels) == 0:
        first = loaded.failures[0] if loaded.failures else "no test images"
        raise DatasetError(f"no readable test images ({first})")
    raw, ms_per_image = reference(loaded.pixels)
    probs = apply_temperature(raw, temperature) if temperature else raw
    metrics = classification_metrics(loaded.labels, probs, classes)
    metrics["ms_per_image"] = ms_per_image
    metrics["calibration"] = ece_before_after(raw, loaded.labels, temperature)
    return ParityInputs(origin, [s.path for s in loaded.samples], np.asarray(loaded.labels), loaded.failures, probs,
                        metrics, raw, temperature)


def evaluate_file(clf, path: Path, fmt: str, precision: str, inputs: ParityInputs, classes: Sequence[str],
                  thresholds: ParityThresholds, batch_size: int) -> FileParity:
    """Classify the test files with one opened bundle file (`clf`, or the error opening it raised) through the
    runtime's streaming path, exactly as `classify` runs them, and compare with Keras. A file the runtime cannot
    read was readable for the reference, so it is a failure, not a skip."""
    row = FileParity(path.name, fmt, precision, path.stat().st_size if path.exists() else 0)
    try:
        if isinstance(clf, BaseException):
            raise clf
        t0 = time.perf_counter()
        probs = clf.probabilities_for_files(inputs.paths, batch_size=batch_size)
        row.ms_per_image = 1000.0 * (time.perf_counter() - t0) / max(1, len(inputs.paths))
    except TumorEdgeError as err:
        row.verdict, row.error = FAIL, str(err)
        row.failures.append(f"could not run: {err}")
        return row
    labels, reference = inputs.labels, inputs.probabilities
    m = classification_metrics(labels, probs, classes)
    row.accuracy, row.macro_auc = m["accuracy"], m["macro_auc"]
    row.per_class_recall = {c: v["recall"] for c, v in m["per_class"].items()}
    row.delta_accuracy_points = 100.0 * (row.accuracy - inputs.metrics["accuracy"])
    if row.macro_auc is not None and inputs.metrics["macro_auc"] is not None:
        row.delta_auc = row.macro_auc - inputs.metrics["macro_auc"]
    row.agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    diff = np.abs(probs - reference)
    row.max_abs_diff, row.mean_abs_diff = float(diff.max()), float(diff.mean())
    row.raw_probabilities = undo_temperature(probs, clf.postprocessing.temperature)
    row.calibration = ece_before_after(row.raw_probabilities, labels, clf.postprocessing.temperature)
    t = thresholds
    stats = judge(labels, reference, probs, len(classes), max_accuracy_drop=t.max_accuracy_drop / 100.0,
                  max_auc_drop=t.max_auc_drop,
                  min_agreement=t.min_agreement if row.precision in t.agreement_precisions else None,
                  confidence=t.confidence, resamples=t.resamples)
    row.verdict, row.failures, row.images_needed = stats.verdict, list(stats.reasons), stats.images_needed
    if row.verdict == FAIL and any("agreement" in r for r in row.failures):
        row.failures.append(f"max probability difference {row.max_abs_diff:.3f}")
    row.statistics = asdict(stats)
    return row


def check_files(out: Path, metadata: BundleMetadata, config: ExportConfig, parity: ParityInputs | None,
                heatmaps: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[list[FileParity], dict[str, float | None] | None, ReferenceSet]:
    """Open each file `metadata.models` lists once and run every check on it (see the module docstring).
    `heatmaps`: the test pixels at the bundle's preprocessing and the Keras model's maps on them. Returns the
    parity rows (empty without parity), each file's mean heatmap correlation (None without heatmap parity) and the
    reference record."""
    files: list[FileParity] = []
    correlations: dict[str, float | None] | None = {} if heatmaps is not None else None
    reference, images = new_reference(metadata)
    entries = list(metadata.models.values())
    for row in progress(entries, "checking exported files", length=len(entries), enabled=config.show_progress):
        path = out / row.file
        try:
            clf = Classifier(open_backend(path), metadata)
        except TumorEdgeError as err:  # parity reports it; verify says the file has no reference
            clf = err
        if parity is not None:
            files.append(evaluate_file(clf, path, row.format, row.precision, parity, metadata.classes,
                                       config.thresholds, config.batch_size))
        if isinstance(clf, BaseException):
            if not isinstance(clf, MissingExtraError) and parity is None:
                raise clf
            continue
        if heatmaps is not None and "heatmap" in clf.output_specs:
            correlations[row.file] = heatmap_correlation(clf, heatmaps[1], heatmaps[0], config.batch_size)
        add_outputs(reference, row.file, clf, images)
    return files, correlations, reference
