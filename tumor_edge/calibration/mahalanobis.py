"""Out-of-distribution scores, all "higher = less familiar". On the model's pooled features: Mahalanobis distance
to the nearest class (Lee et al. 2018). For models made elsewhere with no pooled-feature output, from the model's
own class scores: "logit_energy" (Liu et al. 2020; needs real logits) and "max_probability" (Hendrycks & Gimpel
2017); `output_score` is the numpy twin of the nodes export adds to the graph.

The covariance of a few hundred scans' 2048 features is rank-deficient, so the score lives in the top `dims`
principal directions, whitened with an eigenvalue floor. The fit folds into one affine map,
z = (f - mean) @ projection, that export appends to the model as an extra output, so a device needs only the
class centres. The threshold comes from out-of-fold scores: in-sample distances are too small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.errors import ConfigError, ModelError

DEFAULT_DIMS = 32
DEFAULT_TPR = 0.95  # the share of in-distribution scans every OOD threshold lets pass
OOD_ROLE = "ood_features"  # the model output that carries z
# Whitening divides by sqrt(eigenvalue): without a floor (a shrinkage, relative to the largest), directions in
# which validation scans barely vary would turn an int8 file's rounding into huge distances.
EIGEN_FLOOR = 0.1
OUTPUT_SCORE_ROLE = "ood_score"
OUTPUT_SCORES: dict[str, str] = {
    "logit_energy": "energy of the logits, -logsumexp(z) (higher: less like the training scans)",
    "max_probability": "negative largest class probability, -max p (higher: less like the training scans)",
}
MIN_FIT_IMAGES = 10


@dataclass
class MahalanobisOod:
    mean: np.ndarray  # (C,)
    projection: np.ndarray  # (C, dims): whitening in the top principal directions
    centres: np.ndarray  # (classes, dims): class means in z space
    threshold: float
    tpr: float
    measured_tpr: float
    count: int

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, C) pooled features -> (N,) scores, through the projection the exported model applies."""
        return score_projected((np.asarray(features, np.float64) - self.mean) @ self.projection, self.centres)

    def flags(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    def summary(self) -> dict[str, Any]:
        """What runtime metadata needs (device side: centres and threshold, z comes from the model)."""
        return {"score": "mahalanobis", "output_role": OOD_ROLE, "threshold": self.threshold, "tpr": self.tpr,
                "measured_tpr": self.measured_tpr, "count": self.count, "dims": self.dims,
                "centres": self.centres.round(6).tolist()}

    def save(self, path: Path) -> Path:
        np.savez(path, mean=self.mean, projection=self.projection, centres=self.centres,
                 scalars=np.array([self.threshold, self.tpr, self.measured_tpr, self.count], np.float64))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> MahalanobisOod:
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, projection, centres = data["mean"], data["projection"], data["centres"]
                threshold, tpr, measured, count = (float(v) for v in data["scalars"])
        except (OSError, KeyError, ValueError) as err:
            raise ModelError(f"unreadable OOD parameters ({err})", path) from err
        if projection.ndim != 2 or mean.shape != (projection.shape[0],) or centres.shape[1:] != projection.shape[1:]:
            raise ModelError("OOD parameters of inconsistent shapes", path)
        return cls(mean, projection, centres, threshold, tpr, measured, int(count))


def score_projected(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, dims) projected features -> (N,) squared distance to the nearest class centre."""
    z, centres = np.asarray(z, np.float64), np.asarray(centres, np.float64)
    if z.ndim != 2 or centres.ndim != 2 or z.shape[1] != centres.shape[1]:
        raise ConfigError(f"OOD features {z.shape} do not match class centres {centres.shape}")
    return ((z[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1)


def _fit_parts(features: np.ndarray, labels: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, projection, centres) from in-distribution features and labels."""
    classes = np.unique(labels)
    mean = features.mean(axis=0)
    class_means = {c: features[labels == c].mean(axis=0) for c in classes}
    within = features - np.stack([class_means[c] for c in labels])
    scale = max(len(features) - len(classes), 1)
    keep = max(1, min(dims, len(features) - len(classes), features.shape[1]))
    if len(features) < features.shape[1]:
        # Fewer scans than features: the covariance's non-zero spectrum is that of the N x N Gram matrix, and
        # each eigenvector is within.T @ u normalised (a few hundred scans against 2,048 features: an N x N
        # decomposition instead of a 2,048 x 2,048 one, the same directions and distances).
        eigval, u = np.linalg.eigh(within @ within.T / scale)
        order = np.argsort(eigval)[::-1][:keep]
        order = order[eigval[order] > max(float(eigval.max()), 0.0) * 1e-12]
        eigvec = np.zeros((features.shape[1], len(eigval)))
        eigvec[:, order] = within.T @ u[:, order] / np.sqrt(eigval[order] * scale)
    else:
        eigval, eigvec = np.linalg.eigh(within.T @ within / scale)
        order = np.argsort(eigval)[::-1][:keep]
    floor = max(float(eigval.max()) * EIGEN_FLOOR, 1e-12)
    projection = eigvec[:, order] / np.sqrt(np.maximum(eigval[order], floor))
    centres = np.stack([(class_means[c] - mean) @ projection for c in classes])
    return mean, projection, centres


def out_of_fold_scores(features: np.ndarray, labels: np.ndarray, dims: int, folds: int = 5, seed: int = 0
                       ) -> np.ndarray:
    """Each scan scored by a fit that never saw it: what a new in-distribution scan's score looks like."""
    order = np.random.default_rng(seed).permutation(len(features))
    scores = np.empty(len(features))
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        mean, projection, centres = _fit_parts(features[rest], labels[rest], dims)
        scores[part] = score_projected((features[part] - mean) @ projection, centres)
    return scores


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, tpr: float = DEFAULT_TPR, dims: int = DEFAULT_DIMS,
                    ) -> MahalanobisOod:
    """Fit on in-distribution (validation) pooled features and their labels; threshold from out-of-fold
    scores, so new in-distribution scans pass at about the stated `tpr`."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise ConfigError(f"OOD fitting needs features (N, C) and N labels, not {features.shape}, {labels.shape}")
    if len(features) < 20:
        raise ConfigError(f"fitting an OOD threshold needs at least 20 validation scans, not {len(features)}")
    _check_tpr(tpr)
    threshold, measured = _threshold(out_of_fold_scores(features, labels, dims), tpr)
    mean, projection, centres = _fit_parts(features, labels, dims)
    return MahalanobisOod(mean, projection, centres, threshold, tpr, measured, int(len(features)))


def _check_tpr(tpr: float) -> None:
    if not 0.5 <= tpr < 1.0:
        raise ConfigError(f"the true-positive rate must be from 0.5 to below 1, not {tpr}")


def _threshold(values: np.ndarray, tpr: float) -> tuple[float, float]:
    """The score that lets `tpr` of these in-distribution scores pass, and the share that does."""
    threshold = float(np.quantile(values, tpr, method="higher"))
    return threshold, float(np.mean(values <= threshold))


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
    _check_tpr(tpr)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) < MIN_FIT_IMAGES or not np.all(np.isfinite(values)):
        raise ConfigError(f"fitting an OOD threshold needs at least {MIN_FIT_IMAGES} finite scores, not "
                          f"{len(values)}")
    threshold, measured = _threshold(values, tpr)
    return {"score": kind, "output_role": OUTPUT_SCORE_ROLE, "description": OUTPUT_SCORES[kind],
            "threshold": threshold, "tpr": tpr, "measured_tpr": measured, "count": int(len(values))}
