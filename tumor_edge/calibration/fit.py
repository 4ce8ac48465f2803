"""The calibration record a model carries: temperature scaling fitted on held-out images by the calibration
rule, with its figures before and after. Train fits it on a run's validation split, export on the held-back
calibration images of a model made elsewhere: one rule for both. numpy/scipy (matplotlib only for the optional
reliability diagram).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.plots import reliability_diagram
from tumor_edge.calibration.temperature import calibration_summary, choose_temperature


def fit_calibration(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray | None,
                    test_labels: np.ndarray | None, reliability_png: Path | None) -> dict[str, Any]:
    """Temperature on validation by the calibration rule (tumor_edge.calibration.temperature: no fit without
    mistakes to fit, none at the range's edge, kept only if it helps held-out images); ECE/NLL before and after
    on validation and (the honest figure) on test."""
    choice = choose_temperature(val_probs, val_labels)
    record: dict[str, Any] = {"method": "temperature scaling", "fitted_on": choice.fit.count}
    if choice.out_of_fold_gain is not None:
        record["out_of_fold_nll_gain"] = round(choice.out_of_fold_gain, 6)
    if choice.kept_t1_because:  # keep the model's own confidence, and say why
        record["fitted_temperature"] = choice.fit.temperature
        record["kept_t1_because"] = choice.kept_t1_because
    fit = choice.applied_fit()
    record["temperature"] = fit.temperature
    record["validation"] = calibration_summary(val_probs, val_labels, fit)
    if test_probs is not None and test_labels is not None and len(test_labels):
        record["test"] = calibration_summary(test_probs, test_labels, fit)
        if reliability_png is not None:
            reliability_diagram(test_probs, test_labels, fit.temperature, reliability_png,
                                title=f"test split, n = {len(test_labels)}")
            record["reliability_diagram"] = Path(reliability_png).name
    # The card and the bundle read these at the top level: the test split's when there is one.
    shown = record.get("test", record["validation"])
    record.update({k: shown[k] for k in ("bins", "ece_before", "ece_after", "nll_before", "nll_after")})
    record["ece_measured_on"] = "test" if "test" in record else "validation"
    return record

