"""ONNX int8 from the fp32 ONNX file: onnxruntime static QDQ quantization (export/quantize/), calibrated on the
training split, the calibration method chosen on the validation split, and the most sensitive nodes kept in float
until the parity goal holds (accuracy-aware)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.errors import ModelError
from tumor_edge.export.formats import converter


@converter("onnx-int8")
def convert(ctx, dst: Path) -> dict[str, Any]:
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
