"""Classification metrics shared by training evaluation and export parity (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[list[float | None], float | None]:
    """Per-class one-vs-rest ROC AUC (None where a class has no positives or no negatives) and their mean."""
    from sklearn.metrics import roc_auc_score

    per_class: list[float | None] = []
    for k in range(n_classes):
        positives = y_true == k
        defined = positives.any() and not positives.all()  # both positives and negatives
        per_class.append(float(roc_auc_score(positives.astype(int), probs[:, k])) if defined else None)
    valid = [a for a in per_class if a is not None]
    return per_class, (float(np.mean(valid)) if valid else None)


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/AUC, confusion matrix and macro one-vs-rest AUC; `probs[i]` must
    belong to `y_true[i]` (a shuffled order gives chance-level curves)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0] or probs.shape[1] != len(classes):
        raise ValueError(f"probabilities of shape {probs.shape} do not fit {len(y_true)} labels "
                         f"over {len(classes)} classes")
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    auc_per_class, macro_auc = one_vs_rest_auc(y_true, probs, len(classes))
    per_class = {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
               "support": int(support[k]), "auc": auc_per_class[k]}
        for k, name in enumerate(classes)
    }
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_auc": macro_auc,
        "macro_f1": float(np.mean(f1)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }
