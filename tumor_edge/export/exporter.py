"""`export_bundle(ExportConfig) -> ExportResult`: convert, prove parity, write the bundle.

The order is the point: validate everything cheap first (output folder, model, classes, images) so a mistake
costs seconds, not a conversion; then convert every row of the format table the plan lists (export/plan.py);
stamp the ONNX files with their metadata; open each file once through the runtime for parity, heatmap parity
and its reference record (export/file_checks.py); write metadata.json once, then parity.json, parity.md and the
model card. A bundle holds models only, nothing made for this machine.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.contracts.state import remember_last_bundle
from tumor_edge.errors import DatasetError, ModelError, OutputExistsError, ParityError, TumorEdgeError, first_line
from tumor_edge.export.bundle_writer import model_entries, prepare_out_dir, private_reports, stamp_onnx_files
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.context import (
    ExportContext,
    ExportedFile,
    forget_models,
    keras_outputs,
    load_and_keep,
    pixels_digest,
)
from tumor_edge.export.file_checks import HeatmapInputs, check_files
from tumor_edge.export.model_card import write_model_card
from tumor_edge.export.model_source import ModelSource, SourceOptions, stratified_subset
from tumor_edge.export.parity import ParityReport, parity_inputs, parity_report
from tumor_edge.export.parity_report import render_table, table_rows, write_reports
from tumor_edge.export.parity_stats import FAIL, NOT_PROVEN
from tumor_edge.export.plan import TENSORFLOW_ENV, Conversions, converted, is_skipped, plan_export
from tumor_edge.export.provenance import provenance
from tumor_edge.worker import Inline, Worker

log = logging.getLogger("tumor_edge.export")


@dataclass
class ExportResult:
    out: Path
    metadata: BundleMetadata
    files: list[ExportedFile]
    parity: ParityReport | None
    table: str
    seconds: float
    warnings: list[str]
    signature: Path | None = None  # model.sig, when the export signed the bundle (config.sign_key)


def export_bundle(config: ExportConfig) -> ExportResult:
    """Export `config.source` to a bundle at `config.out`; raises ParityError (files kept) when parity fails and
    ModelError (the other files kept) when a format failed to convert."""
    started = time.perf_counter()
    out = config.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.force:
        raise needs_option(OutputExistsError("bundle folder exists and is not empty; pass --force (force=True in "
                                             "Python) to overwrite it", out), "force")
    if config.sign_key is not None:  # a key that cannot sign is found now, not after the conversions
        from tumor_edge.signing.sign import check_signing_key

        check_signing_key(config.sign_key)
    plan_worker = Worker("tensorflow", env=TENSORFLOW_ENV) if config.isolate and not config.debug else Inline()
    with tempfile.TemporaryDirectory(prefix="tumor-edge-export-") as tmp, plan_worker as worker:
        work = Path(tmp)
        options = SourceOptions(classes=config.classes, image_size=config.image_size, preprocess=config.preprocess,
                                resize=config.resize, output=config.output, layout=config.layout,
                                calib_data=config.calib_data, test_data=config.test_data, seed=config.seed)
        try:
            # In the TensorFlow worker: the model stays loaded there for the converters; this process never
            # imports TensorFlow.
            source = worker.submit(converted, load_and_keep, "load", config.source, options, name="load").wait()
            warnings = list(source.warnings)
            _check_images(source, config)
            if not config.parity:
                warnings.append("parity NOT proven: the exported files were not checked against Keras")
            for line in warnings:
                log.warning("warning: %s", line)
            prepare_out_dir(out, config.force)
            plan = plan_export(config, source.kind)
            conversions = Conversions(ExportContext(config, source, out, work), plan, worker).start()
            keras = _queue_keras_outputs(worker, source, config)  # the worker's last job, after its converters
            conversions.finish_queued()
            keras = _keras_outputs(keras, worker, source, config)
            worker.close()  # TensorFlow's memory goes back before onnxruntime quantizes and parity runs
            rows = conversions.finish()
            metadata, report = _check_and_describe(out, source, rows, config, keras)
        finally:
            forget_models()
    failed = [r for r in rows if not r.ok and not is_skipped(r)]
    metadata.provenance["export_seconds"] = round(time.perf_counter() - started, 1)
    metadata.provenance["step_seconds"] = {r.file: round(r.seconds, 3) for r in rows}  # the time each job ran
    metadata.write(out)
    write_model_card(out, metadata.to_dict(), report.to_dict() if report else None)
    table = render_table(table_rows(report, _keras_row(source, report), [
        {"file": r.file, "format": r.format, "precision": r.precision,
         "size_bytes": (out / r.file).stat().st_size if r.ok else None,
         "status": "not checked (no parity)" if r.ok else r.status} for r in rows]))
    if report is not None:
        write_reports(out, report, table_rows(report, _keras_row(source, report), [
            {"file": r.file, "format": r.format, "precision": r.precision,
             "size_bytes": (out / r.file).stat().st_size if r.ok else None, "status": r.status}
            for r in rows if r.ok or is_skipped(r)]))
    result = ExportResult(out, metadata, rows, report, table, time.perf_counter() - started, warnings)
    error: TumorEdgeError | None = None
    if failed:
        error = ModelError("export failed for " + "; ".join(f"{r.file} ({r.status})" for r in failed)
                           + f" (other files kept in {out})")
    elif report is not None and report.verdict == FAIL:
        error = ParityError(report.failure_line(out))
    elif report is not None and report.verdict == NOT_PROVEN and not config.allow_unproven:
        error = needs_option(ParityError(report.failure_line(out) + "; allowing unproven parity accepts it"),
                             "allow_unproven")
    if report is not None and report.verdict == NOT_PROVEN and error is None:
        log.warning("warning: %s", report.failure_line(out))
    if error is not None:
        error.table = table  # the CLI prints it before the error line: the numbers behind the failure
        raise error
    result.signature = sign_export(out, config.sign_key)
    remember_last_bundle(out)
    return result


def _check_and_describe(out: Path, source: ModelSource, rows: list[ExportedFile], config: ExportConfig,
                        keras: dict[str, Any] | None) -> tuple[BundleMetadata, ParityReport | None]:
    """The bundle's metadata, each file stamped, hashed and checked (one opening each): everything metadata.json
    records but the export's own timings."""
    trust = source.trust
    metadata = BundleMetadata(classes=list(source.classes), preprocessing=source.preprocessing,
                              output="probabilities", extra_outputs=dict(trust.extra_outputs) if trust else {},
                              calibration=trust.calibration if trust else None, ood=trust.ood if trust else None,
                              provenance=provenance(source, "pending" if config.parity else
                                                    "not proven: exported without parity"))
    stamp_onnx_files(out, rows, metadata)
    metadata.models = model_entries(out, rows, None)
    inputs = heatmap_inputs = None
    if config.parity and metadata.models:
        samples = stratified_subset(source.test.samples, config.test_count, config.seed)
        temperature = (metadata.calibration or {}).get("temperature")
        inputs = parity_inputs(lambda pixels: _keras_output(keras, "reference", pixels),
                               source.reference_preprocessing, samples, source.test.origin, source.classes,
                               temperature, config.show_progress)
        if "heatmap" in metadata.extra_outputs:
            heatmap_inputs = _heatmap_inputs(source, samples, config, keras)
    log.info("export step checks start")
    checks = check_files(out, rows, metadata, config, inputs, heatmap_inputs)
    log.info("export step checks done")
    report = parity_report(inputs, checks.parity, config.thresholds, source.classes, config.batch_size) \
        if inputs is not None else None
    if report is not None:
        metadata.provenance["parity"] = {"pass": "proven", "fail": "failed"}.get(report.verdict, report.verdict)
    metadata.models = model_entries(out, rows, {f.file: f.verdict for f in report.files} if report else None)
    metadata.metrics = {"parity": report.summary() if report else
                        {"passed": None, "proven": False, "reason": "exported without parity"},
                        **private_reports(rows)}
    if checks.heatmaps is not None:
        metadata.metrics["heatmap_parity"] = checks.heatmaps
    if metadata.models:
        metadata.reference = checks.reference
    return metadata, report


def sign_export(out: Path, sign_key: Path | None) -> Path | None:
    """Sign the finished bundle (every file written, parity accepted): model.sig, or None without a key. A
    failed or unproven export is not signed: a signature vouches for a bundle export accepted."""
    if sign_key is None:
        return None
    from tumor_edge.signing.sign import sign_bundle

    # force: the folder is this export's own (prepare_out_dir removed an older signature with the other files)
    return sign_bundle(out, sign_key, force=True).signature


def _queue_keras_outputs(worker, source: ModelSource, config: ExportConfig):
    """Queue the Keras model's parity outputs (probabilities and, with a heatmap output, heatmaps on the test
    images) as the worker's job after its converters: the model is loaded there already, and this process does
    its own work meanwhile. None when parity is off."""
    if not config.parity or source.test is None or not source.test.samples:
        return None
    heatmap_spec = source.preprocessing if source.trust and "heatmap" in source.trust.extra_outputs else None
    samples = stratified_subset(source.test.samples, config.test_count, config.seed)
    return worker.submit(converted, keras_outputs, "keras", source, samples, source.reference_preprocessing,
                         heatmap_spec, name="keras")


def _keras_outputs(job, worker, source: ModelSource, config: ExportConfig) -> dict[str, Any] | None:
    """The queued job's Keras outputs; once more, in a fresh worker, when the job failed (a converter before it
    may have taken the worker down: that row fails, parity still runs)."""
    if job is None:
        return None
    try:
        return job.wait()
    except Exception as err:  # noqa: BLE001 - computed again; a second failure is the export's error
        log.info("the Keras outputs failed (%s); computing them again", first_line(err))
        return _queue_keras_outputs(worker, source, config).wait()


def _keras_output(keras: dict[str, Any], name: str, pixels) -> Any:
    """The Keras job's `name` output, which must have been computed on exactly these pixels."""
    if keras.get(f"{name}_digest") != pixels_digest(pixels):
        raise ModelError(f"the Keras {name} was computed on other test images than the exported files'")
    return keras[name]


def _heatmap_inputs(source: ModelSource, samples, config: ExportConfig, keras: dict[str, Any]) -> HeatmapInputs:
    """The parity test images at the bundle's preprocessing and the Keras model's heatmaps on them."""
    from tumor_edge.data.dataset import load_pixels

    pixels = load_pixels(samples, source.preprocessing, "loading test images for heatmap parity",
                         show_progress=config.show_progress).pixels
    return HeatmapInputs(pixels, _keras_output(keras, "heatmaps", pixels))


def _keras_row(source: ModelSource, report: ParityReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    model_file = source.model_file
    size = model_file.stat().st_size / 1e6 if model_file.is_file() else None
    return {"label": "onnx (own)" if source.kind == "onnx" else "keras",  # a foreign ONNX file is its own reference
            "file": model_file.name, "size_mb": size, "accuracy": report.reference["accuracy"],
            "macro_auc": report.reference["macro_auc"], "ms_per_image": report.reference.get("ms_per_image")}


def _check_images(source: ModelSource, config: ExportConfig) -> None:
    """Fail before converting anything when the images a step needs are missing."""
    if "int8" in config.options and (source.calibration is None or not source.calibration.samples):
        raise needs_option(DatasetError("int8 export needs calibration images from the training split (a dataset "
                                        "root or a folder of class folders)", source.path), "calib_data")
    if config.parity and (source.test is None or not source.test.samples):
        where = source.test.origin if source.test is not None else None
        if where:
            raise DatasetError("no test images in " + where, source.path)
        raise needs_option(DatasetError("parity needs test images (or turn parity off to skip the proof)",
                                        source.path), "test_data")


__all__ = ["ExportConfig", "ExportResult", "export_bundle"]
