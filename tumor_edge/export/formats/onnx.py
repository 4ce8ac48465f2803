"""The ONNX rows, and the metadata each file carries. fp32 through tf2onnx for a Keras model (float32 NHWC input
named "image", with a dynamic batch dimension so one file serves any batch size), or for a foreign ONNX file its
own graph rewritten to the bundle contract (export/foreign_onnx.py: NHWC input, softmax, batch); fp16 through
onnxruntime's converter and int8 (export/quantize/) from the fp32 file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import ONNX_META_KEY, BundleMetadata, ModelEntry
from tumor_edge.errors import ModelError
from tumor_edge.export.config import INPUT_NAME
from tumor_edge.export.formats import converter

DEFAULT_OPSET = 17


@converter("onnx-fp32")
def convert_fp32(ctx, dst: Path) -> dict[str, Any]:
    if ctx.source.kind == "onnx":
        from tumor_edge.export.foreign_onnx import to_bundle_model

        ood = (ctx.source.trust.ood if ctx.source.trust else None) or {}
        return to_bundle_model(ctx.source.path, dst, ctx.source.onnx, ctx.source.softmax_appended, ood.get("score"))
    export_onnx_fp32(ctx.model, ctx.spec.height, ctx.spec.width, dst, ctx.config.opset)
    return {"opset": ctx.config.opset, "converter": "tf2onnx"}


@converter("onnx-fp16")
def convert_fp16(ctx, dst: Path) -> dict[str, Any]:
    """Weights and activations in float16, float32 input and output kept, so the runtime feeds it unchanged."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(ctx.needs_ok("onnx-fp32"))), keep_io_types=True), str(dst))
    return {"io": "float32", "note": "runs on onnxruntime's CPU provider; half the size, not faster on x86"}


@converter("onnx-int8")
def convert_int8(ctx, dst: Path) -> dict[str, Any]:
    """onnxruntime static QDQ quantization (export/quantize/), calibrated on the training split, the calibration
    method chosen on the validation split, and the most sensitive nodes kept in float until the parity goal holds
    (accuracy-aware)."""
    from tumor_edge.export.quantize import quantize_onnx_int8

    src = ctx.needs_ok("onnx-fp32")
    batch = str(ctx.results["onnx-fp32"].extra.get("batch", "dynamic"))
    if batch.startswith("fixed"):  # calibration and method choice run batches (a foreign graph may fix its own)
        raise ModelError(f"int8 calibration runs batches of images, and this graph's batch is "
                         f"{batch.split(' (')[0]} (the fp32 file's 'batch' in metadata.json says why)")
    calib = ctx.calibration()
    val = ctx.validation()
    report = quantize_onnx_int8(src, dst, calib.pixels, val.pixels if val else None, val.labels if val else None,
                                len(ctx.classes), ctx.spec, ctx.config.quantization, ctx.work,
                                ctx.config.show_progress)
    q = ctx.config.quantization
    return {"quantization": "onnxruntime static, QDQ", "calibration": report.chosen,
            "per_channel": q.per_channel, "reduce_range": report.config["reduce_range"],
            "activations": q.activations, "weights": "int8", "average_pools": q.average_pools,
            "float_nodes": report.float_nodes, "float_reasons": report.float_reasons, "_report": report.to_dict()}


def export_onnx_fp32(model, height: int, width: int, dst: Path, opset: int = DEFAULT_OPSET) -> Path:
    import gc

    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME),)
    # What exists now (TensorFlow, Keras, the model: many objects) outlives the conversion: frozen, it is left
    # out of the collections `collecting_optimizers` runs before each pass, which then only walk the
    # conversion's own objects.
    gc.collect()
    gc.freeze()
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(dst),
                                   optimizers=collecting_optimizers())
    finally:
        gc.unfreeze()
    return dst


def collecting_optimizers() -> dict | None:
    """tf2onnx's own graph optimizers, each preceded by a garbage collection; None (tf2onnx's defaults) if this
    tf2onnx keeps its list elsewhere. Before every pass tf2onnx deep-copies the whole graph, and the discarded
    copies are reference cycles the collector does not reach on its own during the conversion: memory would grow
    by a graph copy per pass. Same optimizers, same order, same result."""
    import gc

    try:
        from tf2onnx.optimizer import _get_optimizers
    except ImportError:
        return None

    def collected(factory):
        def make():
            gc.collect()
            return factory()
        return make

    return {name: collected(factory) for name, factory in _get_optimizers().items()}


def onnx_metadata(metadata: BundleMetadata, file: str, precision: str) -> dict[str, str]:
    """The metadata_props a lone .onnx carries, enough for `Classifier.from_bundle(file.onnx)` to classify: the
    full metadata (minus what a file cannot hold about itself) as JSON under ONNX_META_KEY, plus a few plain keys
    for tools like Netron."""
    own = BundleMetadata(classes=metadata.classes, preprocessing=metadata.preprocessing, output=metadata.output,
                         models={file: ModelEntry(file, "onnx", precision)}, provenance=metadata.provenance,
                         metrics={}, name=metadata.name, intended_use=metadata.intended_use,
                         # every output role (the runtime binds them to metadata.json) and the calibration, so a
                         # lone file gives the bundle's probabilities and outputs
                         extra_outputs=dict(metadata.extra_outputs), calibration=metadata.calibration)
    data = own.to_dict()
    return {
        ONNX_META_KEY: json.dumps(data, sort_keys=True),
        "classes": ",".join(metadata.classes),
        "preprocessing": metadata.preprocessing.to_dict()["description"],
        "output": data["output"]["type"],
        "intended_use": metadata.intended_use,
    }
