"""TFLite fp32 from the export's SavedModel (TFLiteConverter.from_saved_model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("tflite-fp32")
def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp32

    export_tflite_fp32(ctx.saved_model(), dst)
    return {"io": "float32"}
