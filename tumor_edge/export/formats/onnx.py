"""The ONNX rows: fp32 through tf2onnx for a Keras model (dynamic batch, float32 NHWC input named "image"), or for
a foreign ONNX file its own graph rewritten to the bundle contract (export/foreign_onnx.py: NHWC input, softmax,
batch); fp16 and int8 from the fp32 file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.errors import ModelError
from tumor_edge.export.formats import converter


@converter("onnx-fp32")
def convert_fp32(ctx, dst: Path) -> dict[str, Any]:
    if ctx.source.kind == "onnx":
        from tumor_edge.export.foreign_onnx import to_bundle_model

        ood = (ctx.source.trust.ood if ctx.source.trust else None) or {}
        return to_bundle_model(ctx.source.path, dst, ctx.source.onnx, ctx.source.softmax_appended, ood.get("score"))
    from tumor_edge.export.onnx_export import export_onnx_fp32

    export_onnx_fp32(ctx.model, ctx.spec.height, ctx.spec.width, dst, ctx.config.opset)
    return {"opset": ctx.config.opset, "converter": "tf2onnx"}


@converter("onnx-fp16")
def convert_fp16(ctx, dst: Path) -> dict[str, Any]:
    """float32 input and output kept, so the runtime feeds it unchanged."""
    from tumor_edge.export.onnx_export import export_onnx_fp16

    export_onnx_fp16(ctx.needs_ok("onnx-fp32"), dst)
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
