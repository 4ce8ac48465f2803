"""ONNX fp16 from the fp32 ONNX file (float32 input and output kept, so the runtime feeds it unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("onnx-fp16")
def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.onnx_export import export_onnx_fp16

    export_onnx_fp16(ctx.needs_ok("onnx-fp32"), dst)
    return {"io": "float32", "note": "runs on onnxruntime's CPU provider; half the size, not faster on x86"}
