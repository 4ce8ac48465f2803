"""ONNX fp32 through tf2onnx (dynamic batch, float32 NHWC input named "image")."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.onnx_export import export_onnx_fp32

    export_onnx_fp32(ctx.model, ctx.spec.height, ctx.spec.width, dst, ctx.config.opset)
    return {"opset": ctx.config.opset, "converter": "tf2onnx"}
