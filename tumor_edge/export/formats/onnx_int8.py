"""ONNX int8 from the fp32 ONNX file: onnxruntime static QDQ quantization (export/quantize.py), calibrated on the
training split and with the calibration method chosen on the validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.quantize import quantize_onnx_int8

    src = ctx.needs_ok("onnx-fp32")
    calib = ctx.calibration()
    val = ctx.validation()
    report = quantize_onnx_int8(src, dst, calib.pixels, val.pixels if val else None, val.labels if val else None,
                                len(ctx.classes), ctx.spec, ctx.config.quantization, ctx.work,
                                ctx.config.show_progress)
    q = ctx.config.quantization
    return {"quantization": "onnxruntime static, QDQ", "calibration": report.chosen,
            "per_channel": q.per_channel, "reduce_range": q.reduce_range, "activations": "uint8",
            "weights": "int8", "float_nodes": report.float_nodes, "_report": report.to_dict()}
