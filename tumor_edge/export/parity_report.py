"""The parity report: the table export prints, parity.json and parity.md (file names from contracts.bundle)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import PARITY_JSON, PARITY_MD, RELIABILITY_PNG
from tumor_edge.export.parity import ParityReport

TABLE_COLUMNS = ("format", "file", "size MB", "accuracy", "macro AUC", "Δ acc (pts)", "Δ AUC", "agreement",
                 "max |Δp|", "ms/img", "status")


def table_rows(report: ParityReport | None, keras_row: dict[str, Any] | None,
               entries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of the final table: Keras first, then each exported file (parity columns '-' when not run)."""
    def fmt(value, spec, none="-"):
        return none if value is None else format(value, spec)

    rows = []
    if keras_row is not None:
        rows.append([keras_row["label"], keras_row["file"], _megabytes(keras_row["size_bytes"]),
                     fmt(keras_row["accuracy"], ".4f"), fmt(keras_row["macro_auc"], ".4f"), "-", "-", "-",
                     "-", fmt(keras_row["ms_per_image"], ".1f"), "reference"])
    by_file = {f.file: f for f in report.files} if report else {}
    for entry in entries:
        f = by_file.get(entry["file"])
        label = f"{entry['format']} {entry['precision']}"
        size = _megabytes(entry["size_bytes"])
        if f is None:
            rows.append([label, entry["file"], size] + ["-"] * 7 + [entry.get("status", "not checked")])
            continue
        status = {"pass": "pass", "fail": "FAIL"}.get(f.verdict, f.verdict)
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
        f"Verdicts at {100 * t.confidence:g}% confidence (the accuracy drop (b - c)/n by Tango's paired score "
        f"interval; Wilson intervals, paired bootstrap of {t.resamples} resamples for the AUC, exact McNemar): "
        "pass = every tolerance proven; fail = evidence of a breach "
        "(or agreement under the minimum); not proven = the test set is too small to tell.",
        "",
        f"**Result: {report.verdict.upper()}**",
        "",
        "| " + " | ".join(_cell(c) for c in TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    lines += ["", "## Recall per class", "", "| file | " + " | ".join(report.classes) + " |",
              "|" + "---|" * (len(report.classes) + 1)]
    ref = report.reference["per_class"]
    lines.append("| keras | " + " | ".join(f"{ref[c]['recall']:.3f}" for c in report.classes) + " |")
    lines += [f"| {f.file} | " + " | ".join(f"{f.per_class_recall[c]:.3f}" for c in report.classes) + " |"
              for f in report.files if f.per_class_recall]
    lines += _statistics_table(report)
    lines += _calibration_table(report)
    failures = [f for f in report.files if not f.passed]
    if failures:
        lines += ["", "## Failed or not proven", ""]
        for f in failures:
            needed = ""
            if f.verdict == "not proven":
                needed = (f" (about {f.images_needed} test images would prove it at the observed rates)"
                          if f.images_needed else " (no test size would prove it at the observed rates)")
            lines.append(f"- `{f.file}` {f.verdict}: {'; '.join(f.failures)}{needed}")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    """A Markdown table cell: a literal '|' would split it."""
    return str(value).replace("|", "\\|")


def _interval(pair, scale: float = 1.0, spec: str = ".3f") -> str:
    low, high = pair
    return f"[{format(scale * low, spec)}, {format(scale * high, spec)}]"


def _statistics_table(report: ParityReport) -> list[str]:
    pct = f"{100 * report.thresholds.confidence:g}%"
    lines = ["", "## Intervals and tests", "",
             f"| file | verdict | accuracy {pct} (Wilson) | drop pts {pct} (Tango, paired) | "
             f"Δ accuracy pts {pct} (bootstrap) | Δ macro AUC {pct} (bootstrap) | agreement {pct} (Wilson) | "
             "McNemar b/c | McNemar p | images needed |", "|" + "---|" * 10]
    for f in report.files:
        s = f.statistics
        if not s:
            lines.append(f"| {f.file} | {f.verdict} | - | - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {f.file} | {f.verdict} | {_interval(s['accuracy_ci'])} | "
            f"{_interval(s.get('accuracy_drop_ci', (float('nan'),) * 2), 100.0, '+.2f')} | "
            f"{_interval(s['accuracy_diff_ci'], 100.0, '+.2f')} | {_interval(s['macro_auc_diff_ci'], 1.0, '+.4f')} | "
            f"{_interval(s['agreement_ci'])} | {s['ref_right_file_wrong']}/{s['ref_wrong_file_right']} | "
            f"{s['mcnemar_p']:.3g} | {f.images_needed if f.images_needed else '-'} |")
    return lines


def _calibration_table(report: ParityReport) -> list[str]:
    """ECE per file before and after the bundle's temperature (the runtime applies it)."""
    rows = [("keras", report.reference.get("calibration"))] + [(f.file, f.calibration) for f in report.files]
    rows = [(name, c) for name, c in rows if c]
    if not rows:
        return []
    t = report.temperature
    lines = ["", "## Calibration per file", "",
             ("Temperature scaling: T = " + format(t, ".4g") + ", fitted on the validation split; the runtime applies "
              "it." if t is not None else "No calibration temperature recorded: the runtime applies none.")
             + f" Expected calibration error ({rows[0][1]['bins']} bins) on the test images; reliability "
             f"diagrams in `{RELIABILITY_PNG}`.", "",
             "| file | ECE before scaling | ECE after scaling |", "|---|---|---|"]
    lines += [f"| {name} | {100 * c['ece_before']:.2f} % | {100 * c['ece_after']:.2f} % |" for name, c in rows]
    return lines


def write_reliability(bundle: Path, report: ParityReport) -> Path | None:
    """One figure, a row per model (Keras first, then every file that ran): before and after scaling."""
    from tumor_edge.calibration.plots import reliability_grid

    rows = [(f.file, f.raw_probabilities, report.temperature) for f in report.files
            if f.raw_probabilities is not None]
    if report.labels is None or not len(report.labels) or not rows:
        return None
    if report.reference_raw is not None:
        rows.insert(0, ("keras", report.reference_raw, report.temperature))
    return reliability_grid(rows, report.labels, bundle / RELIABILITY_PNG,
                            title=f"parity: {report.n_images} test images from {report.test_origin}")


def write_reports(bundle: Path, report: ParityReport, rows: Sequence[Sequence[str]]) -> None:
    written = write_reliability(bundle, report)
    data = report.to_dict()
    data["reliability_diagram"] = written.name if written is not None else None
    (bundle / PARITY_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (bundle / PARITY_MD).write_text(render_markdown(report, rows))
