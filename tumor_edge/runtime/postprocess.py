"""Post-processing: a model's class scores to the probabilities and warnings a row shows, each rule once.

- probabilities: logits go through softmax; scores a bundle declares probabilities are held to one probability
  rule (`probability_problem`); then the bundle's `calibration` temperature scales them.
- warnings: the input checks on the pixels the model saw (`input_warnings`, below), and the bundle's `ood` fit:
  class centres and a threshold for the model's "ood_features" output (tumor_edge.calibration.mahalanobis), or a
  threshold on a score the model file computes itself (tumor_edge.calibration.output_scores).
- a picture whose scores are not finite gets no label (`classifier.not_a_number`); with `abstain`, a warned one
  neither.

Neither `calibration` nor `ood` is required; the calibration package loads only for a bundle that has them.

The input checks ask whether this is a brain MRI slice at all, cheaply, on the decoded pixels. A classifier
answers every input with a confident label, including a holiday photograph; these catch the inputs that are
plainly not a greyscale scan of a head: colour (an MRI slice is stored grey, so its channels agree), noise
(neighbouring pixels of any real image are strongly correlated; sensor noise or a corrupted file are not), blank
or constant images, and images with no dark background around the anatomy (an MRI slice is surrounded by air,
which images black; a photograph or chest film fills the frame). Each check returns a reason a person
understands; the model's own feature-space check (`warnings_for`) catches subtler departures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tumor_edge.errors import ConfigError


@dataclass(frozen=True)
class InputCheckLimits:
    """Thresholds, chosen with margin from measurements on MRI slices (real and synthetic) and on colour
    photographs, noise and blank images (tests/runtime/test_ood_checks.py holds the measured cases)."""

    max_colour: float = 12.0  # mean |R-G| + |G-B| + |B-R| / 3 over pixels, in grey levels; JPEG grey ~0-2
    min_contrast: float = 4.0  # standard deviation in grey levels; below: blank or constant
    min_neighbour_correlation: float = 0.5  # lag-1 correlation of adjacent pixels; white noise ~0
    min_dark_fraction: float = 0.25  # share of the image's outer ring (6 %) in the darkest 15 % of its grey range


DEFAULT_LIMITS = InputCheckLimits()


@dataclass(frozen=True)
class PixelStats:
    colour: float
    contrast: float
    neighbour_correlation: float
    dark_fraction: float


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def pixel_stats(rgb: np.ndarray) -> PixelStats:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None].repeat(3, axis=-1)
    channels = rgb[..., :3].astype(np.float32)
    r, g, b = channels[..., 0], channels[..., 1], channels[..., 2]
    colour = float((np.abs(r - g) + np.abs(g - b) + np.abs(b - r)).mean() / 3)
    grey = channels.mean(axis=-1)
    contrast = float(grey.std())
    horizontal = _correlation(grey[:, :-1].ravel(), grey[:, 1:].ravel()) if grey.shape[1] > 1 else 1.0
    vertical = _correlation(grey[:-1].ravel(), grey[1:].ravel()) if grey.shape[0] > 1 else 1.0
    lo, hi = float(grey.min()), float(grey.max())
    ring = max(1, round(0.06 * min(grey.shape)))
    border = np.concatenate([grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(),
                             grey[:, -ring:].ravel()])
    dark = float(np.mean(border <= lo + 0.15 * (hi - lo))) if hi > lo else 1.0
    return PixelStats(colour, contrast, min(horizontal, vertical), dark)


def input_warnings(rgb: np.ndarray, limits: InputCheckLimits = DEFAULT_LIMITS,
                   content_only: bool = False) -> list[str]:
    """Reasons (empty: nothing found) why `rgb` does not look like a brain MRI slice. `content_only`: only the
    checks that hold for a volume slice's own voxels before it is framed on a black canvas (which would give any
    constant or noise volume the dark surround of a head): blank or constant, and noise."""
    s = pixel_stats(rgb)
    if s.contrast < limits.min_contrast:
        return [f"blank or constant image (contrast {s.contrast:.1f} grey levels): not a scan"]
    if s.neighbour_correlation < limits.min_neighbour_correlation:
        return [f"looks like noise (neighbouring pixels correlate {s.neighbour_correlation:.2f}; real images "
                f"> {limits.min_neighbour_correlation})"]
    if content_only:
        return []
    if s.colour > limits.max_colour:
        return [f"colour image (channels differ by {s.colour:.0f} grey levels on average): MRI slices are grey; "
                f"is this a photograph?"]
    if s.dark_fraction < limits.min_dark_fraction:
        return [f"no dark background ({100 * s.dark_fraction:.0f} % of the image's edge near black): an MRI "
                f"slice shows the head surrounded by air"]
    return []


def flag_rates(score_flags: np.ndarray, images: np.ndarray) -> dict[str, float | int]:
    """How a fitted score (`score_flags`, one bool per image) and the input checks flag a set of uint8 images:
    the shares flagged by each and by either. One row shape for train's and export's OOD evaluations."""
    flagged = np.asarray(score_flags, dtype=bool)
    checks = np.array([bool(input_warnings(p)) for p in images], dtype=bool)
    return {"count": int(len(images)), "flagged": float(np.mean(flagged)),
            "input_checks_flagged": float(np.mean(checks)), "either_flagged": float(np.mean(flagged | checks))}


MAX_OOD_DIMS = 4096
MAHALANOBIS = "mahalanobis"

# How far a model's "probabilities" may stray from a distribution and still be one, per class: half a step of an
# 8-bit output quantized over [-1, 1] (1/254: a symmetric int8 scale is the widest an int8 model's softmax output
# gets) plus float16's rounding of a value below 1 (2**-11). Raw logits or a halved softmax are far outside.
PROBABILITY_SLACK_PER_CLASS = 1 / 254 + 2 ** -11
PROBABILITY_RANGE_SLACK = 1e-6  # a value just above 1 or below 0 is float rounding; more is not a probability


@dataclass(frozen=True)
class PostProcessing:
    """What a bundle's `calibration` and `ood` fields ask of every prediction (nothing, without them)."""

    temperature: float | None = None  # None: probabilities as the model gives them
    ood_centres: np.ndarray | None = None  # (classes, dims), for the Mahalanobis score
    ood_threshold: float | None = None
    ood_role: str | None = None  # the model output the OOD score reads
    input_checks: bool = True
    ood_score: str | None = None  # MAHALANOBIS, or a key of OUTPUT_SCORES (the output is the score); None: no fit

    @classmethod
    def from_fields(cls, calibration: Any = None, ood: Any = None, input_checks: bool = True) -> PostProcessing:
        """From metadata's `calibration` and `ood` objects; anything malformed is a ConfigError naming it."""
        temperature = None
        if calibration is not None:
            from tumor_edge.calibration.temperature import T_BOUNDS

            if not isinstance(calibration, Mapping):
                raise ConfigError("field 'calibration' must be an object")
            t = calibration.get("temperature")
            if not _finite(t) or not T_BOUNDS[0] <= t <= T_BOUNDS[1]:
                raise ConfigError(f"field 'calibration.temperature' must be a number from {T_BOUNDS[0]} to "
                                  f"{T_BOUNDS[1]}")
            temperature = float(t)
        if ood is None:
            return cls(temperature, input_checks=input_checks)
        from tumor_edge.calibration.mahalanobis import OOD_ROLE
        from tumor_edge.calibration.output_scores import OUTPUT_SCORE_ROLE, OUTPUT_SCORES

        if not isinstance(ood, Mapping):
            raise ConfigError("field 'ood' must be an object")
        score = ood.get("score")
        if score not in (MAHALANOBIS, *OUTPUT_SCORES):
            raise ConfigError(f"field 'ood.score' names {str(score)[:40]!r}; this tumor-edge knows "
                              f"{MAHALANOBIS!r}, {', '.join(repr(k) for k in OUTPUT_SCORES)}")
        centres = None
        threshold = ood.get("threshold")
        if score == MAHALANOBIS:
            try:
                centres = np.asarray(ood.get("centres"), dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers") from err
            if centres.ndim != 2 or not 1 <= centres.shape[1] <= MAX_OOD_DIMS or not np.all(np.isfinite(centres)):
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers")
            if not _finite(threshold) or threshold < 0:
                raise ConfigError("field 'ood.threshold' must be a non-negative number")
        elif not _finite(threshold):
            raise ConfigError("field 'ood.threshold' must be a finite number")
        role = ood.get("output_role", OOD_ROLE if score == MAHALANOBIS else OUTPUT_SCORE_ROLE)
        if not isinstance(role, str):
            raise ConfigError("field 'ood.output_role' must be a string")
        return cls(temperature, centres, float(threshold), role, input_checks, str(score))

    @property
    def has_ood(self) -> bool:
        return self.ood_score is not None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probability_problem(rows: np.ndarray | list) -> str | None:
    """Why class scores (one row per picture) are no probability distributions, or None when they are: each
    value in [0, 1], each row summing to 1 within PROBABILITY_SLACK_PER_CLASS per class. Rows that are not finite
    are not judged here: such a picture gets no label (`classifier.not_a_number`)."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if rows.shape[-1] == 0:
        return "no class scores"
    finite = rows[np.all(np.isfinite(rows), axis=-1)]
    if not finite.size:
        return None
    low, high = float(finite.min()), float(finite.max())
    sums = finite.sum(axis=-1)
    worst = float(sums[np.argmax(np.abs(sums - 1.0))])
    if low < -PROBABILITY_RANGE_SLACK or high > 1 + PROBABILITY_RANGE_SLACK:
        return f"values from {low:.3g} to {high:.3g}, outside [0, 1]"
    if abs(worst - 1.0) > PROBABILITY_SLACK_PER_CLASS * rows.shape[-1]:
        return f"a row summing to {worst:.6g}, not 1"
    return None


def calibrate(probs: np.ndarray, settings: PostProcessing) -> np.ndarray:
    """(N, classes) probabilities, temperature-scaled when the bundle records a temperature."""
    if settings.temperature is None or settings.temperature == 1.0:
        return probs
    from tumor_edge.calibration.temperature import apply_temperature

    return apply_temperature(probs, settings.temperature)


def ood_scores(outputs: Mapping[str, np.ndarray], settings: PostProcessing) -> np.ndarray | None:
    """(N,) out-of-distribution scores, or None without the fit or its output."""
    z = outputs.get(settings.ood_role) if settings.ood_role else None
    if z is None:
        return None
    if settings.ood_score != MAHALANOBIS:  # the model computed it: one number per picture
        return np.asarray(z, dtype=np.float64).reshape(len(z))
    from tumor_edge.calibration.mahalanobis import score_projected

    return score_projected(np.asarray(z).reshape(len(z), -1), settings.ood_centres)


def warnings_for(pixels: np.ndarray, score: float | None, settings: PostProcessing,
                 checked: list[str] | None = None) -> list[str]:
    """One picture's warnings: the input checks on its (model-sized, uint8 RGB) pixels, then the feature check.
    `checked`: the input checks' findings already made on these pixels (by a decode worker), not made again."""
    found = list(checked) if checked is not None else input_warnings(pixels) if settings.input_checks else []
    if score is not None and settings.ood_threshold is not None and score > settings.ood_threshold:
        what = "feature distance" if settings.ood_score == MAHALANOBIS else str(settings.ood_score).replace("_", " ")
        found.append(f"unlike the training scans ({what} {score:.3g} above the threshold "
                     f"{settings.ood_threshold:.3g} that passes most validation scans)")
    return found
