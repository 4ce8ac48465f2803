"""The score every model-agnostic method perturbs: a class's log-odds from the runtime's own probabilities.

A confident model's probability sits at 0.9999 whatever one patch of the scan shows, and float32 cannot tell
0.99991 from 0.99992; its log-odds log p_c - log(sum of the other p) keeps moving (the other classes' small
probabilities are summed directly, never as 1 - p_c). Probabilities come from `Classifier.infer_outputs`, so a
calibrated bundle's temperature, an int8 file, a TFLite file or a foreign ONNX model all read the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-12  # a probability of exactly 0 (float32 underflow) is taken as 1e-12, not -inf


def log_odds(probabilities: np.ndarray, class_index: int) -> np.ndarray:
    """(N, classes) probabilities -> (N,) log-odds of `class_index`."""
    probs = np.asarray(probabilities, dtype=np.float64)
    others = np.delete(probs, class_index, axis=1).sum(axis=1)
    return np.log(probs[:, class_index] + _EPS) - np.log(others + _EPS)


def class_scores(classifier: Any, images: np.ndarray, class_index: int, batch_size: int) -> np.ndarray:
    """Log-odds of `class_index` for float32 (N, H, W, 3) images in pixel values (0..255), `batch_size` at a time
    through the classifier's model (its preprocessing scales them: a constant pixel value is a constant in the
    model's input space too)."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(log_odds(classifier.infer_outputs(images[start:start + batch_size])["scores"], class_index))
    return np.concatenate(out) if out else np.zeros(0)


def baseline_value(pixels: np.ndarray, baseline: str | float) -> np.ndarray:
    """What hides a region: "mean" (the scan's mean colour: no new edge or brightness), "black", or a grey level."""
    if baseline == "mean":
        return pixels.reshape(-1, pixels.shape[-1]).mean(axis=0).astype(np.float32)
    if baseline == "black":
        return np.zeros(pixels.shape[-1], np.float32)
    return np.full(pixels.shape[-1], float(baseline), np.float32)
