"""PNG pictures of a run: ROC curves, confusion matrix, training curves (matplotlib, headless)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tumor_edge.calibration.plots import pyplot


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """One-vs-rest ROC per class; each curve uses the probability column of its own class on aligned rows."""
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for k, name in enumerate(classes):
        positives = (np.asarray(y_true) == k).astype(int)
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title=title or "One-vs-rest ROC (test split)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    plt = pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix (test split)")
    return _save(plt, fig, path)


def _number(text: str | None) -> float:
    """A CSVLogger cell; Keras writes "NA" for a metric an epoch did not log (e.g. one phase without validation)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def plot_history(history_csv: Path, path: Path) -> Path | None:
    """Loss, accuracy and AUC per epoch, training against validation, from Keras' CSV log."""
    if not history_csv.is_file():
        return None
    with open(history_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    plt = pyplot()
    epochs = [int(r["epoch"]) + 1 for r in rows]
    metrics = [m for m in ("loss", "accuracy", "auc") if m in rows[0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if key in rows[0]:
                ax.plot(epochs, [_number(r.get(key)) for r in rows], style, marker="o", ms=3,
                        label="validation" if prefix else "training")
        ax.set(title=metric, xlabel="epoch")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)
