"""Out-of-distribution scores from a model's own class scores, for models made elsewhere with no pooled-feature
output: "logit_energy" (Liu et al. 2020; needs real logits) and "max_probability" (Hendrycks & Gimpel 2017).
Both are "higher = less familiar". `output_score` is the numpy twin of the nodes export adds to the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import DEFAULT_TPR
from tumor_edge.errors import ConfigError

OUTPUT_SCORE_ROLE = "ood_score"
OUTPUT_SCORES: dict[str, str] = {
    "logit_energy": "energy of the logits, -logsumexp(z) (higher: less like the training scans)",
    "max_probability": "negative largest class probability, -max p (higher: less like the training scans)",
}
MIN_FIT_IMAGES = 10


def output_score(scores: np.ndarray, kind: str) -> np.ndarray:
    """(N, classes) logits (logit_energy) or probabilities (max_probability) -> (N,) scores."""
    if kind not in OUTPUT_SCORES:
        raise ConfigError(f"unknown output score {kind!r} (this tumor-edge knows {', '.join(OUTPUT_SCORES)})")
    z = np.asarray(scores, dtype=np.float64)
    if z.ndim != 2:
        raise ConfigError(f"an output score needs class scores of shape (N, classes), not {z.shape}")
    if kind == "max_probability":
        return -z.max(axis=1)
    m = z.max(axis=1)
    return -(m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def fit_output_threshold(values: np.ndarray, kind: str, tpr: float = DEFAULT_TPR) -> dict[str, Any]:
    """The bundle's `ood` record: the threshold that lets `tpr` of these in-distribution scores pass."""
    if kind not in OUTPUT_SCORES:
        raise ConfigError(f"unknown output score {kind!r}")
    if not 0.5 <= tpr < 1.0:
        raise ConfigError(f"the true-positive rate must be from 0.5 to below 1, not {tpr}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < MIN_FIT_IMAGES or not np.all(np.isfinite(values)):
        raise ConfigError(f"fitting an OOD threshold needs at least {MIN_FIT_IMAGES} finite scores, not "
                          f"{len(values)}")
    threshold = float(np.quantile(values, tpr, method="higher"))
    return {"score": kind, "output_role": OUTPUT_SCORE_ROLE, "description": OUTPUT_SCORES[kind],
            "threshold": threshold, "tpr": tpr, "measured_tpr": float(np.mean(values <= threshold)),
            "count": int(len(values))}
