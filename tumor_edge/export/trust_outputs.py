"""What export adds for trust: the model it converts (scores + heatmap + ood_features where the head allows),
the bundle metadata fields (outputs, calibration, ood), and heatmap parity per exported file.

A run's calibration and OOD fit come from `train` (RunConfig extra keys "calibration" and "ood", OOD parameters
in the run folder). A model made elsewhere has no run, so export fits them on the share of `--calib-data` it holds
back (samples.FOREIGN_VAL_FRACTION, stratified), images that choose the int8 calibration method but never
feed the int8 ranges:
- the temperature with `calibration.plots.fit_calibration`, the very function train uses (its out-of-fold guard
  keeps T = 1 when a temperature would not help unseen images);
- the Mahalanobis OOD score needs pooled features a foreign model does not expose. A foreign ONNX model gets a
  score from its own class scores instead (calibration/mahalanobis.py), computed inside the exported file,
  thresholded on the held-back images and measured on generated out-of-distribution sets; a foreign Keras model
  keeps the input checks only.
A model without a GAP + dense head is exported with its scores only, with a note saying why it has no heatmap:
never an approximate picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import (
    OOD_ROLE,
    OUTPUT_SCORE_ROLE,
    MahalanobisOod,
    fit_output_threshold,
    output_score,
)
from tumor_edge.calibration.ood_sets import OOD_SET_SIZE, generated_sets
from tumor_edge.calibration.plots import fit_calibration
from tumor_edge.contracts.bundle import OutputSpec
from tumor_edge.data.dataset import load_pixels
from tumor_edge.errors import ConfigError
from tumor_edge.export.samples import stratified_subset
from tumor_edge.runtime import flag_rates, scale, softmax

TRUST_IMAGES = 500  # held-back images the temperature and the OOD threshold are fitted on (stratified subset)
MIN_TRUST_IMAGES = 20  # as train: fewer gives a temperature that may hurt new images
NO_FEATURE_OOD_REASON = ("a model made elsewhere brings no fit of its pooled features; only the input checks "
                         "(colour, noise, blank) apply")
NO_HEATMAP = "no heatmaps: an ONNX model made elsewhere has no class-activation head tumor-edge can read"


@dataclass
class TrustExport:
    model: Any  # what the converters convert
    extra_outputs: dict[str, OutputSpec] = field(default_factory=dict)  # role -> spec, for BundleMetadata
    calibration: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None  # the device's part: centres, threshold, output role
    notes: list[str] = field(default_factory=list)  # why something is absent


def trust_export(model, run_extra: dict[str, Any] | None = None, ood_params: Path | None = None) -> TrustExport:
    """The model to convert and the trust metadata, from the Keras model and what train recorded."""
    from tumor_edge.modelside.cam import NoCamHeadError, find_cam_head, heatmap_output_spec, trust_model

    run_extra = run_extra or {}
    calibration = run_extra.get("calibration") or {}
    result = TrustExport(model, calibration=calibration if calibration.get("temperature") is not None else None)
    if calibration.get("skipped"):
        result.notes.append(f"no calibration: {calibration['skipped']}")
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


def _held_back(source, seed: int):
    """(uint8 pixels, labels) of the held-back calibration images, or a reason string when too few."""
    held = source.validation
    count = len(held) if held is not None else 0
    if count < MIN_TRUST_IMAGES:
        return f"{count} held-back calibration images; at least {MIN_TRUST_IMAGES} are needed (give more --calib-data)"
    samples = stratified_subset(held.samples, TRUST_IMAGES, seed)
    loaded = load_pixels(samples, source.reference_preprocessing, "calibration: held-back images",
                         show_progress=False)
    if len(loaded.labels) < MIN_TRUST_IMAGES:
        return f"only {len(loaded.labels)} held-back images were readable"
    return loaded.pixels, loaded.labels


def _predict(model, pixels: np.ndarray, spec) -> np.ndarray:
    return np.concatenate([np.asarray(model.predict(scale(pixels[s:s + 32], spec), verbose=0), np.float64)
                           for s in range(0, len(pixels), 32)])


def fit_foreign_trust(source, seed: int = 0) -> dict[str, Any]:
    """{"calibration": ..., "ood": ...} as train records them, from the held-back calibration images; "ood" is
    the bundle's record for an ONNX model, else {"skipped": why}."""
    held = _held_back(source, seed)
    if isinstance(held, str):
        return {"calibration": {"method": None, "skipped": held}, "ood": {"skipped": held}}
    pixels, labels = held
    onnx = source.kind == "onnx"  # an ONNX file's own outputs (logits or probabilities) give its OOD score
    raw = _predict(source.raw_model if onnx else source.model, pixels, source.reference_preprocessing)
    calibration = fit_calibration(softmax(raw) if onnx and source.source_output == "logits" else raw, labels,
                                  None, None, None)
    calibration["fitted_on_data"] = source.validation.origin
    ood = fit_output_ood(source, raw, pixels, seed) if onnx else {"skipped": NO_FEATURE_OOD_REASON}
    return {"calibration": calibration, "ood": ood}


def fit_output_ood(source, raw: np.ndarray, pixels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The bundle's `ood` for a score computed from the class scores, with detection and false-alarm rates on
    generated sets (synthetic) beside the input checks' rates, as train measures its Mahalanobis score."""
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


def onnx_trust(fit: dict[str, Any]) -> TrustExport:
    """The trust fields of a foreign ONNX model from `fit_foreign_trust`: the temperature and the output-score OOD
    check (or why not), no heatmap."""
    calibration, ood = fit["calibration"], fit["ood"]
    trust = TrustExport(None, calibration=calibration if calibration.get("temperature") else None, notes=[NO_HEATMAP])
    if calibration.get("skipped"):
        trust.notes.append(f"no calibration: {calibration['skipped']}")
    if ood.get("skipped"):
        trust.notes.append(f"no output-score OOD check: {ood['skipped']} (only the input checks apply)")
    else:
        trust.ood = ood
        trust.extra_outputs = {OUTPUT_SCORE_ROLE: OutputSpec(OUTPUT_SCORE_ROLE, 1, ood["score"], ood["description"])}
    return trust
