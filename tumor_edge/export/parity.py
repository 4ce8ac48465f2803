"""Parity: every exported file, run by the runtime's own code from the test image files, against Keras.

The Keras reference goes through the training pipeline (the runtime's decode/resize via `load_pixels`, the
run's preprocessing, `model.predict`); each exported file goes through `Classifier.from_bundle(...)
.predict_proba_files(paths)`, exactly what a device does. A difference in decoding, resizing, colour handling
or scaling between the two therefore shows up here as lost agreement.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.contracts.bundle import PARITY_JSON, PARITY_MD
from tumor_edge.errors import ParityError
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
    ran: str = ""  # the file onnxruntime actually loaded (a pre-optimised twin, when there is one)
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
        row.ran = Path(getattr(clf.backend, "loaded_path", path)).name
        t0 = time.perf_counter()
        probs = clf.predict_proba_files(paths, batch_size=batch_size)
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


# ---------------------------------------------------------------------------------------------- reports


TABLE_COLUMNS = ("format", "file", "size MB", "accuracy", "macro AUC", "Δ acc (pts)", "Δ AUC", "agreement",
                 "max |Δp|", "ms/img", "status")


def table_rows(report: ParityReport | None, keras_row: dict[str, Any] | None,
               entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of the final table: Keras first, then each exported file (parity columns '-' when not run)."""
    def fmt(value, spec, none="-"):
        return none if value is None else format(value, spec)

    rows = []
    if keras_row is not None:
        size = keras_row.get("size_mb")
        rows.append(["keras", keras_row.get("file", "model.keras"), _megabytes(None if size is None else size * 1e6),
                     fmt(keras_row.get("accuracy"), ".4f"), fmt(keras_row.get("macro_auc"), ".4f"), "-", "-", "-",
                     "-", fmt(keras_row.get("ms_per_image"), ".1f"), "reference"])
    by_file = {f.file: f for f in report.files} if report else {}
    for entry in entries:
        f = by_file.get(entry["file"])
        label = f"{entry['format']} {entry['precision']}"
        size = _megabytes(entry["size_bytes"])
        if f is None:
            rows.append([label, entry["file"], size] + ["-"] * 7 + [entry.get("status", "not checked")])
            continue
        status = "pass" if f.passed else "FAIL"
        rows.append([label, f.file, size, fmt(f.accuracy, ".4f"), fmt(f.macro_auc, ".4f"),
                     fmt(f.delta_accuracy_points, "+.2f"), fmt(f.delta_auc, "+.4f"), fmt(f.agreement, ".4f"),
                     fmt(f.max_abs_diff, ".4f"), fmt(f.ms_per_image, ".1f"), status])
    return rows


def _megabytes(size_bytes: float | None) -> str:
    if size_bytes is None:
        return "-"
    mb = size_bytes / 1e6
    return f"{mb:.1f}" if mb >= 1 else f"{mb:.3f}"


def render_table(rows: Sequence[Sequence[str]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def render_markdown(report: ParityReport, rows: Sequence[Sequence[str]]) -> str:
    t = report.thresholds
    lines = [
        "# Parity report",
        "",
        f"Test images: {report.n_images} from {report.test_origin}"
        + (f" ({len(report.skipped)} unreadable, skipped)" if report.skipped else "") + ".",
        "Keras: the training pipeline (runtime decode/resize, run preprocessing, `model.predict`). Exported "
        "files: the runtime's `Classifier` from the image files (decode, preprocess, onnxruntime / LiteRT), "
        f"batch {report.batch_size}; ms/img includes decoding.",
        "",
        f"Thresholds: accuracy drop at most {t.max_accuracy_drop:g} points, macro AUC drop at most "
        f"{t.max_auc_drop:g}, top-1 agreement at least {100 * t.min_agreement:g}% for "
        f"{'/'.join(t.agreement_precisions)} files.",
        "",
        f"**Result: {'PASS' if report.passed else 'FAIL'}**",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    lines += ["", "## Recall per class", "", "| file | " + " | ".join(report.classes) + " |",
              "|" + "---|" * (len(report.classes) + 1)]
    ref = report.reference["per_class"]
    lines.append("| keras | " + " | ".join(f"{ref[c]['recall']:.3f}" for c in report.classes) + " |")
    for f in report.files:
        if f.per_class_recall:
            lines.append(f"| {f.file} | " + " | ".join(f"{f.per_class_recall[c]:.3f}" for c in report.classes)
                         + " |")
    failures = [f for f in report.files if not f.passed]
    if failures:
        lines += ["", "## Failures", ""] + [f"- `{f.file}`: {'; '.join(f.failures)}" for f in failures]
    return "\n".join(lines) + "\n"


def write_reports(bundle: Path, report: ParityReport, rows: Sequence[Sequence[str]]) -> None:
    (bundle / PARITY_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (bundle / PARITY_MD).write_text(render_markdown(report, rows))


def raise_if_failed(bundle: Path, report: ParityReport) -> None:
    if not report.passed:
        raise ParityError(report.failure_line(bundle))
