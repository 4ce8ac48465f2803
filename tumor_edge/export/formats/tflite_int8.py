"""TFLite int8 calibrated on the training split (TFLiteConverter with a representative dataset).

Default: every op int8 but the final softmax (float32 input and output); `tflite_full_integer` gives the strict
variant with int8 I/O for accelerators. See tflite_export.export_tflite_int8 for why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_int8, representative_from_npy

    pixels_npy = ctx.calibration_file()
    representative, count = representative_from_npy(pixels_npy, ctx.spec)
    full = ctx.config.tflite_full_integer
    export_tflite_int8(ctx.saved_model(), dst, representative, full)
    if full:
        return {"io": "int8", "quantization": "full integer (TFLITE_BUILTINS_INT8)", "calibration_images": count}
    return {"io": "float32", "quantization": "int8 ops, softmax in float (selective quantization)",
            "float_ops": ["SOFTMAX"], "calibration_images": count}
