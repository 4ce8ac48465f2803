"""The TFLite rows, each from the export's SavedModel (export/tflite_export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumor_edge.export.formats import converter


@converter("tflite-fp32")
def convert_fp32(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp32

    export_tflite_fp32(ctx.saved_model(), dst)
    return {"io": "float32"}


@converter("tflite-fp16")
def convert_fp16(ctx, dst: Path) -> dict[str, Any]:
    from tumor_edge.export.tflite_export import export_tflite_fp16

    export_tflite_fp16(ctx.saved_model(), dst)
    return {"io": "float32", "weights": "float16"}


@converter("tflite-int8")
def convert_int8(ctx, dst: Path) -> dict[str, Any]:
    """Calibrated on the training split: accuracy-aware (`tflite_int8_accuracy_aware`) with float32 input and
    output by default; `tflite_full_integer` gives the strict variant with int8 I/O for accelerators that need
    every op int8."""
    from tumor_edge.export.tflite_export import (
        FLOAT_OPS,
        TfliteInt8Config,
        export_tflite_int8,
        representative_dataset,
        tflite_int8_accuracy_aware,
    )

    calib = ctx.calibration()  # a memory map, read one image at a time
    if ctx.config.tflite_full_integer:
        export_tflite_int8(ctx.saved_model(), dst, representative_dataset(calib.pixels, ctx.spec), True)
        return {"io": "int8", "quantization": "full integer (TFLITE_BUILTINS_INT8)", "calibration_images": len(calib)}
    val = ctx.validation()
    reference = None
    if val is not None and len(val):  # the float reference from the loaded Keras model, not a SavedModel reload
        from tumor_edge.export.parity import keras_probabilities

        reference = keras_probabilities(ctx.keras_model, val.pixels, ctx.spec)
    report = tflite_int8_accuracy_aware(ctx.saved_model(), dst, calib.pixels, val.pixels if val else None,
                                        val.labels if val else None, len(ctx.classes), ctx.spec,
                                        config=TfliteInt8Config(accuracy_aware=ctx.config.quantization.accuracy_aware),
                                        work_dir=ctx.work, reference=reference)
    data = report.to_dict()
    float_nodes = [n for f in data.get("float_nodes", []) for n in f.get("denylisted_nodes", [])]
    return {"io": "float32", "quantization": "int8 ops; softmax and the most sensitive ops in float "
            "(accuracy-aware selective quantization)", "float_ops": list(FLOAT_OPS),
            "per_channel": data.get("chosen") == "per-channel", "float_nodes": float_nodes,
            "calibration_images": int(len(calib.pixels)), "_report": data}
