"""Explanations on the device, for any model: the exact class activation map where a bundle has one fine enough
to point (at least 4x4 cells), else a model-agnostic map (occlusion sensitivity or RISE) computed through the
runtime's own `Classifier` (numpy and the model's engine; no TensorFlow, no gradients). Every map says which
method drew it. `localisation` measures whether a map points at a known lesion.
"""

from tumor_edge.runtime.explain.methods import (
    AUTO,
    METHODS,
    MIN_CAM_CELLS,
    ExplainSettings,
    Explanation,
    cam_cells,
    choose_method,
    explain_prediction,
)

__all__ = ["AUTO", "METHODS", "MIN_CAM_CELLS", "ExplainSettings", "Explanation", "cam_cells",
           "choose_method", "explain_prediction"]
