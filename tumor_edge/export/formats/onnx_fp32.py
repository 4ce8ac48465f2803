"""ONNX fp32: through tf2onnx for a Keras model (dynamic batch, float32 NHWC input named "image"); for a foreign
ONNX file, its own graph rewritten to the bundle contract (export/foreign_onnx.py: NHWC input, softmax, batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("onnx-fp32")
def convert(ctx, dst: Path) -> dict[str, Any]:
    if ctx.source.kind == "onnx":
        from tumor_edge.export.foreign_onnx import to_bundle_model

        ood = (ctx.source.trust.ood if ctx.source.trust else None) or {}
        return to_bundle_model(ctx.source.path, dst, ctx.source.onnx, ctx.source.softmax_appended, ood.get("score"))
    from tumor_edge.export.onnx_export import export_onnx_fp32

    export_onnx_fp32(ctx.model, ctx.spec.height, ctx.spec.width, dst, ctx.config.opset)
    return {"opset": ctx.config.opset, "converter": "tf2onnx"}
