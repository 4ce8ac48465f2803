"""At the end of `train`: fit temperature scaling and the out-of-distribution score on the validation split,
and measure both on data they were not fitted on (the test split; generated out-of-distribution sets).

Returns the figures a run records (RunConfig extra keys "calibration" and "ood"); writes a reliability diagram
and the OOD parameters (`MahalanobisOod.save`) where the caller says. The validation split is what model
selection already used, never the test split, so the test figures stay honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import DEFAULT_TPR, fit_mahalanobis
from tumor_edge.calibration.ood_sets import generated_sets
from tumor_edge.calibration.temperature import fit_calibration
from tumor_edge.errors import ConfigError
from tumor_edge.modelside.cam import NoCamHeadError, features_model
from tumor_edge.runtime.ood_checks import flag_rates
from tumor_edge.train.pipeline import predict_probabilities

OOD_SET_SIZE = 50


def fit_ood(model, val_pixels: np.ndarray, val_labels: np.ndarray, test_pixels: np.ndarray | None,
            params_path: Path, batch_size: int = 32, tpr: float = DEFAULT_TPR, seed: int = 0) -> dict[str, Any]:
    """Mahalanobis on pooled features (fitted on validation, saved to `params_path`), measured on the test
    split (false alarms) and on generated sets (detection), beside the input checks' rates on the same sets."""
    try:
        features = features_model(model)
    except NoCamHeadError as err:
        return {"score": None, "skipped": err.reason}
    try:
        fit = fit_mahalanobis(predict_probabilities(features, val_pixels, batch_size), val_labels, tpr=tpr)
    except ConfigError as err:
        return {"score": None, "skipped": err.reason}
    fit.save(params_path)
    record = fit.summary()
    record.pop("centres")  # the bundle carries them; the run keeps them in the saved parameters
    record["parameters"] = Path(params_path).name
    size = tuple(val_pixels.shape[1:3])
    sets = {"test split (in distribution)": test_pixels} if test_pixels is not None and len(test_pixels) else {}
    sets.update(generated_sets(OOD_SET_SIZE, size, seed, scans=test_pixels))
    evaluation = {}
    for name, pixels in sets.items():
        evaluation[name] = flag_rates(fit.flags(predict_probabilities(features, pixels, batch_size)), pixels)
    record["evaluation"] = evaluation
    return record


def fit_trust_for_run(model, val_pixels: np.ndarray, val_labels: np.ndarray, test_pixels: np.ndarray,
                      test_labels: np.ndarray, reliability_png: Path, ood_params: Path,
                      batch_size: int = 32) -> dict[str, Any]:
    """Both fits for a finished run: {"calibration": ..., "ood": ...} for metrics.json and the run config.
    A run without a usable validation split records why nothing was fitted instead of failing the run."""
    if len(val_labels) < 20:
        why = f"{len(val_labels)} validation images; at least 20 are needed"
        return {"calibration": {"method": None, "skipped": why}, "ood": {"score": None, "skipped": why}}
    val_probs = predict_probabilities(model, val_pixels, batch_size)
    test_probs = predict_probabilities(model, test_pixels, batch_size) if len(test_labels) else None
    calibration = fit_calibration(val_probs, val_labels, test_probs, test_labels, reliability_png)
    ood = fit_ood(model, val_pixels, val_labels, test_pixels, ood_params, batch_size)
    return {"calibration": calibration, "ood": ood}


def describe_trust(record: dict[str, Any]) -> str:
    """Two lines for train's printout."""
    cal, ood = record.get("calibration") or {}, record.get("ood") or {}
    lines = []
    if cal.get("kept_t1_because"):
        lines.append(f"calibration: T = 1 kept (fitted T = {cal['fitted_temperature']:.3g}: "
                     f"{cal['kept_t1_because']}); ECE on {cal['ece_measured_on']} {100 * cal['ece_before']:.1f} %")
    elif cal.get("temperature") is not None:
        lines.append(f"calibration: T = {cal['temperature']:.3g}; ECE on {cal['ece_measured_on']} "
                     f"{100 * cal['ece_before']:.1f} % -> {100 * cal['ece_after']:.1f} %")
    else:
        lines.append(f"calibration: not fitted ({cal.get('skipped', 'no figures')})")
    if ood.get("score"):
        ev = ood.get("evaluation", {})
        rates = ", ".join(f"{name} {100 * r['either_flagged']:.0f} %" for name, r in ev.items())
        lines.append(f"out-of-distribution: {ood['score']} threshold {ood['threshold']:.3g} (passes "
                     f"{100 * ood['tpr']:.0f} % of validation scans); flagged: {rates}")
    else:
        lines.append(f"out-of-distribution: no feature-space check ({ood.get('skipped', 'no figures')})")
    return "\n".join(lines)
