"""A foreign ONNX file as a `ModelSource`: checked and described (export/foreign_onnx.py), its output type found
from its outputs, its images read, and its trust fields fitted on the held-back calibration images
(export/foreign_trust.py). The onnx-fp32 row then rewrites the graph; no TensorFlow is loaded on this route."""

from __future__ import annotations

from pathlib import Path

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES, Preprocessing
from tumor_edge.errors import ModelError
from tumor_edge.export.model_source import (
    ModelSource,
    SourceOptions,
    calibration_from_folder,
    checked_choice,
    needs_option,
    require_foreign_options,
    test_from_folder,
)
from tumor_edge.export.outputs import probe_outputs, rows_are_probabilities, settle_output

NO_HEATMAP = "no heatmaps: an ONNX model made elsewhere has no class-activation head tumor-edge can read"


def load_onnx_source(path: Path, options: SourceOptions) -> ModelSource:
    from tumor_edge.export.foreign_onnx import inspect_onnx

    require_foreign_options(path, options)
    classes = [str(c) for c in options.classes]
    facts = inspect_onnx(path, len(classes), options.image_size, options.layout)
    spec = Preprocessing(height=facts.height or options.image_size, width=facts.width or options.image_size,
                         resize=checked_choice(options.resize or "bilinear", RESIZE_NAMES, "resize"),
                         scaling=checked_choice(options.preprocess, SCALING_NAMES, "scaling"))
    calibration = validation = test = None
    if options.calib_data:
        calibration, validation = calibration_from_folder(options.calib_data, classes, options.seed)
    if options.test_data:
        test = test_from_folder(options.test_data, classes)
    source = ModelSource(
        path=path, kind="onnx", classes=classes, preprocessing=spec, reference_preprocessing=spec,
        source_output="probabilities", output_decided_by="", sha256=sha256_file(path), calibration=calibration,
        validation=validation, test=test, onnx=facts, seed=options.seed)
    probe = probe_outputs(source.raw_model, source)
    if probe.ndim != 2 or probe.shape[1] != len(classes):  # a dynamic output width is checked on real outputs
        raise needs_option(ModelError(f"the model gives outputs of shape {probe.shape[1:]} per image but "
                                      f"{len(classes)} classes were given", path), "classes")
    if options.output != "auto":
        return settle_output(source, options.output, "--output", stated=True)
    probs = rows_are_probabilities(probe)
    return settle_output(source, "probabilities" if probs else "logits",
                         "outputs are rows in [0, 1] that sum to 1" if probs
                         else "outputs are not rows of probabilities", stated=False)


def settle_onnx_trust(source: ModelSource) -> ModelSource:
    """The trust fields of a foreign ONNX model: the temperature and the output-score OOD fit from the held-back
    images (or why not), no heatmap; the notes become export warnings."""
    from tumor_edge.calibration.output_scores import OUTPUT_SCORE_ROLE
    from tumor_edge.contracts.bundle import OutputSpec
    from tumor_edge.export.trust_outputs import TrustExport

    fit = source._foreign_trust()
    calibration, ood = fit["calibration"], fit["ood"]
    trust = TrustExport(None, calibration=calibration if calibration.get("temperature") else None, notes=[NO_HEATMAP])
    if calibration.get("skipped"):
        trust.notes.append(f"no calibration: {calibration['skipped']}")
    if ood.get("skipped"):
        trust.notes.append(f"no output-score OOD check: {ood['skipped']} (only the input checks apply)")
    else:
        trust.ood = ood
        trust.extra_outputs = {OUTPUT_SCORE_ROLE: OutputSpec(OUTPUT_SCORE_ROLE, 1, ood["score"], ood["description"])}
    source.trust = trust
    source.warnings.extend(trust.notes)
    return source


__all__ = ["NO_HEATMAP", "load_onnx_source", "settle_onnx_trust"]
