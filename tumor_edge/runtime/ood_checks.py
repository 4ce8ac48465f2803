"""Is this a brain MRI slice at all? Cheap checks on the decoded pixels, before any model runs.

A classifier answers every input with a confident label, including a holiday photograph. These checks catch
the inputs that are plainly not a greyscale scan of a head: colour (an MRI slice is stored grey, so its
channels agree), noise (neighbouring pixels of any real image are strongly correlated; sensor noise or a
corrupted file are not), blank or constant images, and images with no dark background around the anatomy
(an MRI slice is surrounded by air, which images black; a photograph or chest film fills the frame). Each
check returns a reason a person understands; the model's own feature-space check (`postprocess.warnings_for`)
catches subtler departures. Numpy only, on uint8 RGB (H, W, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
