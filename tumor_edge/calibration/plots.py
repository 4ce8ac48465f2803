"""Reliability diagram PNG: accuracy against confidence per bin, before and after temperature scaling.

matplotlib is imported inside the writer (a training-side extra); nothing else here needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumor_edge import RESEARCH_NOTICE
from tumor_edge.calibration.ece import DEFAULT_BINS, expected_calibration_error, reliability_bins
from tumor_edge.calibration.temperature import apply_temperature


def reliability_diagram(scores: np.ndarray, labels: np.ndarray, temperature: float, path: Path,
                        kind: str = "probabilities", bins: int = DEFAULT_BINS, title: str = "") -> Path:
    """Two panels (before, after scaling by `temperature`); bars are bin accuracy, the diagonal is perfect
    calibration, the gap between them is what ECE averages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("before scaling", apply_temperature(scores, 1.0, kind)),
              (f"after temperature scaling (T = {temperature:.3g})", apply_temperature(scores, temperature, kind)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    for ax, (name, probs) in zip(axes, panels):
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
        ax.set_title(f"{name}\nECE {100 * ece:.1f} % ({int(table.counts.sum())} images, {bins} bins)")
        ax.set_xlabel("confidence (top probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle((title + "\n" if title else "") + RESEARCH_NOTICE, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
