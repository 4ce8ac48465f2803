"""What export adds for trust: the model it converts (scores + heatmap + ood_features where the head allows),
the bundle metadata fields (outputs, calibration, ood), and heatmap parity per exported file.

A run's calibration and OOD fit come from `train` (RunConfig extra keys "calibration" and "ood", OOD parameters
in the run folder). A foreign model without a GAP + dense head is exported with its scores only, with a note
saying why it has no heatmap: never an approximate picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import OOD_ROLE, MahalanobisOod
from tumor_edge.contracts.bundle import OutputSpec
from tumor_edge.errors import ConfigError


@dataclass
class TrustExport:
    model: Any  # what the converters convert
    extra_outputs: dict[str, OutputSpec] = field(default_factory=dict)  # role -> spec, for BundleMetadata
    calibration: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None  # the device's part: centres, threshold, output role
    notes: list[str] = field(default_factory=list)  # why something is absent


def trust_export(model, run_extra: dict[str, Any] | None = None, ood_params: Path | None = None,
                 heatmaps: bool = True) -> TrustExport:
    """The model to convert and the trust metadata, from the Keras model and what train recorded."""
    from tumor_edge.modelside.cam import NoCamHeadError, find_cam_head, heatmap_output_spec, trust_model

    run_extra = run_extra or {}
    calibration = run_extra.get("calibration") or {}
    result = TrustExport(model, calibration=calibration if calibration.get("temperature") is not None else None)
    if calibration.get("skipped"):
        result.notes.append(f"no calibration: {calibration['skipped']}")
    if not heatmaps:
        result.notes.append("heatmaps not requested")
        return result
    try:
        head = find_cam_head(model)
    except NoCamHeadError as err:
        result.notes.append(err.reason)
        return result
    ood = None
    if ood_params is not None and Path(ood_params).is_file():
        ood = MahalanobisOod.load(ood_params)
        if ood.projection.shape[0] != int(head.pooled.shape[-1]):
            result.notes.append("the run's OOD parameters do not fit this model's features; OOD check left out")
            ood = None
    elif (run_extra.get("ood") or {}).get("skipped"):
        result.notes.append(f"no feature-space OOD check: {run_extra['ood']['skipped']}")
    result.model = trust_model(model, ood)
    result.extra_outputs = {"heatmap": heatmap_output_spec(1, head.grid)}
    if head.grid == (1, 1):
        result.notes.append("the last convolution map is 1 x 1 at this input size: heatmaps show no location "
                            "(InceptionV3 gives 2 x 2 from about 107 px, 8 x 8 at 299 px)")
    if ood is not None:
        result.extra_outputs[OOD_ROLE] = OutputSpec(
            OOD_ROLE, 2, "projected_features", f"pooled features, centred and whitened ({ood.dims} numbers): "
            f"the OOD score is the squared distance to the nearest class centre in `ood`")
        result.ood = {**ood.summary(), "evaluation": (run_extra.get("ood") or {}).get("evaluation", {})}
    return result


def map_correlation(reference: np.ndarray, maps: np.ndarray) -> float | None:
    """Mean over images and classes of the Pearson correlation between two (N, h, w, classes) heatmaps; maps
    flat in the reference (no spatial information) are left out. None when every map is flat (a 1 x 1 grid, as
    a 75 px InceptionV3 has): there is nothing to compare, and 1.0 would claim agreement that was not shown."""
    reference, maps = np.asarray(reference, np.float64), np.asarray(maps, np.float64)
    if reference.shape != maps.shape or reference.ndim != 4:
        raise ConfigError(f"heatmaps of shapes {reference.shape} and {maps.shape} cannot be compared")
    a = reference.transpose(0, 3, 1, 2).reshape(-1, reference.shape[1] * reference.shape[2])
    b = maps.transpose(0, 3, 1, 2).reshape(a.shape)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    keep = (a * a).sum(1) > 1e-12
    if not keep.any():
        return None
    return float(np.mean(np.where(norm[keep] > 0, (a * b).sum(1)[keep] / np.maximum(norm[keep], 1e-300), 0.0)))


def heatmap_correlation(clf, reference: np.ndarray, pixels: np.ndarray, batch_size: int = 16) -> float | None:
    """One opened exported file's heatmaps (through the runtime's Classifier, as a device computes them) against
    the Keras model's `reference` maps on the same pixels: `map_correlation`, rounded."""
    maps = np.concatenate([clf.infer_outputs(np.asarray(pixels[s:s + batch_size]))["heatmap"]
                           for s in range(0, len(pixels), batch_size)])
    value = map_correlation(reference, maps)
    return None if value is None else round(value, 4)
