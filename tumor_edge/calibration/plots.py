"""What train and export write about calibration: the record a model carries (`fit_calibration`) and reliability
diagram PNGs, accuracy against confidence per bin, before and after temperature scaling (matplotlib, a
training-side extra, is imported inside the writers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.calibration.temperature import (
    DEFAULT_BINS,
    apply_temperature,
    calibration_summary,
    choose_temperature,
    expected_calibration_error,
    reliability_bins,
)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel(ax, probs: np.ndarray, labels: np.ndarray, bins: int, name: str) -> None:
    """Bars are bin accuracy, the diagonal is perfect calibration, the gap between them is what ECE averages."""
    table = reliability_bins(probs, labels, bins)
    centres = (table.edges[:-1] + table.edges[1:]) / 2
    width = 1.0 / bins
    accuracy = np.nan_to_num(table.accuracy)
    ax.bar(centres, accuracy, width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    gap = np.where(table.counts > 0, np.nan_to_num(table.confidence) - accuracy, 0.0)
    ax.bar(centres, gap, bottom=accuracy, width=width, edgecolor="#c44e52", color="#c44e52", alpha=0.35,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ece = expected_calibration_error(probs, labels, bins)
    ax.set_title(f"{name}\nECE {100 * ece:.1f} % ({int(table.counts.sum())} images, {bins} bins)", fontsize=9)
    ax.set_xlabel("confidence (top probability)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def reliability_diagram(scores: np.ndarray, labels: np.ndarray, temperature: float, path: Path,
                        kind: str = "probabilities", bins: int = DEFAULT_BINS, title: str = "") -> Path:
    """Two panels (before, after scaling by `temperature`)."""
    return reliability_grid([("", apply_temperature(scores, 1.0, kind), temperature)], labels, path, bins, title)


def reliability_grid(rows: Sequence[tuple[str, np.ndarray, float | None]], labels: np.ndarray, path: Path,
                     bins: int = DEFAULT_BINS, title: str = "") -> Path:
    """One figure, one row per model (name, raw probabilities, temperature or None): before and after scaling
    side by side, so every exported file's calibration is seen on one page."""
    plt = pyplot()
    height = 3.4 * len(rows) + 0.7  # inches; the top 0.7 hold the title and the notice
    fig, axes = plt.subplots(len(rows), 2, figsize=(9, height), sharey=True, squeeze=False)
    for (name, raw, temperature), pair in zip(rows, axes):
        t = 1.0 if temperature is None else float(temperature)
        prefix = f"{name}: " if name else ""
        _panel(pair[0], np.asarray(raw, np.float64), labels, bins, f"{prefix}before scaling")
        _panel(pair[1], apply_temperature(np.asarray(raw, np.float64), t), labels, bins,
               f"{prefix}after temperature scaling (T = {t:.3g})")
        pair[0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.suptitle((title + "\n" if title else "") + RESEARCH_NOTICE, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def fit_calibration(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray | None,
                    test_labels: np.ndarray | None, reliability_png: Path | None) -> dict[str, Any]:
    """Temperature on validation by the calibration rule (tumor_edge.calibration.temperature: no fit without
    mistakes to fit, none at the range's edge, kept only if it helps held-out images); ECE/NLL before and after
    on validation and (the honest figure) on test. Train fits it on a run's validation split, export on the
    held-back calibration images of a model made elsewhere: one rule for both."""
    choice = choose_temperature(val_probs, val_labels)
    record: dict[str, Any] = {"method": "temperature scaling", "fitted_on": choice.fit.count}
    if choice.out_of_fold_gain is not None:
        record["out_of_fold_nll_gain"] = round(choice.out_of_fold_gain, 6)
    if choice.kept_t1_because:  # keep the model's own confidence, and say why
        record["fitted_temperature"] = choice.fit.temperature
        record["kept_t1_because"] = choice.kept_t1_because
    fit = choice.applied_fit()
    record["temperature"] = fit.temperature
    record["validation"] = calibration_summary(val_probs, val_labels, fit)
    if test_probs is not None and test_labels is not None and len(test_labels):
        record["test"] = calibration_summary(test_probs, test_labels, fit)
        if reliability_png is not None:
            reliability_diagram(test_probs, test_labels, fit.temperature, reliability_png,
                                title=f"test split, n = {len(test_labels)}")
            record["reliability_diagram"] = Path(reliability_png).name
    # The card and the bundle read these at the top level: the test split's when there is one.
    shown = record.get("test", record["validation"])
    record.update({k: shown[k] for k in ("bins", "ece_before", "ece_after", "nll_before", "nll_after")})
    record["ece_measured_on"] = "test" if "test" in record else "validation"
    return record

