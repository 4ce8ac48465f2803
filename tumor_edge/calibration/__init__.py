"""How far to believe a prediction: temperature scaling, calibration error, out-of-distribution thresholds.

TensorFlow-free (numpy; scipy only inside the fitting function; matplotlib only inside the plot writer), so
train fits these numbers on the validation split, export copies them into the bundle, and the device runtime
applies them with numpy alone.
"""

from tumor_edge.calibration.ece import expected_calibration_error, reliability_bins
from tumor_edge.calibration.temperature import (
    TemperatureFit,
    apply_temperature,
    calibration_summary,
    fit_temperature,
    log_scores,
)

__all__ = ["TemperatureFit", "apply_temperature", "calibration_summary", "expected_calibration_error",
           "fit_temperature", "log_scores", "reliability_bins"]
