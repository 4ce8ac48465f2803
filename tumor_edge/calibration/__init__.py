"""How far to believe a prediction: temperature scaling, calibration error, out-of-distribution thresholds.
numpy only at import, so the device runtime applies what train fitted."""

from tumor_edge.calibration.temperature import (
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

__all__ = ["apply_temperature", "calibration_summary", "expected_calibration_error", "fit_temperature",
           "reliability_bins"]
