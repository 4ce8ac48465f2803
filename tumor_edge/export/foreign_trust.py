"""Trust figures for a model made outside tumor-edge, fitted at export on the held-back part of `--calib-data`.

A run brings its calibration and OOD fit from `train` (train/trust.py, on its validation split). A foreign model
has no run, so export fits them on the share of the calibration images it holds back
(`source.FOREIGN_VAL_FRACTION`): the same images choose the int8 calibration method, but never feed the int8
calibration ranges, which come from the other part only.

- Temperature scaling: `train.trust.fit_calibration`, the very function train uses (with its out-of-fold guard
  that keeps T = 1 when a temperature would not help unseen images).
- Out of distribution: the Mahalanobis score needs pooled features a foreign model does not expose, so only the
  input checks (not a brain MRI: colour, noise, blank) apply; the note says so. An output-only score (energy on
  logits, maximum probability) would need a score kind the runtime does not know yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumor_edge.export.samples import stratified_subset

TRUST_IMAGES = 500  # held-back images the temperature is fitted on (stratified subset)
MIN_TRUST_IMAGES = 20  # as train: fewer gives a temperature that may hurt new images
NO_FEATURE_OOD_REASON = ("a model made elsewhere brings no fit of its pooled features; only the input checks "
                         "(colour, noise, blank) apply")
NO_FEATURE_OOD = f"no feature-space OOD check: {NO_FEATURE_OOD_REASON}"


def fit_foreign_calibration(source, seed: int = 0) -> dict[str, Any]:
    """`calibration` for the bundle: a temperature fitted on the held-back calibration images, or why none."""
    from tumor_edge.data.dataset import load_pixels
    from tumor_edge.runtime.preprocess import scale
    from tumor_edge.train.trust import fit_calibration

    held = source.validation
    if held is None or len(held.samples) < MIN_TRUST_IMAGES:
        count = 0 if held is None else len(held.samples)
        return {"method": None, "skipped": f"{count} held-back calibration images; at least {MIN_TRUST_IMAGES} are "
                                           "needed (give more --calib-data)"}
    samples = stratified_subset(held.samples, TRUST_IMAGES, seed)
    loaded = load_pixels(samples, source.reference_preprocessing, "calibration: held-back images",
                         show_progress=False)
    if len(loaded.labels) < MIN_TRUST_IMAGES:
        return {"method": None, "skipped": f"only {len(loaded.labels)} held-back images were readable"}
    probs = np.concatenate([np.asarray(source.model.predict(scale(loaded.pixels[s:s + 32],
                                                                  source.reference_preprocessing), verbose=0),
                                       np.float64)
                            for s in range(0, len(loaded.pixels), 32)])
    record = fit_calibration(probs, loaded.labels, None, None, None)
    record["fitted_on_data"] = held.origin
    return record


__all__ = ["MIN_TRUST_IMAGES", "NO_FEATURE_OOD", "NO_FEATURE_OOD_REASON", "TRUST_IMAGES", "fit_foreign_calibration"]
