"""`export_bundle(ExportConfig) -> ExportResult`: convert, prove parity, write the bundle.

The order is the point: validate everything cheap first (output folder, model, classes, images) so a mistake
costs seconds, not a conversion; then convert every row of the format table the plan lists (export/plan.py);
stamp the ONNX files with their metadata, so a lone .onnx classifies on its own; open each file once through the
runtime for parity, heatmap parity and its reference record (parity.check_files); write metadata.json once, then
parity.json, parity.md and the model card. A bundle holds models only, nothing made for this machine. File names
come from the format table and `contracts.bundle`; none is spelled here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tumor_edge import __version__
from tumor_edge.contracts.bundle import (
    BUNDLE_DOCUMENTS,
    BundleMetadata,
    ModelEntry,
    describe_file,
    member_path,
    remember_last_bundle,
)
from tumor_edge.contracts.formats import bundle_model_files
from tumor_edge.data.dataset import load_pixels
from tumor_edge.errors import DatasetError, ModelError, OutputExistsError, ParityError, TumorEdgeError, first_line
from tumor_edge.export.config import ExportConfig, needs_option
from tumor_edge.export.context import (
    ExportContext,
    ExportedFile,
    forget_models,
    keras_outputs,
    load_and_keep,
    pixels_digest,
)
from tumor_edge.export.formats.onnx import onnx_metadata
from tumor_edge.export.model_card import write_model_card
from tumor_edge.export.parity import ParityReport, check_files, parity_inputs
from tumor_edge.export.parity_report import render_table, table_rows, write_reports
from tumor_edge.export.parity_stats import FAIL, NOT_PROVEN
from tumor_edge.export.plan import TENSORFLOW_ENV, Conversions, converted, is_skipped, plan_export
from tumor_edge.export.samples import stratified_subset
from tumor_edge.export.source import ModelSource
from tumor_edge.machine import host, package_versions
from tumor_edge.outdir import prepare_out_dir as _prepare_out_dir
from tumor_edge.runtime import external_data_locations
from tumor_edge.signing import SIGNATURE_FILE
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
        try:
            # In the TensorFlow worker: the model stays loaded there for the converters; this process never
            # imports TensorFlow.
            source = worker.submit(converted, load_and_keep, "load", config, name="load").wait()
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
    entries = [{"file": r.file, "format": r.format, "precision": r.precision,
                "size_bytes": (out / r.file).stat().st_size if r.ok else None,
                "status": "not checked (no parity)" if r.ok else r.status} for r in rows]
    table = render_table(table_rows(report, _keras_row(source, report), entries))
    if report is not None:  # the report's table leaves out failed rows (the error says why)
        write_reports(out, report, table_rows(report, _keras_row(source, report),
                                              [e for e, r in zip(entries, rows) if r.ok or is_skipped(r)]))
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
                              provenance=_provenance(source, "pending" if config.parity else
                                                    "not proven: exported without parity"))
    stamp_onnx_files(out, rows, metadata)
    metadata.models = model_entries(out, rows)
    inputs = heatmap_inputs = None
    if config.parity and metadata.models:
        samples = stratified_subset(source.test.samples, config.test_count, config.seed)
        temperature = (metadata.calibration or {}).get("temperature")
        inputs = parity_inputs(lambda pixels: _keras_output(keras, "reference", pixels),
                               source.reference_preprocessing, samples, source.test.origin, source.classes,
                               temperature, config.show_progress)
        if "heatmap" in metadata.extra_outputs:  # the test images at the bundle's preprocessing, Keras' maps on them
            pixels = load_pixels(samples, source.preprocessing, "loading test images for heatmap parity",
                                 show_progress=config.show_progress).pixels
            heatmap_inputs = pixels, _keras_output(keras, "heatmaps", pixels)
    log.info("export step checks start")
    private = private_reports(rows)
    metadata.metrics = dict(private)  # the int8 report's reference seed, for the reference record
    files, heatmap_parity, reference = check_files(out, metadata, config, inputs, heatmap_inputs)
    log.info("export step checks done")
    report = None if inputs is None else ParityReport(
        inputs.origin, len(inputs.paths), inputs.skipped, inputs.metrics, files, config.thresholds,
        list(source.classes), config.batch_size, inputs.labels, inputs.raw, inputs.temperature)
    if report is not None:
        metadata.provenance["parity"] = {"pass": "proven", "fail": "failed"}.get(report.verdict, report.verdict)
        for checked in report.files:
            metadata.models[checked.file].extra["parity"] = checked.verdict
    metadata.metrics = {"parity": report.summary() if report else
                        {"passed": None, "proven": False, "reason": "exported without parity"}, **private}
    if heatmap_parity is not None:
        metadata.metrics["heatmap_parity"] = heatmap_parity
    if metadata.models:
        metadata.reference = reference
    return metadata, report


def _provenance(source: ModelSource, parity_state: str) -> dict[str, Any]:
    """Where the bundle came from: versions, machine, source model and hash, training run and data fingerprint,
    and how the model's output was settled."""
    run = source.run_config
    versions = package_versions()
    versions["tumor-edge"] = versions.get("tumor-edge") or __version__  # from the code when run from a checkout
    return {
        "tumor_edge_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": source.kind, "path": str(source.path.resolve()), "sha256": source.sha256},
        "run_dir": str(source.run_dir.resolve()) if source.run_dir else None,
        "data_fingerprint": run.data_fingerprint if run else None,
        "data_root": run.data_root if run else None,
        "trained": run.created if run else None,
        "training_versions": run.versions if run else None,
        "versions": versions,
        "host": host(),
        "output": {"model_output": source.source_output, "decided_by": source.output_decided_by,
                   "softmax_appended": source.softmax_appended},
        "parity": parity_state,
    }


def prepare_out_dir(out: Path, force: bool) -> Path:
    """Refuse a non-empty folder without force; with it, remove only the files export writes: the table's model
    files, the bundle documents, the signature (a new export's files would never match an old signature)."""
    return _prepare_out_dir(out, force, {*bundle_model_files(), *BUNDLE_DOCUMENTS, SIGNATURE_FILE}, "bundle")


def stamp_onnx_files(out: Path, rows: Sequence[ExportedFile], metadata: BundleMetadata) -> None:
    """Every ONNX file carries the bundle's essentials in its metadata_props (a foreign file's own keys kept) and
    its doc string, so it classifies on its own."""
    import onnx

    doc = (f"tumor-edge {metadata.name}: classes {', '.join(metadata.classes)}; "
           f"{metadata.preprocessing.to_dict()['description']}. {metadata.intended_use}")
    for row in rows:
        if row.ok and row.engine == "onnxruntime":
            model = onnx.load(str(out / row.file))
            ours = onnx_metadata(metadata, row.file, row.precision)
            onnx.helper.set_model_props(model, {p.key: p.value for p in model.metadata_props} | ours)
            model.doc_string = doc
            onnx.save(model, str(out / row.file))


def model_entries(out: Path, rows: Sequence[ExportedFile]) -> dict[str, ModelEntry]:
    """metadata.json's `models`: each file written, hashed, with every external data file it reads (hashed too:
    the runtime refuses a model naming data its entry does not list), the converter's facts, "not checked" for
    its parity verdict until parity gives it."""
    entries = {}
    for row in [r for r in rows if r.ok]:
        extra = {k: v for k, v in row.extra.items() if not k.startswith("_")} | {"parity": "not checked"}
        files = tuple(external_files(out, row.file)) if row.engine == "onnxruntime" else ()
        entries[row.file] = describe_file(out / row.file, row.format, row.precision, files=files, **extra)
    return entries


def external_files(out: Path, file: str) -> list[str]:
    """The external data files the ONNX model `file` in `out` reads. Each must be a plain name in the bundle
    folder, the only place the runtime accepts one from; anything else is an error here, not a bundle that
    no device will run."""
    names = external_data_locations(out / file)
    for name in names:
        member_path(out, name)  # a plain name, inside the folder (BundleIntegrityError otherwise)
        if not (out / name).is_file():
            raise ModelError(f"its external data {name!r} was not written beside it", out / file)
    return names


def private_reports(rows: Sequence[ExportedFile]) -> dict[str, Any]:
    """The bulky facts converters return under "_" keys (the int8 calibration comparison), for `metrics`."""
    return {f"{row.key.replace('-', '_')}{key.replace('_report', '_calibration')}": value
            for row in rows if row.ok for key, value in row.extra.items() if key.startswith("_")}


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
    if not config.parity or not source.test:
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


def _keras_row(source: ModelSource, report: ParityReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    model_file = source.model_file
    return {"label": "onnx (own)" if source.kind == "onnx" else "keras",  # a foreign ONNX file is its own reference
            "file": model_file.name, "size_bytes": model_file.stat().st_size if model_file.is_file() else None,
            "accuracy": report.reference["accuracy"],
            "macro_auc": report.reference["macro_auc"], "ms_per_image": report.reference.get("ms_per_image")}


def _check_images(source: ModelSource, config: ExportConfig) -> None:
    """Fail before converting anything when the images a step needs are missing."""
    if "int8" in config.options and not source.calibration:
        raise needs_option(DatasetError("int8 export needs calibration images from the training split (a dataset "
                                        "root or a folder of class folders)", source.path), "calib_data")
    if config.parity and not source.test:
        if source.test is not None and source.test.origin:
            raise DatasetError("no test images in " + source.test.origin, source.path)
        raise needs_option(DatasetError("parity needs test images (or turn parity off to skip the proof)",
                                        source.path), "test_data")
