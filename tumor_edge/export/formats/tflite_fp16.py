"""TFLite with float16 weights (half the size; LiteRT's CPU kernels dequantize them at load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("tflite-fp16")
def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp16

    export_tflite_fp16(ctx.saved_model(), dst)
    return {"io": "float32", "weights": "float16"}
