"""What the device does with a bundle's trust fields: calibrated probabilities and out-of-distribution warnings.

A bundle may record `calibration` (a temperature fitted on the validation split) and `ood`: class centres and a
threshold for the model's "ood_features" output (tumor_edge.calibration.mahalanobis), or, for a model made
elsewhere, a threshold on a score the model file computes itself (tumor_edge.calibration.output_scores). Neither
is required: an older bundle gets no scaling and only the input checks. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import OOD_ROLE, score_projected
from tumor_edge.calibration.output_scores import OUTPUT_SCORE_ROLE, OUTPUT_SCORES
from tumor_edge.calibration.temperature import T_BOUNDS, apply_temperature
from tumor_edge.errors import ConfigError
from tumor_edge.runtime.ood_checks import input_warnings

MAX_OOD_DIMS = 4096


@dataclass(frozen=True)
class TrustSettings:
    temperature: float | None = None  # None: probabilities as the model gives them
    ood_centres: np.ndarray | None = None  # (classes, dims)
    ood_threshold: float | None = None
    ood_role: str = OOD_ROLE
    input_checks: bool = True
    ood_score: str = "mahalanobis"  # or a key of OUTPUT_SCORES: the model output is the score itself

    @classmethod
    def from_fields(cls, calibration: Any = None, ood: Any = None, input_checks: bool = True) -> TrustSettings:
        """From metadata's `calibration` and `ood` objects; anything malformed is a ConfigError naming it."""
        temperature = None
        if calibration is not None:
            if not isinstance(calibration, Mapping):
                raise ConfigError("field 'calibration' must be an object")
            t = calibration.get("temperature")
            if not _finite(t) or not T_BOUNDS[0] <= t <= T_BOUNDS[1]:
                raise ConfigError(f"field 'calibration.temperature' must be a number from {T_BOUNDS[0]} to "
                                  f"{T_BOUNDS[1]}")
            temperature = float(t)
        centres = threshold = None
        role = OOD_ROLE
        if ood is not None:
            if not isinstance(ood, Mapping):
                raise ConfigError("field 'ood' must be an object")
            if ood.get("score") in OUTPUT_SCORES:
                return cls._output_score(temperature, ood, input_checks)
            if ood.get("score") != "mahalanobis":
                raise ConfigError(f"field 'ood.score' names {str(ood.get('score'))[:40]!r}; this tumor-edge "
                                  f"knows 'mahalanobis', {', '.join(repr(k) for k in OUTPUT_SCORES)}")
            try:
                centres = np.asarray(ood.get("centres"), dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers") from err
            if centres.ndim != 2 or not 1 <= centres.shape[1] <= MAX_OOD_DIMS or not np.all(np.isfinite(centres)):
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers")
            threshold = ood.get("threshold")
            if not _finite(threshold) or threshold < 0:
                raise ConfigError("field 'ood.threshold' must be a non-negative number")
            role = ood.get("output_role", OOD_ROLE)
            if not isinstance(role, str):
                raise ConfigError("field 'ood.output_role' must be a string")
        return cls(temperature, centres, None if threshold is None else float(threshold), role, input_checks)

    @classmethod
    def _output_score(cls, temperature: float | None, ood: Mapping, input_checks: bool) -> TrustSettings:
        threshold = ood.get("threshold")
        if not _finite(threshold):
            raise ConfigError("field 'ood.threshold' must be a finite number")
        role = ood.get("output_role", OUTPUT_SCORE_ROLE)
        if not isinstance(role, str):
            raise ConfigError("field 'ood.output_role' must be a string")
        return cls(temperature, None, float(threshold), role, input_checks, str(ood["score"]))

    @property
    def has_ood(self) -> bool:
        return self.ood_centres is not None or self.ood_score in OUTPUT_SCORES


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def calibrate(probs: np.ndarray, settings: TrustSettings) -> np.ndarray:
    """(N, classes) probabilities, temperature-scaled when the bundle records a temperature."""
    if settings.temperature is None or settings.temperature == 1.0:
        return probs
    return apply_temperature(probs, settings.temperature)


def ood_scores(outputs: Mapping[str, np.ndarray], settings: TrustSettings) -> np.ndarray | None:
    """(N,) squared distances to the nearest class centre, or None without the output or the fit."""
    z = outputs.get(settings.ood_role)
    if not settings.has_ood or z is None:
        return None
    if settings.ood_score in OUTPUT_SCORES:  # the model computed it: one number per image
        return np.asarray(z, dtype=np.float64).reshape(len(z))
    return score_projected(np.asarray(z).reshape(len(z), -1), settings.ood_centres)


def warnings_for(pixels: np.ndarray, score: float | None, settings: TrustSettings,
                 checked: list[str] | None = None) -> list[str]:
    """One image's warnings: the input checks on its (model-sized, uint8 RGB) pixels, then the feature check.
    `checked`: the input checks' findings already made on these pixels (by a decode worker), not made again."""
    found = list(checked) if checked is not None else input_warnings(pixels) if settings.input_checks else []
    if score is not None and settings.ood_threshold is not None and score > settings.ood_threshold:
        what = "feature distance" if settings.ood_score == "mahalanobis" else settings.ood_score.replace("_", " ")
        found.append(f"unlike the training scans ({what} {score:.3g} above the threshold "
                     f"{settings.ood_threshold:.3g} that passes most validation scans)")
    return found
