"""Expected calibration error (Guo et al. 2017): the count-weighted mean gap between accuracy and mean confidence
over equal-width bins of the top probability (15 bins: the paper's convention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tumor_edge.errors import ConfigError

DEFAULT_BINS = 15


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin: how many predictions, their mean confidence and their accuracy (NaN for empty bins)."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ConfigError(f"calibration needs probabilities (N, classes) and N labels, not {probs.shape} and "
                          f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ConfigError(f"labels must be class indices from 0 to {probs.shape[1] - 1}")
    return probs, labels


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> ReliabilityBins:
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 (impossible for a top class) would go to the first.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, accuracy)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE in [0, 1] (0: every bin's accuracy equals its confidence)."""
    table = reliability_bins(probs, labels, bins)
    used = table.counts > 0
    gaps = np.abs(table.accuracy[used] - table.confidence[used])
    return float((gaps * table.counts[used]).sum() / table.counts.sum())
