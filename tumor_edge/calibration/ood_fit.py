"""A feature-space out-of-distribution score and its threshold, fitted on the validation split.

The score is the energy of the logits (Liu et al. 2020, "Energy-based Out-of-distribution Detection"):
E(x) = -T * logsumexp(z / T). Scans like the training data get low (very negative) energy; inputs the model
has never seen get higher energy. The threshold is the `tpr` quantile of the validation scans' energies, so a
stated fraction (default 95 %) of in-distribution scans pass; everything above it is flagged.

Logits are needed (energy is not shift-invariant, unlike temperature scaling): tumor-edge's heatmap output
carries them, since the spatial mean of each class activation map is that class's logit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tumor_edge.errors import ConfigError

DEFAULT_TPR = 0.95


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, classes) logits -> (N,) energies (lower: more like the training data)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.ndim != 2:
        raise ConfigError(f"energy needs logits of shape (N, classes), not {z.shape}")
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


@dataclass(frozen=True)
class EnergyThreshold:
    """Flag a scan whose energy is above `threshold`. `tpr`: the fraction of validation scans meant to pass;
    `measured_tpr`: the fraction that did (ties and small sets make it differ a little)."""

    threshold: float
    tpr: float
    measured_tpr: float
    count: int
    score: str = "energy"
    temperature: float = 1.0

    def flags(self, logits: np.ndarray) -> np.ndarray:
        """(N,) bool: True where the scan is out of distribution."""
        return energy(logits, self.temperature) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnergyThreshold:
        try:
            values = {k: data[k] for k in ("threshold", "tpr", "measured_tpr", "count")}
            values.update({k: data[k] for k in ("score", "temperature") if k in data})
        except (KeyError, TypeError) as err:
            raise ConfigError(f"an OOD threshold needs threshold, tpr, measured_tpr and count ({err})") from err
        if values.get("score", "energy") != "energy":
            raise ConfigError(f"unknown OOD score {values['score']!r} (this tumor-edge knows 'energy')")
        for key in ("threshold", "tpr", "measured_tpr", "temperature"):
            if key in values and (not isinstance(values[key], (int, float)) or isinstance(values[key], bool)
                                  or not np.isfinite(values[key])):
                raise ConfigError(f"OOD field '{key}' must be a finite number")
        return cls(**values)


def fit_energy_threshold(logits: np.ndarray, tpr: float = DEFAULT_TPR, temperature: float = 1.0
                         ) -> EnergyThreshold:
    """The threshold that lets `tpr` of these (in-distribution, validation) scans pass."""
    if not 0.5 <= tpr < 1.0:
        raise ConfigError(f"the true-positive rate must be from 0.5 to below 1, not {tpr}")
    scores = energy(logits, temperature)
    if len(scores) < 10:
        raise ConfigError(f"fitting an OOD threshold needs at least 10 validation scans, not {len(scores)}")
    threshold = float(np.quantile(scores, tpr, method="higher"))
    return EnergyThreshold(threshold, tpr, float(np.mean(scores <= threshold)), int(len(scores)),
                           temperature=temperature)


def detection_rates(threshold: EnergyThreshold, in_logits: np.ndarray, out_logits: np.ndarray) -> dict[str, float]:
    """What a model card reports: the share of OOD scans flagged and of in-distribution scans wrongly flagged."""
    return {"detection_rate": float(np.mean(threshold.flags(out_logits))),
            "false_alarm_rate": float(np.mean(threshold.flags(in_logits))),
            "ood_count": int(len(out_logits)), "in_distribution_count": int(len(in_logits))}
