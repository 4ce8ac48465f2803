"""TFLite int8 calibrated on the training split.

Default: accuracy-aware (export/tflite_int8.py): per-channel and per-tensor weights compared on the validation
split against the float model, then the most sensitive ops (with their producers) denylisted to float until the
parity goal holds; SOFTMAX stays float; float32 input and output. `tflite_full_integer` gives the strict variant
with int8 I/O for accelerators that need every op int8 (see tflite_export.export_tflite_int8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("tflite-int8")
def convert(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_int8 import representative_dataset, tflite_int8_accuracy_aware

    calib = ctx.calibration()  # a memory map, read one image at a time
    if ctx.config.tflite_full_integer:
        from tumor_edge.export.tflite_export import export_tflite_int8

        export_tflite_int8(ctx.saved_model(), dst, representative_dataset(calib.pixels, ctx.spec), True)
        return {"io": "int8", "quantization": "full integer (TFLITE_BUILTINS_INT8)", "calibration_images": len(calib)}
    val = ctx.validation()
    reference = None
    if val is not None and len(val):  # the float reference from the loaded Keras model, not a SavedModel reload
        from tumor_edge.export.parity import keras_probabilities

        reference = keras_probabilities(ctx.keras_model, val.pixels, ctx.spec)
    report = tflite_int8_accuracy_aware(ctx.saved_model(), dst, calib.pixels, val.pixels if val else None,
                                        val.labels if val else None, len(ctx.classes), ctx.spec,
                                        work_dir=ctx.work, reference=reference)
    data = report.to_dict()
    float_nodes = [n for f in data.get("float_nodes", []) for n in f.get("denylisted_nodes", [])]
    return {"io": "float32", "quantization": "int8 ops; softmax and the most sensitive ops in float "
            "(accuracy-aware selective quantization)", "float_ops": ["SOFTMAX"],
            "per_channel": data.get("chosen") == "per-channel", "float_nodes": float_nodes,
            "calibration_images": int(len(calib.pixels)), "_report": data}
