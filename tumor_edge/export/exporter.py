"""`export_bundle(ExportConfig) -> ExportResult`: convert, quantize, prove parity, write the bundle.

A registry of format exporters (one function per file, ultralytics-style) run through one wrapper that times
each step and turns a converter's failure into a row of the final table instead of a traceback. Order:
validate everything cheap first (output folder, model, classes, images) so a mistake costs seconds, not a
conversion; then convert; stamp the ONNX files with their metadata; pre-optimise them for this machine; run
parity through the runtime; write metadata.json, parity.json and parity.md; print the table.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from tumor_edge import __version__
from tumor_edge.contracts.bundle import (
    BUNDLE_DOCUMENTS,
    BundleMetadata,
    ModelEntry,
    describe_file,
)
from tumor_edge.contracts.formats import BUNDLE_MODEL_FILES
from tumor_edge.contracts.state import remember_last_bundle
from tumor_edge.errors import DatasetError, ModelError, OutputExistsError, ParityError, TumorEdgeError, first_line
from tumor_edge.export.parity import (
    ParityReport,
    ParityThresholds,
    render_table,
    run_parity,
    table_rows,
    write_reports,
)
from tumor_edge.export.quantize import QuantizationConfig
from tumor_edge.export.samples import stratified_subset
from tumor_edge.export.source import ModelSource, SourceOptions, load_source
from tumor_edge.machine import host, package_versions
from tumor_edge.outdir import prepare_out_dir as _prepare
from tumor_edge.progress import progress

FORMATS = ("onnx", "tflite")


@dataclass
class ExportConfig:
    """Everything `tumor-edge export` takes; the CLI is a thin layer over this."""

    source: Path
    out: Path
    formats: tuple[str, ...] = FORMATS
    int8: bool = False
    fp16: bool = False
    force: bool = False
    # What a foreign model needs said about it (a run folder says it itself).
    classes: list[str] | None = None
    image_size: int | None = None
    preprocess: str | None = None
    resize: str | None = None
    output: str = "auto"
    # Images.
    calib_data: Path | None = None
    calib_count: int = 200  # training-split images for int8 calibration (stratified)
    select_count: int = 200  # validation images the calibration methods are compared on
    test_data: Path | None = None
    test_count: int | None = None  # None: the whole test split
    # Checks and recipes.
    parity: bool = True
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    optimize_onnx: bool = True  # write pre-optimised twins (faster cold start on this machine)
    tflite_full_integer: bool = False  # int8 TFLite with int8 I/O and an int8 softmax (accelerators)
    opset: int = 17
    seed: int = 0
    batch_size: int = 16
    show_progress: bool = True
    debug: bool = False  # let a converter's exception propagate with its traceback

    def __post_init__(self) -> None:
        self.source, self.out = Path(self.source), Path(self.out)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise TumorEdgeError(f"--formats must be among {', '.join(FORMATS)}, not {', '.join(unknown) or 'none'}")
        if self.calib_count < 1:
            raise TumorEdgeError("--calib-count must be at least 1")


@dataclass
class ExportedFile:
    file: str
    format: str
    precision: str
    seconds: float = 0.0
    status: str = "ok"  # "ok" or "failed: <reason>"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class ExportResult:
    out: Path
    metadata: BundleMetadata
    files: list[ExportedFile]
    parity: ParityReport | None
    table: str
    seconds: float
    warnings: list[str]


@dataclass
class ExportContext:
    """State the format exporters share: the source, folders, and what is expensive to make twice."""

    config: ExportConfig
    source: ModelSource
    out: Path
    work: Path
    results: dict[str, ExportedFile] = field(default_factory=dict)
    background: dict[str, Any] = field(default_factory=dict)  # file -> job with wait() / cancel()
    _saved_model: Path | None = None
    _calibration: Any = None
    _validation: Any = None

    @property
    def spec(self):
        return self.source.preprocessing

    def saved_model(self) -> Path:
        from tumor_edge.export.tflite_export import export_saved_model

        if self._saved_model is None:
            self._saved_model = export_saved_model(self.source.model, self.work / "saved_model")
        return self._saved_model

    def calibration(self):
        """Training-split pixels (stratified subset), decoded by the runtime's code at the bundle's size."""
        from tumor_edge.data.dataset import load_pixels

        if self._calibration is None:
            samples = stratified_subset(self.source.calibration.samples, self.config.calib_count, self.config.seed)
            self._calibration = load_pixels(samples, self.spec, "loading calibration images",
                                            show_progress=self.config.show_progress)
            if len(self._calibration.labels) == 0:
                raise DatasetError(f"no readable calibration images ({self.source.calibration.origin})")
        return self._calibration

    def validation(self):
        from tumor_edge.data.dataset import load_pixels

        if self._validation is None and self.source.validation:
            samples = stratified_subset(self.source.validation.samples, self.config.select_count,
                                        self.config.seed)
            self._validation = load_pixels(samples, self.spec, "loading validation images",
                                           show_progress=self.config.show_progress)
        return self._validation

    def needs_ok(self, name: str) -> Path:
        done = self.results.get(name)
        if done is None or not done.ok:
            raise ModelError(f"needs {name}, which was not exported")
        return self.out / name


# --------------------------------------------------------------------------------------- format exporters


def _onnx_fp32(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.onnx_export import export_onnx_fp32

    export_onnx_fp32(ctx.source.model, ctx.spec.height, ctx.spec.width, dst, ctx.config.opset)
    return {"opset": ctx.config.opset, "converter": "tf2onnx"}


def _onnx_fp16(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.onnx_export import export_onnx_fp16

    export_onnx_fp16(ctx.needs_ok("model_fp32.onnx"), dst)
    return {"io": "float32", "note": "runs on onnxruntime's CPU provider; half the size, not faster on x86"}


def _onnx_int8(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.quantize import quantize_onnx_int8

    src = ctx.needs_ok("model_fp32.onnx")
    calib = ctx.calibration()
    val = ctx.validation()
    report = quantize_onnx_int8(src, dst, calib.pixels, val.pixels if val else None, val.labels if val else None,
                                len(ctx.source.classes), ctx.spec, ctx.config.quantization, ctx.work,
                                ctx.config.show_progress)
    q = ctx.config.quantization
    return {"quantization": "onnxruntime static, QDQ", "calibration": report.chosen,
            "per_channel": q.per_channel, "reduce_range": q.reduce_range, "activations": "uint8",
            "weights": "int8", "float_nodes": report.float_nodes, "_report": report.to_dict()}


def _tflite_fp32(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp32

    export_tflite_fp32(ctx.saved_model(), dst)
    return {"io": "float32"}


def _tflite_fp16(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp16

    export_tflite_fp16(ctx.saved_model(), dst)
    return {"io": "float32", "weights": "float16"}


def _tflite_int8(ctx: ExportContext, dst: Path) -> dict[str, Any]:
    """Starts the conversion in a background process (see tflite_export.BackgroundInt8); joined at the end."""
    import numpy as np

    from tumor_edge.export.tflite_export import BackgroundInt8

    pixels = ctx.calibration().pixels
    npy = ctx.work / "calibration_pixels.npy"
    np.save(npy, pixels)
    full = ctx.config.tflite_full_integer
    ctx.background[dst.name] = BackgroundInt8(ctx.saved_model(), npy, ctx.spec.to_dict(), dst, full)
    if full:
        return {"io": "int8", "quantization": "full integer (TFLITE_BUILTINS_INT8)",
                "calibration_images": int(len(pixels))}
    return {"io": "float32", "quantization": "int8 ops, softmax in float (selective quantization)",
            "float_ops": ["SOFTMAX"], "calibration_images": int(len(pixels))}


@dataclass(frozen=True)
class FormatExporter:
    format: str
    precision: str
    file: str
    needs: str | None  # the flag that enables it: "int8", "fp16" or None (always)
    run: Callable[[ExportContext, Path], dict[str, Any]]
    background: bool = False  # `run` starts a job in ctx.background; it is joined after the other steps


EXPORTERS: tuple[FormatExporter, ...] = (
    FormatExporter("onnx", "fp32", "model_fp32.onnx", None, _onnx_fp32),
    FormatExporter("onnx", "fp16", "model_fp16.onnx", "fp16", _onnx_fp16),
    FormatExporter("onnx", "int8", "model_int8.onnx", "int8", _onnx_int8),
    FormatExporter("tflite", "fp32", "model_fp32.tflite", None, _tflite_fp32),
    FormatExporter("tflite", "fp16", "model_fp16.tflite", "fp16", _tflite_fp16),
    FormatExporter("tflite", "int8", "model_int8.tflite", "int8", _tflite_int8, background=True),
)
BUNDLE_FILES = tuple(e.file for e in EXPORTERS)


def selected_exporters(config: ExportConfig) -> list[FormatExporter]:
    """The exporters the flags ask for, background jobs first so they overlap everything else."""
    flags = {"int8": config.int8, "fp16": config.fp16}
    chosen = [e for e in EXPORTERS if e.format in config.formats and (e.needs is None or flags[e.needs])]
    return sorted(chosen, key=lambda e: not e.background)


def _run_step(ctx: ExportContext, exporter: FormatExporter) -> ExportedFile:
    """Time one conversion; a converter's exception becomes a failed row, not a traceback."""
    dst = ctx.out / exporter.file
    t0 = time.perf_counter()
    row = ExportedFile(exporter.file, exporter.format, exporter.precision)
    try:
        row.extra = exporter.run(ctx, dst)
    except (KeyboardInterrupt, DatasetError):
        raise
    except Exception as err:  # tf2onnx, TFLite and onnxruntime raise many unrelated types
        if ctx.config.debug:
            raise
        dst.unlink(missing_ok=True)
        row.status = f"failed: {first_line(err)}"
    row.seconds = time.perf_counter() - t0
    ctx.results[exporter.file] = row
    return row


def _join_background(ctx: ExportContext) -> None:
    for name, job in list(ctx.background.items()):
        row = ctx.results[name]
        t0 = time.perf_counter()
        try:
            job.wait()
        except Exception as err:  # the child's error line
            (ctx.out / name).unlink(missing_ok=True)
            row.status = f"failed: {first_line(err)}"
        row.seconds += time.perf_counter() - t0  # start-up plus the time the rest of the export did not hide
        row.extra["background"] = True
        del ctx.background[name]


# ---------------------------------------------------------------------------------------------- the bundle


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty folder without force; with it, remove only files a bundle consists of."""
    _prepare(out, force, _is_bundle_file, "bundle")


def _is_bundle_file(name: str) -> bool:
    return (name in BUNDLE_MODEL_FILES or name in BUNDLE_DOCUMENTS
            or (name.startswith("model_") and name.endswith((".onnx", ".tflite"))))


def provenance(source: ModelSource, config: ExportConfig, parity_state: str) -> dict[str, Any]:
    run = source.run_config
    return {
        "tumor_edge_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": source.kind, "path": str(source.path.resolve()), "sha256": source.sha256},
        "run_dir": str(source.run_dir.resolve()) if source.run_dir else None,
        "data_fingerprint": run.get("data_fingerprint"),
        "data_root": run.get("data_root"),
        "trained": run.get("created"),
        "training_versions": run.get("versions"),
        "versions": package_versions(),
        "host": host(),
        "output": {"model_output": source.source_output, "decided_by": source.output_decided_by,
                   "softmax_appended": source.softmax_appended},
        "parity": parity_state,
    }


def _metadata(source: ModelSource, config: ExportConfig, parity_state: str) -> BundleMetadata:
    return BundleMetadata(classes=list(source.classes), preprocessing=source.preprocessing,
                          output="probabilities", provenance=provenance(source, config, parity_state))


def _stamp_onnx_files(ctx: ExportContext, metadata: BundleMetadata) -> None:
    from tumor_edge.export.onnx_export import onnx_metadata, stamp_onnx

    for row in ctx.results.values():
        if row.ok and row.format == "onnx":
            doc = (f"tumor-edge {metadata.name}: classes {', '.join(metadata.classes)}; "
                   f"{metadata.preprocessing.to_dict()['description']}. {metadata.intended_use}")
            stamp_onnx(ctx.out / row.file, onnx_metadata(metadata, row.file, row.precision), doc)


def _optimize_onnx_files(ctx: ExportContext) -> list[ExportedFile]:
    """Pre-optimised twins (runtime.backends.save_optimized_model), when the runtime offers it."""
    try:
        from tumor_edge.contracts.bundle import optimized_model_name
        from tumor_edge.runtime import backends
    except ImportError:
        return []
    save = getattr(backends, "save_optimized_model", None)
    if save is None:
        return []
    target = backends.machine_target() if hasattr(backends, "machine_target") else {}
    twins = []
    for row in list(ctx.results.values()):
        if not (row.ok and row.format == "onnx"):
            continue
        name = optimized_model_name(row.file)
        t0 = time.perf_counter()
        twin = ExportedFile(name, "onnx", row.precision,
                            extra={"ort_optimized_from": row.file, "optimized_for": target})
        try:
            save(ctx.out / row.file, ctx.out / name)
        except TumorEdgeError as err:
            twin.status = f"failed: {err}"
        twin.seconds = time.perf_counter() - t0
        twins.append(twin)
    return twins


def _entries(ctx: ExportContext, rows: list[ExportedFile], report: ParityReport | None) -> dict[str, ModelEntry]:
    checked = {f.file: f for f in report.files} if report else {}
    entries = {}
    for row in rows:
        if not row.ok:
            continue
        extra = {k: v for k, v in row.extra.items() if not k.startswith("_")}
        if row.file in checked:
            extra["parity"] = "pass" if checked[row.file].passed else "fail"
        elif "ort_optimized_from" not in extra:
            extra["parity"] = "not checked"
        entries[row.file] = describe_file(ctx.out / row.file, row.format, row.precision, **extra)
    return entries


def export_bundle(config: ExportConfig) -> ExportResult:
    """Export `config.source` to a bundle at `config.out`; raises ParityError (files kept) when parity fails."""
    started = time.perf_counter()
    out = config.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.force:
        raise OutputExistsError("bundle folder exists and is not empty; pass --force to overwrite it", out)
    source = load_source(config.source, SourceOptions(
        classes=config.classes, image_size=config.image_size, preprocess=config.preprocess, resize=config.resize,
        output=config.output, calib_data=config.calib_data, test_data=config.test_data, seed=config.seed))
    warnings = list(source.warnings)
    _check_images(source, config)
    if not config.parity:
        warnings.append("parity NOT proven (--no-parity): the exported files were not checked against Keras")
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    prepare_out_dir(out, config.force)
    exporters = selected_exporters(config)
    with tempfile.TemporaryDirectory(prefix="tumor-edge-export-") as work:
        ctx = ExportContext(config, source, out, Path(work))
        try:
            rows = [_run_step(ctx, e) for e in progress(exporters, "exporting", length=len(exporters),
                                                        enabled=config.show_progress)]
            _join_background(ctx)
        finally:
            for job in ctx.background.values():
                job.cancel()
        rows = [ctx.results[e.file] for e in EXPORTERS if e.file in ctx.results]
    failed = [r for r in rows if not r.ok]
    parity_state = "not proven: exported with --no-parity" if not config.parity else "pending"
    metadata = _metadata(source, config, parity_state)
    _stamp_onnx_files(ctx, metadata)
    twins = _optimize_onnx_files(ctx) if config.optimize_onnx else []
    metadata.models = _entries(ctx, rows + twins, None)
    metadata.write(out)
    report = None
    if config.parity and metadata.models:
        files = [(r.file, r.format, r.precision) for r in rows if r.ok]
        samples = stratified_subset(source.test.samples, config.test_count, config.seed)
        report = run_parity(out, source.model, source.reference_preprocessing, files, samples,
                            source.test.origin, source.classes, config.thresholds, config.batch_size,
                            config.show_progress)
        metadata.provenance["parity"] = "proven" if report.passed else "failed"
    metadata.models = _entries(ctx, rows + twins, report)
    metadata.metrics = _metrics(ctx, report, config)
    metadata.provenance["export_seconds"] = round(time.perf_counter() - started, 1)
    metadata.provenance["step_seconds"] = {r.file: round(r.seconds, 1) for r in rows + twins}
    metadata.write(out)
    table = render_table(table_rows(report, _keras_row(source, report), [
        {"file": r.file, "format": r.format, "precision": r.precision,
         "size_bytes": (out / r.file).stat().st_size if r.ok else 0,
         "status": "not checked (--no-parity)" if r.ok else r.status} for r in rows]))
    if report is not None:
        write_reports(out, report, table_rows(report, _keras_row(source, report), [
            {"file": r.file, "format": r.format, "precision": r.precision,
             "size_bytes": (out / r.file).stat().st_size} for r in rows if r.ok]))
    result = ExportResult(out, metadata, rows + twins, report, table, time.perf_counter() - started, warnings)
    error: TumorEdgeError | None = None
    if failed:
        error = ModelError("export failed for " + "; ".join(f"{r.file} ({r.status})" for r in failed)
                           + f" (other files kept in {out})")
    elif report is not None and not report.passed:
        error = ParityError(report.failure_line(out))
    if error is not None:
        error.table = table  # the CLI prints it before the error line: the numbers behind the failure
        raise error
    remember_last_bundle(out)
    return result


def _metrics(ctx: ExportContext, report: ParityReport | None, config: ExportConfig) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    metrics["parity"] = report.summary() if report else {"passed": None, "proven": False,
                                                          "reason": "exported with --no-parity"}
    int8 = ctx.results.get("model_int8.onnx")
    if int8 is not None and int8.ok:
        metrics["onnx_int8_calibration"] = int8.extra.get("_report")
    return metrics


def _keras_row(source: ModelSource, report: ParityReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    size = None
    if source.kind == "run":
        size = (source.path / "model.keras").stat().st_size / 1e6
    elif source.path.is_file():
        size = source.path.stat().st_size / 1e6
    return {"file": source.path.name if source.kind != "run" else "model.keras", "size_mb": size,
            "accuracy": report.reference["accuracy"], "macro_auc": report.reference["macro_auc"],
            "ms_per_image": report.reference.get("ms_per_image")}


def _check_images(source: ModelSource, config: ExportConfig) -> None:
    """Fail before converting anything when the images a step needs are missing."""
    if config.int8 and (source.calibration is None or not source.calibration.samples):
        raise DatasetError("int8 export needs calibration images from the training split: pass --calib-data "
                           "(a dataset root or a folder of class folders)", source.path)
    if config.parity and (source.test is None or not source.test.samples):
        where = source.test.origin if source.test is not None else None
        raise DatasetError(("no test images in " + where) if where else
                           "parity needs test images: pass --test-data (or --no-parity to skip the proof)",
                           source.path)



__all__ = ["EXPORTERS", "ExportConfig", "ExportResult", "ExportedFile", "FormatExporter", "export_bundle",
           "selected_exporters"]
