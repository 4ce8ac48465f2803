"""Trust figures for a model made outside tumor-edge, fitted at export on the held-back part of `--calib-data`.

A run brings its calibration and OOD fit from `train` (train/trust.py, on its validation split). A foreign model
has no run, so export fits them on the share of the calibration images it holds back
(`source.FOREIGN_VAL_FRACTION`, stratified): the same images choose the int8 calibration method, but never feed
the int8 calibration ranges, which come from the other part only.

- Temperature scaling: `calibration.fit.fit_calibration`, the very function train uses (with its out-of-fold guard
  that keeps T = 1 when a temperature would not help unseen images).
- Out of distribution: the Mahalanobis score needs pooled features a foreign model does not expose. A foreign
  ONNX model gets a score from its own class scores instead (calibration/output_scores.py: energy of its logits,
  or its largest probability), computed inside the exported file, threshold at the stated true-positive rate of
  the held-back images, measured on generated out-of-distribution sets. A foreign Keras model keeps the input
  checks only (its exported graph is built by tf2onnx/TFLite from the Keras model; no score output is added).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tumor_edge.calibration.fit import fit_calibration
from tumor_edge.errors import ConfigError
from tumor_edge.export.model_source import stratified_subset

TRUST_IMAGES = 500  # held-back images the temperature and the OOD threshold are fitted on (stratified subset)
MIN_TRUST_IMAGES = 20  # as train: fewer gives a temperature that may hurt new images
OOD_SET_SIZE = 50  # images per generated out-of-distribution set (as train)
NO_FEATURE_OOD_REASON = ("a model made elsewhere brings no fit of its pooled features; only the input checks "
                         "(colour, noise, blank) apply")


def _held_back(source, seed: int):
    """(uint8 pixels, labels) of the held-back calibration images, or a reason string when too few."""
    from tumor_edge.data.dataset import load_pixels

    held = source.validation
    if held is None or len(held.samples) < MIN_TRUST_IMAGES:
        count = 0 if held is None else len(held.samples)
        return f"{count} held-back calibration images; at least {MIN_TRUST_IMAGES} are needed (give more --calib-data)"
    samples = stratified_subset(held.samples, TRUST_IMAGES, seed)
    loaded = load_pixels(samples, source.reference_preprocessing, "calibration: held-back images",
                         show_progress=False)
    if len(loaded.labels) < MIN_TRUST_IMAGES:
        return f"only {len(loaded.labels)} held-back images were readable"
    return loaded.pixels, loaded.labels


def _predict(model, pixels: np.ndarray, spec) -> np.ndarray:
    from tumor_edge.runtime import scale

    return np.concatenate([np.asarray(model.predict(scale(pixels[s:s + 32], spec), verbose=0), np.float64)
                           for s in range(0, len(pixels), 32)])


def fit_foreign_trust(source, seed: int = 0) -> dict[str, Any]:
    """{"calibration": ..., "ood": ...} as train records them, from the held-back calibration images; "ood" is
    the bundle's record for an ONNX model, else {"skipped": why}."""
    from tumor_edge.runtime import softmax

    held = _held_back(source, seed)
    if isinstance(held, str):
        return {"calibration": {"method": None, "skipped": held}, "ood": {"skipped": held}}
    pixels, labels = held
    spec = source.reference_preprocessing
    if source.kind != "onnx":
        calibration = fit_calibration(_predict(source.model, pixels, spec), labels, None, None, None)
        calibration["fitted_on_data"] = source.validation.origin
        return {"calibration": calibration, "ood": {"skipped": NO_FEATURE_OOD_REASON}}
    raw = _predict(source.raw_model, pixels, spec)  # the file's own outputs: logits or probabilities
    probs = softmax(raw) if source.source_output == "logits" else raw
    calibration = fit_calibration(probs, labels, None, None, None)
    calibration["fitted_on_data"] = source.validation.origin
    return {"calibration": calibration, "ood": fit_output_ood(source, raw, pixels, seed)}


def fit_output_ood(source, raw: np.ndarray, pixels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The bundle's `ood` for a score computed from the class scores, with detection and false-alarm rates on
    generated sets (synthetic) beside the input checks' rates, as train measures its Mahalanobis score."""
    from tumor_edge.calibration.ood_sets import generated_sets
    from tumor_edge.calibration.output_scores import fit_output_threshold, output_score
    from tumor_edge.runtime import flag_rates

    kind = "logit_energy" if source.source_output == "logits" else "max_probability"
    try:
        record = fit_output_threshold(output_score(raw, kind), kind)
    except ConfigError as err:
        return {"skipped": err.reason}
    record["fitted_on_data"] = source.validation.origin
    spec = source.reference_preprocessing
    evaluation = {}
    for name, images in generated_sets(OOD_SET_SIZE, (spec.height, spec.width), seed, scans=pixels).items():
        flagged = output_score(_predict(source.raw_model, images, spec), kind) > record["threshold"]
        evaluation[name] = flag_rates(flagged, images)
    record["evaluation"] = evaluation
    return record


__all__ = ["MIN_TRUST_IMAGES", "NO_FEATURE_OOD_REASON", "TRUST_IMAGES", "fit_foreign_trust",
           "fit_output_ood"]
