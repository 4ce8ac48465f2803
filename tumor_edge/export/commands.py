"""`tumor-edge export`: a thin click layer over `ExportConfig`. Format choices and the options that add formats
come from the format table (contracts/formats.py), defaults from the config dataclasses; only click, the
contracts and export/config.py (no numpy) load at import time, TensorFlow, tf2onnx and onnx inside the command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from tumor_edge.contracts.formats import CONTAINERS, ENABLING_OPTIONS, FORMATS
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES
from tumor_edge.export.config import LAYOUT_CHOICES, OUTPUT_CHOICES, ExportConfig, ParityThresholds

_DEFAULT = ExportConfig.default
_LIMITS = ParityThresholds()
_PRECISION_WORDS = {"int8": "int8 (needs calibration images from the training split)", "fp16": "float16"}


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in (value or "").split(",") if v.strip()] or None


def _enabling_flags(command):
    """One --<option> flag per enabling option of the format table, naming the files it adds."""
    for option in reversed(ENABLING_OPTIONS):
        files = ", ".join(f.file for f in FORMATS if f.enabled_by == option)
        command = click.option(f"--{option}", is_flag=True,
                               help=f"Also {_PRECISION_WORDS.get(option, option)}: {files}.")(command)
    return command


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@_enabling_flags
@click.option("--formats", default=",".join(CONTAINERS), show_default=True,
              help=f"Comma-separated, among: {', '.join(CONTAINERS)}.")
@click.option("--force", is_flag=True, help="Overwrite the bundle files in an existing --out folder.")
@click.option("--classes", help="Foreign model: class names in output order, comma-separated.")
@click.option("--image-size", type=click.IntRange(min=1), help="Foreign model: input size (square) if not fixed.")
@click.option("--preprocess", type=click.Choice(SCALING_NAMES),
              help="Foreign model: input scaling (unit = x/255, symmetric = x/127.5-1 as Inception/Xception, "
                   "caffe/torch = ImageNet mean-std, none = raw 0..255). With a run folder: an override.")
@click.option("--resize", type=click.Choice(RESIZE_NAMES), help="Resize filter [the run's, or bilinear].")
@click.option("--output", type=click.Choice(OUTPUT_CHOICES), default="auto", show_default=True,
              help="What the model outputs; logits get a softmax appended.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True,
              help="Foreign ONNX model: its input layout (nchw = channels first, as PyTorch; auto: from its input "
                   "shape). Bundles are NHWC: an NCHW model gets a transpose at its input.")
@click.option("--calib-data", type=click.Path(path_type=Path),
              help="Calibration images: a dataset root (uses Training/) or a folder of class folders "
                   "[the run's training split].")
@click.option("--calib-count", type=click.IntRange(min=1), default=_DEFAULT("calib_count"), show_default=True,
              help="Calibration images (stratified subset).")
@click.option("--select-count", type=click.IntRange(min=1), default=_DEFAULT("select_count"), show_default=True,
              help="Validation images the int8 calibration methods are compared on.")
@click.option("--calib-methods", default="minmax,entropy,percentile", show_default=True,
              help="onnxruntime calibration methods to try for ONNX int8; the best on validation is kept.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="ONNX int8 weight scales.")
@click.option("--reduce-range/--full-range", default=None,
              help="ONNX int8 weights: 7-bit (x86 without VNNI/AMX) or full 8-bit [decided by this CPU].")
@click.option("--no-accuracy-aware", is_flag=True,
              help="Ship the best calibration method's int8 as is, without the float fallback for sensitive nodes.")
@click.option("--test-data", type=click.Path(path_type=Path),
              help="Parity images: a dataset root (uses Testing/) or a folder of class folders "
                   "[the run's test split].")
@click.option("--test-count", type=click.IntRange(min=1), default=None,
              help="Use a stratified subset of this many test images for parity [all].")
@click.option("--no-parity", is_flag=True,
              help="Skip the parity proof (recorded in metadata as not proven; for benchmarks only).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=_LIMITS.max_accuracy_drop, show_default=True,
              help="Percentage points of test accuracy a file may lose against Keras.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=_LIMITS.max_auc_drop, show_default=True,
              help="Macro one-vs-rest AUC a file may lose against Keras.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=_LIMITS.min_agreement, show_default=True,
              help="Top-1 agreement with Keras required of fp32/fp16 files.")
@click.option("--allow-unproven", is_flag=True,
              help="Accept files whose parity the test set is too small to prove (verdict 'not proven'; the "
                   "report says how many images would prove it). Failures still fail.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.9999), default=_LIMITS.confidence, show_default=True,
              help="Confidence of the parity intervals the verdicts rest on.")
@click.option("--tflite-full-integer", is_flag=True,
              help="int8 TFLite with int8 input/output and an int8 softmax (for accelerators that need every op "
                   "int8; probabilities then come in steps of 1/256).")
@click.option("--in-process", is_flag=True,
              help="Run every step in this process instead of a TensorFlow worker and TensorFlow-free children "
                   "(more memory).")
@click.option("--overlap", is_flag=True,
              help="Quantize ONNX int8 beside the TFLite conversions: faster with two free cores, at a higher "
                   "memory peak.")
@click.option("--opset", type=click.IntRange(min=13), default=_DEFAULT("opset"), show_default=True)
@click.option("--seed", type=int, default=_DEFAULT("seed"), show_default=True, help="Seed of the stratified subsets.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--sign-key", metavar="PRIVATE.pem", type=click.Path(path_type=Path), default=None,
              help="Sign the finished bundle with this EC private key (model.sig; as `tumor-edge sign`). Needs the "
                   "`sign` extra.")
@click.pass_context
def export(ctx: click.Context, formats: str, classes: str | None, calib_methods: str, per_channel: bool,
           reduce_range: bool | None, no_accuracy_aware: bool, no_parity: bool, max_accuracy_drop: float,
           max_auc_drop: float, min_agreement: float, confidence: float, in_process: bool, seed: int, quiet: bool,
           **fields: Any) -> None:
    """Export SOURCE (a training run folder, or a .keras/.h5/.onnx file or SavedModel made elsewhere) to a model
    bundle: ONNX and TFLite files (fp32, plus int8/fp16 on request), metadata.json, and a parity report proving
    that every file, run by the runtime from the test images, agrees with the Keras model.

    Exit status 3 when parity fails (the files are kept for inspection).
    """
    from tumor_edge.errors import ConfigError, TumorEdgeError
    from tumor_edge.export.exporter import export_bundle
    from tumor_edge.export.quantize import QuantizationConfig

    debug = bool(ctx.obj and ctx.obj.get("debug"))
    try:
        quantization = QuantizationConfig(methods=tuple(_csv(calib_methods) or ()), per_channel=per_channel,
                                          reduce_range=reduce_range, accuracy_aware=not no_accuracy_aware,
                                          seed=seed)
    except ValueError as err:
        raise ConfigError(f"--calib-methods: {err}") from err
    handler = _ClickEcho(logging.WARNING)  # export's warnings on stderr, one line each
    logging.getLogger("tumor_edge.export").addHandler(handler)
    try:
        # `fields`: every other option, named as its ExportConfig field (source, out, force, image_size, ...).
        config = ExportConfig(
            formats=tuple(_csv(formats) or ()), classes=_csv(classes), parity=not no_parity,
            thresholds=ParityThresholds(max_accuracy_drop=max_accuracy_drop, max_auc_drop=max_auc_drop,
                                        min_agreement=min_agreement, confidence=confidence),
            quantization=quantization, seed=seed, isolate=not in_process, show_progress=not quiet, debug=debug,
            **fields)
        result = export_bundle(config)
    except TumorEdgeError as err:
        table = getattr(err, "table", None)
        if table:
            click.echo(table)
        option = getattr(err, "option", None)  # config.needs_option: the flag that fixes it
        flag = f"--{option.replace('_', '-')}" if option else None
        if flag and flag not in str(err):
            raise type(err)(f"{err.reason} ({flag})", err.path) from err
        raise
    finally:
        logging.getLogger("tumor_edge.export").removeHandler(handler)
    click.echo(result.table)
    state = ("parity NOT proven (--no-parity)" if result.parity is None else "parity proven"
             if result.parity.passed else "parity NOT proven (--allow-unproven)")
    click.echo(f"bundle: {result.out} ({state}; {result.seconds:.0f} s)")
    if result.signature is not None:
        click.echo(f"signed: {result.signature}")


class _ClickEcho(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(record.getMessage(), err=True)
